"""`whisper-models import` and `export`: Whisper models in and out of the model root, in the formats
training stacks use (Hugging Face transformers, MindSpeed-MM) and the ones our engines run.

    import SOURCE --name NAME [--quantization int8|int8_float16|float16|float32]
        SOURCE: a hub repo id (fetched at a resolved commit, resumable, checksummed), a local
        transformers folder, or a MindSpeed-MM checkpoint (model_optim_rng.pt, or its folder)
        with --config DIR naming the transformers config and tokenizer it was trained from.
        ROOT/NAME/ gets CTranslate2 files (CTranslate2's own TransformersConverter, quantized),
        tokenizer.json and preprocessor_config.json, openai-whisper.pt (float16, from the same
        weights) and manifest.json with the provenance. The work happens in ROOT/.staging/;
        the finished, read-only folder appears with one rename.

    export NAME --format transformers|mindspeed|openai|ggml --output DIR
        transformers: WhisperForConditionalGeneration weights, config, generation config,
        tokenizer and feature extractor, loadable offline by from_pretrained(DIR).
        mindspeed: DIR/model_optim_rng.pt ({"model": state dict with MindSpeed-MM's names}) and
        the transformers config and tokenizer beside it. openai: DIR/openai-whisper.pt.
        ggml: DIR/ggml-NAME.bin, whisper.cpp's model file, from openai-whisper.pt (staging/ggml.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from whisper_hpc.files import sha256_file, write_atomically
from whisper_hpc.model_store import OPENAI_CHECKPOINT, StagedModel
from whisper_hpc.staging import hf_format
from whisper_hpc.staging.checksums import write_manifest
from whisper_hpc.staging.credentials import Token
from whisper_hpc.staging.hf_format import FormatError
from whisper_hpc.staging.tree import SOURCES, discard, ensure_root, exclusive, publish, staging_dir, tree_size

QUANTIZATIONS = ("int8", "int8_float16", "int8_float32", "float16", "float32")
FORMATS = ("transformers", "mindspeed", "openai", "ggml")
MINDSPEED_CHECKPOINT = "model_optim_rng.pt"
COPIED_FILES = (hf_format.TOKENIZER, hf_format.PREPROCESSOR)
MULTILINGUAL_VOCABULARY = 51865  # English-only Whisper vocabularies have 51864 tokens, multilingual ones more


@dataclass
class ImportOptions:
    quantization: str = "int8"
    config: Path | None = None  # for a MindSpeed-MM checkpoint: the transformers folder it was trained from
    revision: str = "main"
    token: Token | None = None
    overwrite: bool = False
    say: Callable[[str], None] = field(default=print)
    # Where the weights themselves came from, when SOURCE is an intermediate folder (whisper-finetune's
    # merged checkpoint): (a phrase put before the origin, a source entry added to the manifest).
    lineage: tuple[str, dict] | None = None


# ----- import ------------------------------------------------------------------------------------

def import_model(source: str, name: str, root: Path, options: ImportOptions) -> Path:
    """Stage SOURCE as ROOT/NAME (see the module's docstring); returns the model's folder."""
    final = root / name
    if (final.exists() or final.is_symlink()) and not options.overwrite:
        raise FormatError(f"{final} exists; pass --overwrite to replace it (it stays as it is until the new one is ready)")
    if options.quantization not in QUANTIZATIONS:
        raise FormatError(f"--quantization {options.quantization}: choose one of {', '.join(QUANTIZATIONS)}")
    ensure_root(root)
    with exclusive(root, name):
        work = staging_dir(root, name)
        discard(work)
        work.mkdir(mode=0o700)
        prepared = staging_dir(root, f"{SOURCES}/{name}.prepared")
        discard(prepared)
        prepared.mkdir(mode=0o700)
        try:
            folder, provenance = locate_source(source, root, name, prepared, options)
            convert_transformers(folder, prepared, work, options, provenance)
            origin, sources = provenance["origin"], list(provenance["sources"])
            if options.lineage:
                origin, sources = f"{options.lineage[0]}; {origin}", [*sources, options.lineage[1]]
            write_manifest(work, origin, sources)
            replace_or_publish(work, final, root)
        finally:  # a failed or interrupted import leaves only its hub download (.sources/NAME), to resume
            discard(prepared)
            discard(work)  # a failed import leaves no half-converted files (a published one was renamed away)
        discard(staging_dir(root, f"{SOURCES}/{name}"))
    options.say(f"{name}: staged in {final} ({tree_size(final) / 1e6:.1f} MB, {options.quantization}, read-only)")
    return final


def locate_source(source: str, root: Path, name: str, prepared: Path, options: ImportOptions) -> tuple[Path, dict]:
    """(a transformers folder to convert, provenance) for SOURCE."""
    path = Path(source).expanduser()
    if path.is_file() or (path.is_dir() and (path / MINDSPEED_CHECKPOINT).is_file()):
        return mindspeed_to_transformers(path, prepared, options)
    if path.is_dir():
        hf_format.check_transformers_folder(path)
        files = {p.relative_to(path).as_posix(): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()}
        return path, {"origin": f"transformers folder {path.resolve()}",
                      "sources": [{"kind": "local", "path": str(path.resolve()), "files": files}]}
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FormatError(f"{source}: no such folder or file, and not a hub repository id (owner/name)")
    from whisper_hpc.staging.fetch import FetchOptions, hub_files

    download = staging_dir(root, f"{SOURCES}/{name}")
    fetched = hub_files(source, options.revision, download, FetchOptions(revision=options.revision, say=options.say),
                        token=options.token)
    hf_format.check_transformers_folder(download)
    return download, {"origin": f"Hugging Face {source}@{fetched['commit'][:12]}", "sources": [fetched]}


def convert_transformers(folder: Path, prepared: Path, work: Path, options: ImportOptions, provenance: dict) -> None:
    """CTranslate2 files (quantized) and openai-whisper.pt in `work`, from the transformers `folder`."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    transformers = hf_format.import_transformers()
    config = hf_format.check_transformers_folder(folder)
    check_weights(folder, transformers)
    source = with_language_ids(folder, prepared)
    expected = expected_ids(source)
    options.say(f"  converting with CTranslate2 {ctranslate2.__version__} ({options.quantization})")
    output = work / "ctranslate2"
    try:
        TransformersConverter(str(source), copy_files=list(COPIED_FILES), load_as_float16=False).convert(
            str(output), quantization=options.quantization, force=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise FormatError(f"{folder}: CTranslate2 cannot convert it ({hf_format.first_words(error)})") from None
    for child in output.iterdir():
        os.replace(child, work / child.name)
    output.rmdir()
    converted = json.loads((work / hf_format.CONFIG).read_text(encoding="utf-8"))
    for key, wanted in expected.items():
        if sorted(converted.get(key) or []) != sorted(wanted):
            raise FormatError(f"{folder}: the conversion lost {key} ({len(converted.get(key) or [])} of {len(wanted)}); "
                              "refusing a model that would not detect languages or suppress tokens as its source")
    options.say(f"  writing {OPENAI_CHECKPOINT} (float16)")
    write_openai_checkpoint(source, work / OPENAI_CHECKPOINT, config)
    provenance["sources"].append({
        "kind": "converted", "quantization": options.quantization, "architecture": hf_format.ARCHITECTURE,
        "dims": openai_dims(config), "english_only": config["vocab_size"] < MULTILINGUAL_VOCABULARY,
        "ctranslate2": ctranslate2.__version__, "transformers": transformers.__version__,
        "files": sorted(p.name for p in work.iterdir()),
    })


def with_language_ids(folder: Path, prepared: Path) -> Path:
    """`folder`, or a copy of it in `prepared` (weights linked) whose generation config names its
    language tokens: CTranslate2 4.8 reads them from there and otherwise from a tokenizer attribute
    transformers 5 renamed, which gives a multilingual model no languages at all."""
    generation_path = folder / hf_format.GENERATION_CONFIG
    generation = json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else {}
    ids = hf_format.token_ids(folder / hf_format.TOKENIZER)
    languages = {token: value for token, value in ids.items() if hf_format.LANGUAGE_TOKEN.match(token)
                 and token not in hf_format.SPECIAL}
    if generation.get("lang_to_id") or not languages:
        return folder
    for item in folder.iterdir():
        if item.is_file():
            (prepared / item.name).symlink_to(item.resolve())
    generation["lang_to_id"] = dict(sorted(languages.items(), key=lambda item: item[1]))
    (prepared / hf_format.GENERATION_CONFIG).unlink(missing_ok=True)
    write_atomically(prepared / hf_format.GENERATION_CONFIG, json.dumps(generation, indent=2) + "\n")
    return prepared


def expected_ids(folder: Path) -> dict[str, list[int]]:
    """lang_ids and suppress_ids the CTranslate2 config must carry, from the transformers folder."""
    path = folder / hf_format.GENERATION_CONFIG
    generation = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config = json.loads((folder / hf_format.CONFIG).read_text(encoding="utf-8"))
    return {"lang_ids": list((generation.get("lang_to_id") or {}).values()),
            "suppress_ids": list(generation.get("suppress_tokens", config.get("suppress_tokens")) or [])}


def openai_dims(config: dict) -> dict[str, int]:
    return {
        "n_mels": config["num_mel_bins"], "n_audio_ctx": config["max_source_positions"],
        "n_audio_state": config["d_model"], "n_audio_head": config["encoder_attention_heads"],
        "n_audio_layer": config["encoder_layers"], "n_vocab": config["vocab_size"],
        "n_text_ctx": config["max_target_positions"], "n_text_state": config["d_model"],
        "n_text_head": config["decoder_attention_heads"], "n_text_layer": config["decoder_layers"],
    }


def expected_shapes(config_folder: Path, transformers) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Whisper that `config_folder`'s config.json describes, with its shape."""
    import torch

    with torch.device("meta"):  # shapes only, no memory
        model = transformers.WhisperForConditionalGeneration(transformers.WhisperConfig.from_pretrained(config_folder))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def misfit(expected: dict[str, tuple[int, ...]], state: dict) -> str | None:
    """How `state` differs from the expected tensors (wrong shapes, missing, unknown), or None.
    The tied language-model head may be absent: it is the token embedding."""
    from whisper_hpc.weight_names import LM_HEAD

    found = {name: tuple(tensor.shape) for name, tensor in state.items()}
    wrong = [f"{name} {found[name]} where the config wants {expected[name]}"
             for name in expected if name in found and found[name] != expected[name]]
    missing = [f"missing {name}" for name in expected if name not in found and name != LM_HEAD]
    unknown = [f"unknown {name}" for name in found if name not in expected]
    return "; ".join(wrong[:2] + missing[:2] + unknown[:2]) or None


def check_weights(folder: Path, transformers) -> None:
    """Every tensor the config's Whisper has, in its shape, and no other: transformers would fill a
    missing one with fresh random values and CTranslate2 would convert (and we stage) that."""
    problem = misfit(expected_shapes(folder, transformers), transformers_state(folder))
    if problem:
        raise FormatError(f"{folder}: its weights do not fit its config.json ({problem})")


def transformers_state(folder: Path) -> dict:
    """The weights of a transformers folder, by name (torch tensors)."""
    import torch

    safetensors = sorted(folder.glob("*.safetensors"))
    try:
        if safetensors:
            from safetensors.torch import load_file

            state = {}
            for shard in safetensors:
                state.update(load_file(str(shard)))
            return state
        state = {}
        for shard in sorted(folder.glob("pytorch_model*.bin")):
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
        return state
    except Exception as error:  # a truncated or foreign file: safetensors and torch raise their own kinds
        raise FormatError(f"{folder}: its weights cannot be read ({hf_format.first_words(error)}); "
                          "re-download or re-export them") from None


def write_openai_checkpoint(folder: Path, output: Path, config: dict) -> None:
    import torch

    from whisper_hpc.weight_names import LM_HEAD, UnknownWeight, openai_name

    dims = openai_dims(config)
    generation_path = folder / hf_format.GENERATION_CONFIG
    generation = json.loads(generation_path.read_text(encoding="utf-8")) if generation_path.is_file() else {}
    state = {}
    for name, tensor in transformers_state(folder).items():
        if name == LM_HEAD:
            continue  # tied to the token embedding
        try:
            state[openai_name(name)] = tensor.to(torch.float16).contiguous()
        except UnknownWeight as error:
            raise FormatError(f"{folder}: {error}") from None
    heads = generation.get("alignment_heads") or [[layer, head] for layer in range(dims["n_text_layer"] // 2, dims["n_text_layer"])
                                                  for head in range(dims["n_text_head"])]
    checkpoint = {"dims": dims, "model_state_dict": state, "alignment_heads": [list(pair) for pair in heads]}
    write_atomically(output, lambda stream: torch.save(checkpoint, stream))


def mindspeed_to_transformers(path: Path, prepared: Path, options: ImportOptions) -> tuple[Path, dict]:
    """A transformers folder in `prepared` from a MindSpeed-MM checkpoint and its --config folder."""
    import torch

    from whisper_hpc.weight_names import LM_HEAD, hf_name_from_mindspeed

    checkpoint = path / MINDSPEED_CHECKPOINT if path.is_dir() else path
    if options.config is None:
        raise FormatError(f"{checkpoint} is a MindSpeed-MM checkpoint: give --config DIR, the transformers folder "
                          "(config.json, tokenizer.json, preprocessor_config.json) it was trained from")
    config_dir = Path(options.config)
    for needed in (hf_format.CONFIG, hf_format.TOKENIZER, hf_format.PREPROCESSOR):
        if not (config_dir / needed).is_file():
            raise FormatError(f"--config {config_dir} has no {needed}")
    transformers = hf_format.import_transformers()
    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FormatError(f"{checkpoint} cannot be read ({hf_format.first_words(error)})") from None
    weights = loaded.get("model") if isinstance(loaded, dict) else None
    if not isinstance(weights, dict):
        raise FormatError(f"{checkpoint} has no 'model' state dict: not a MindSpeed-MM checkpoint")
    state = {hf_name_from_mindspeed(name): tensor for name, tensor in weights.items()}
    problem = misfit(expected_shapes(config_dir, transformers), state)
    if problem:
        raise FormatError(f"{checkpoint} does not fit --config {config_dir}: {problem}")
    from safetensors.torch import save_file

    state.pop(LM_HEAD, None)  # tied to the token embedding, as transformers saves it
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(prepared / "model.safetensors"),
              metadata={"format": "pt"})
    for item in config_dir.iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin", ".pt", ".py")):
            shutil.copyfile(item, prepared / item.name)
    origin = f"MindSpeed-MM checkpoint {checkpoint.resolve()} with the config of {config_dir.resolve()}"
    sources = [{"kind": "mindspeed", "checkpoint": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint),
                "config": str(config_dir.resolve())}]
    return prepared, {"origin": origin, "sources": sources}


def replace_or_publish(work: Path, final: Path, root: Path) -> None:
    """Publish `work` as `final`; an existing model (--overwrite) is moved aside first and removed after."""
    if not (final.exists() or final.is_symlink()):
        publish(work, final)
        return
    old = staging_dir(root, f"{SOURCES}/{final.name}.replaced")
    discard(old)
    os.rename(final, old)
    try:
        publish(work, final)
    except BaseException:
        os.rename(old, final)
        raise
    discard(old)


# ----- export ------------------------------------------------------------------------------------

def export_model(model: StagedModel, fmt: str, output: Path, say: Callable[[str], None] = print) -> Path:
    """Write a staged model in `fmt` into the new folder `output` (built beside it, then renamed)."""
    import torch

    if fmt not in FORMATS:
        raise FormatError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FormatError(f"{output} exists and is not an empty folder; choose a new --output")
    partial = output.with_name(f".{output.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if fmt == "openai":
            checkpoint = model.openai_checkpoint
            if checkpoint is None:
                from whisper_hpc.convert import convert_ctranslate2_to_openai

                convert_ctranslate2_to_openai(model.path, partial / OPENAI_CHECKPOINT)
            else:
                shutil.copyfile(checkpoint, partial / OPENAI_CHECKPOINT)
        elif fmt == "ggml":
            from whisper_hpc.staging.ggml import export_ggml, ggml_name

            export_ggml(model, partial / ggml_name(model))
        else:
            hf_format.write_transformers(model.path, partial)
            if fmt == "mindspeed":
                from whisper_hpc.weight_names import LM_HEAD, mindspeed_name

                state = transformers_state(partial)
                state.setdefault(LM_HEAD, state["model.decoder.embed_tokens.weight"])  # MindSpeed-MM keeps the tied head
                renamed = {mindspeed_name(name): tensor for name, tensor in state.items()}
                write_atomically(partial / MINDSPEED_CHECKPOINT,
                                 lambda stream: torch.save({"model": renamed, "iteration": 0}, stream))
                for weights in list(partial.glob("*.safetensors")) + list(partial.glob("*.safetensors.index.json")):
                    weights.unlink()
        if output.exists():
            output.rmdir()
        os.rename(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"{model.name}: exported as {fmt} to {output}")
    return output
