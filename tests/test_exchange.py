"""whisper-models export / import with real weights: staged tiny.en and base out to transformers
and MindSpeed-MM, back in through CTranslate2's converter, and transcribed by both engines.
Every command runs in a network namespace with no network (unshare -n): nothing is fetched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN
from test_diarization import unshare_prefix
from wer import word_error_rate

pytestmark = [pytest.mark.system, pytest.mark.engine]


@pytest.fixture(scope="module")
def root(model_root: Path, tmp_path_factory) -> Path:
    """A model root of its own holding copies of the staged tiny.en and base."""
    folder = tmp_path_factory.mktemp("exchange-root")
    for name in ("tiny.en", "base"):
        shutil.copytree(model_root / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def models(root: Path, tmp_path_factory):
    home = tmp_path_factory.mktemp("exchange-home")
    scratch = tmp_path_factory.mktemp("exchange-tmp")

    def run(*arguments: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
               "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([*unshare_prefix(), str(BIN / "whisper-models"), "--root", str(root), *arguments], env=env,
                                capture_output=True, text=True, timeout=1200)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    run.home, run.scratch = home, scratch
    yield run
    assert list(home.iterdir()) == [] and list(scratch.iterdir()) == []  # no caches left behind


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    models("export", "tiny.en", "--format", "transformers", "--output", str(out / "tiny-hf"))
    models("export", "base", "--format", "transformers", "--output", str(out / "base-hf"))
    models("export", "tiny.en", "--format", "mindspeed", "--output", str(out / "tiny-ms"))
    return {"tiny": out / "tiny-hf", "base": out / "base-hf", "mindspeed": out / "tiny-ms"}


def transcribe(root: Path, model: str, audio: Path, out: Path, *flags: str) -> dict:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(out), "WHISPER_MODELS": str(root), "SLURM_CPUS_PER_TASK": "2",
           "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
    result = subprocess.run([*unshare_prefix(), str(BIN / "whisper-hpc"), str(audio), "--model", model, "-o", str(out), "-f", "json",
                             "--overwrite", *flags], env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    return json.loads((out / f"{audio.stem}.json").read_text())


def test_an_export_is_a_transformers_whisper_that_loads_offline_and_transcribes(exported, shared_data, references):
    from whisper_hpc import audio
    from whisper_hpc.staging.hf_format import import_transformers

    folder = exported["tiny"]
    assert {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    transformers = import_transformers()
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    features = transformers.WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
    samples = audio.decode(shared_data / "jfk.flac")
    tokens = model.generate(features(samples, sampling_rate=16000, return_tensors="pt").input_features, max_new_tokens=80)
    text = tokenizer.batch_decode(tokens, skip_special_tokens=True)[0]
    assert word_error_rate(references["jfk.flac"], text) < 0.1, text
    tokens_json = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokens_json["<|endoftext|>"]  # from the tokenizer, not the vocabulary size
    assert generation["decoder_start_token_id"] == tokens_json["<|startoftranscript|>"]
    base = json.loads((exported["base"] / "generation_config.json").read_text())
    assert base["eos_token_id"] == 50257 and len(base["lang_to_id"]) == 99 and base["is_multilingual"]


def test_a_float32_round_trip_transcribes_word_for_word_as_the_original_with_both_engines(
        models, root, exported, shared_data, tmp_path):
    models("import", str(exported["tiny"]), "--name", "tiny-rt", "--quantization", "float32")
    staged = root / "tiny-rt"
    manifest = json.loads((staged / "manifest.json").read_text())
    assert manifest["origin"].startswith("transformers folder ")
    converted = manifest["sources"][-1]
    assert converted["quantization"] == "float32" and converted["english_only"] and converted["ctranslate2"]
    assert all(oct(p.stat().st_mode & 0o777) in ("0o444", "0o555") for p in [staged, *staged.iterdir()])
    for backend in ("faster-whisper", "openai-whisper"):
        original = transcribe(root, "tiny.en", shared_data / "jfk.flac", tmp_path / f"o-{backend}", "--backend", backend)
        again = transcribe(root, "tiny-rt", shared_data / "jfk.flac", tmp_path / f"r-{backend}", "--backend", backend)
        assert [s["text"] for s in again["segments"]] == [s["text"] for s in original["segments"]], backend
    listed = json.loads(models("list", "--json").stdout)
    entry = next(m for m in listed["models"] if m["name"] == "tiny-rt")
    assert entry["quantization"] == "float32" and entry["english_only"]
    assert entry["engines"] == ["faster-whisper", "openai-whisper"]


def test_an_int8_import_stays_within_a_wer_bound_on_the_shared_recordings(models, root, exported, shared_data,
                                                                          references, tmp_path):
    models("import", str(exported["tiny"]), "--name", "tiny-int8", "--quantization", "int8")
    from whisper_hpc.convert import weight_storage

    assert weight_storage(root / "tiny-int8" / "model.bin") == "int8"
    assert (root / "tiny-int8" / "model.bin").stat().st_size < 0.6 * (root / "tiny.en" / "model.bin").stat().st_size  # vs float16
    alone = tmp_path / "int8-model-bin-alone"  # sized as jobs are (whisper_hpc.sizing): one byte a weight
    alone.mkdir()
    (alone / "model.bin").symlink_to(root / "tiny-int8" / "model.bin")
    from whisper_hpc import sizing

    assert 0.9 * 39 <= sizing.model_parameters_m("tiny-int8", alone)[0] <= 1.2 * 39
    for recording in ("jfk.flac",):
        original = transcribe(root, "tiny.en", shared_data / recording, tmp_path / "o")
        quantized = transcribe(root, "tiny-int8", shared_data / recording, tmp_path / "q")
        text = lambda record: " ".join(s["text"] for s in record["segments"])  # noqa: E731
        bound = word_error_rate(references[recording], text(original)) + 0.05  # the stated bound: +5 points
        assert word_error_rate(references[recording], text(quantized)) <= bound


def test_the_multilingual_base_keeps_language_detection_even_without_lang_to_id(models, root, exported, shared_data,
                                                                                tmp_path):
    stripped = tmp_path / "base-hf"
    shutil.copytree(exported["base"], stripped)
    generation = json.loads((stripped / "generation_config.json").read_text())
    generation.pop("lang_to_id")  # as many hub repos ship it: CTranslate2 4.8 alone would find no languages
    (stripped / "generation_config.json").write_text(json.dumps(generation))
    models("import", str(stripped), "--name", "base-int8", "--quantization", "int8")
    source = json.loads((root / "base" / "config.json").read_text())
    converted = json.loads((root / "base-int8" / "config.json").read_text())
    assert converted["lang_ids"] == source["lang_ids"] and len(converted["lang_ids"]) == 99
    assert converted["suppress_ids"] == source["suppress_ids"]
    record = transcribe(root, "base-int8", shared_data / "multilingual.mp3", tmp_path / "ml")
    assert record["language"] == "en"  # the English paragraph comes first
    assert "Permission is hereby granted" in record["segments"][0]["text"]
    assert json.loads((stripped / "generation_config.json").read_text()) == generation  # the source is untouched


def test_the_mindspeed_round_trip_renames_the_projections_and_transcribes_the_same(models, root, exported, shared_data,
                                                                                  tmp_path):
    import torch

    checkpoint = exported["mindspeed"] / "model_optim_rng.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    names = set(state)
    assert "model.encoder.layers.0.self_attn.proj_q.weight" in names
    assert "model.decoder.layers.0.encoder_attn.proj_out.weight" in names and "proj_out.weight" in names
    assert not [n for n in names if any(f".{p}." in n for p in ("q_proj", "k_proj", "v_proj", "out_proj"))]
    models("import", str(checkpoint), "--config", str(exported["mindspeed"]), "--name", "tiny-ms",
           "--quantization", "float32")
    original = transcribe(root, "tiny.en", shared_data / "jfk.flac", tmp_path / "o")
    again = transcribe(root, "tiny-ms", shared_data / "jfk.flac", tmp_path / "m")
    assert [s["text"] for s in again["segments"]] == [s["text"] for s in original["segments"]]
    assert json.loads((root / "tiny-ms" / "manifest.json").read_text())["sources"][0]["kind"] == "mindspeed"


def test_an_int8_model_cannot_be_exported_but_says_what_to_do(models, root, exported, tmp_path):
    if not (root / "tiny-int8").exists():
        models("import", str(exported["tiny"]), "--name", "tiny-int8", "--quantization", "int8")
    result = models("export", "tiny-int8", "--format", "transformers", "--output", str(tmp_path / "x"), check=False)
    assert result.returncode == 1 and "int8-quantized" in result.stderr and "--quantization float16" in result.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))


def test_the_openai_export_is_the_staged_checkpoint(models, root, tmp_path):
    models("export", "tiny.en", "--format", "openai", "--output", str(tmp_path / "openai"))
    assert (tmp_path / "openai" / "openai-whisper.pt").read_bytes() == (root / "tiny.en" / "openai-whisper.pt").read_bytes()
    assert os.listdir(tmp_path / "openai") == ["openai-whisper.pt"]
