"""Convert a CTranslate2 Whisper model directory into an openai-whisper checkpoint.

A CTranslate2 model directory holds ``model.bin`` (binary format version 6, spec
``WhisperSpec``) and ``config.json``. The result is the dictionary that
``whisper.load_model(path)`` reads: ``{"dims": ..., "model_state_dict": ...}``,
plus ``"alignment_heads"`` (``[[layer, head], ...]`` from ``config.json``) so the
caller can enable word timestamps with :func:`alignment_heads_mask`.

Only the standard library and numpy are imported at module level; torch is
imported inside the functions that need it.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

import numpy

from whisper_hpc.files import write_atomically

SUPPORTED_BINARY_VERSIONS = frozenset({6})
SPEC_NAME = "WhisperSpec"
MODEL_FILE = "model.bin"
CONFIG_FILE = "config.json"

_BF16 = 5
# CTranslate2 DataType ids (include/ctranslate2/types.h); bf16 is read as uint16.
_DTYPES: dict[int, numpy.dtype] = {
    0: numpy.dtype("<f4"),
    1: numpy.dtype("i1"),
    2: numpy.dtype("<i2"),
    3: numpy.dtype("<i4"),
    4: numpy.dtype("<f2"),
    _BF16: numpy.dtype("<u2"),
}
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


# --------------------------------------------------------------------------- reader


class _Reader:
    """Little-endian reads from a binary file that fail loudly on truncation."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path

    def exact(self, size: int) -> bytearray:
        """Read exactly ``size`` bytes."""
        buffer = bytearray(size)
        if self.handle.readinto(buffer) != size:
            raise ValueError(f"{self.path}: truncated CTranslate2 model file")
        return buffer

    def unpack(self, fmt: str) -> int:
        """Read one struct value (``fmt`` without byte order)."""
        return struct.unpack("<" + fmt, self.exact(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        """Read a uint16-length-prefixed, NUL-terminated UTF-8 string."""
        raw = self.exact(self.unpack("H"))
        if not raw or raw[-1] != 0:
            raise ValueError(f"{self.path}: malformed string in CTranslate2 model file")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{self.path}: malformed string in CTranslate2 model file") from error


def _bfloat16_to_float32(bits: numpy.ndarray) -> numpy.ndarray:
    """Widen raw bfloat16 bits (uint16) to float32."""
    return (bits.astype(numpy.uint32) << 16).view(numpy.float32)


def _read_header(reader: _Reader) -> None:
    """Check binary version and spec name; raise ValueError if unsupported."""
    head = reader.handle.read(4)
    if len(head) < 4:
        raise ValueError(f"{reader.path}: not a CTranslate2 model file (too short)")
    version = struct.unpack("<I", head)[0]
    if version > 0xFFFF:
        raise ValueError(f"{reader.path}: not a CTranslate2 model file")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise ValueError(
            f"{reader.path}: unsupported CTranslate2 binary version {version} "
            f"(supported: {sorted(SUPPORTED_BINARY_VERSIONS)})"
        )
    try:
        spec = reader.string()
    except ValueError as error:
        raise ValueError(f"{reader.path}: not a CTranslate2 model file") from error
    if spec != SPEC_NAME:
        raise ValueError(f"{reader.path}: spec is {spec!r}, expected {SPEC_NAME!r}")
    reader.unpack("I")  # spec revision (3 for current Whisper models)


def _read_variable(reader: _Reader) -> tuple[str, numpy.ndarray]:
    """Read one variable record: name, rank, dims, dtype, byte count, bytes."""
    name = reader.string()
    rank = reader.unpack("B")
    shape = tuple(reader.unpack("I") for _ in range(rank))
    type_id = reader.unpack("B")
    if type_id not in _DTYPES:
        raise ValueError(f"{reader.path}: variable {name!r} has unknown dtype id {type_id}")
    dtype = _DTYPES[type_id]
    num_bytes = reader.unpack("I")
    expected = int(numpy.prod(shape, dtype=numpy.int64)) * dtype.itemsize
    if num_bytes != expected:
        raise ValueError(
            f"{reader.path}: variable {name!r} has {num_bytes} bytes, "
            f"expected {expected} for shape {shape}"
        )
    array = numpy.frombuffer(reader.exact(num_bytes), dtype=dtype).reshape(shape)
    if type_id == _BF16:
        array = _bfloat16_to_float32(array)
    return name, array


def _resolve_aliases(
    variables: dict[str, numpy.ndarray], aliases: dict[str, str], path: Path
) -> None:
    """Add every alias to ``variables`` as the array it (transitively) names."""
    for alias in aliases:
        target, seen = aliases[alias], {alias}
        while target not in variables:
            if target in seen or target not in aliases:
                raise ValueError(f"{path}: alias {alias!r} points to missing variable {target!r}")
            seen.add(target)
            target = aliases[target]
        variables[alias] = variables[target]


_STORAGE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", _BF16: "bfloat16"}


def weight_storage(model_bin: Path) -> str:
    """How a model.bin stores most of its bytes (int8, float16, float32, ...): its quantization.
    Reads only the variables' headers."""
    model_bin = Path(model_bin)
    totals: dict[str, int] = {}
    with open(model_bin, "rb") as handle:
        reader = _Reader(handle, model_bin)
        _read_header(reader)
        for _ in range(reader.unpack("I")):
            reader.string()
            shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
            type_id = reader.unpack("B")
            num_bytes = reader.unpack("I")
            if type_id not in _STORAGE_NAMES or len(shape) > 8:
                raise ValueError(f"{model_bin}: not a CTranslate2 model file I can read")
            totals[_STORAGE_NAMES[type_id]] = totals.get(_STORAGE_NAMES[type_id], 0) + num_bytes
            handle.seek(num_bytes, 1)
    return max(totals, key=totals.get) if totals else "empty"


def read_ctranslate2_variables(model_bin: Path) -> dict[str, numpy.ndarray]:
    """All variables of a CTranslate2 model.bin, aliases resolved, as numpy arrays."""
    model_bin = Path(model_bin)
    with open(model_bin, "rb") as handle:
        reader = _Reader(handle, model_bin)
        _read_header(reader)
        variables = dict(_read_variable(reader) for _ in range(reader.unpack("I")))
        aliases = {}
        for _ in range(reader.unpack("I")):
            alias = reader.string()
            aliases[alias] = reader.string()
        if handle.read(1):
            raise ValueError(f"{model_bin}: trailing bytes after the alias table")
    _resolve_aliases(variables, aliases, model_bin)
    return variables


# --------------------------------------------------------------------------- mapping


class _Variables:
    """Name lookup over CT2 variables that records use and names the file on a miss."""

    def __init__(self, variables: dict[str, numpy.ndarray], path: Path) -> None:
        self.variables = variables
        self.path = path
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.variables

    def raw(self, name: str) -> numpy.ndarray:
        """The variable as stored."""
        if name not in self.variables:
            raise ValueError(f"{self.path}: missing variable {name!r}")
        self.used.add(name)
        return self.variables[name]

    def tensor(self, name: str) -> numpy.ndarray:
        """The variable as a float array (stored float dtype, or float32 when
        dequantized from int8/int16 with ``<name>_scale``)."""
        value = self.raw(name)
        if self.has(name + "_zero"):
            raise ValueError(f"{self.path}: {name!r} uses AWQ/zero-point quantization (unsupported)")
        if self.has(name + "_scale"):
            scale = self.raw(name + "_scale").astype(numpy.float32)
            scale = scale.reshape(scale.shape + (1,) * (value.ndim - scale.ndim))
            return value.astype(numpy.float32) / scale
        if value.dtype.kind != "f":
            raise ValueError(f"{self.path}: {name!r} is {value.dtype} without a scale")
        return value

    def scalar(self, name: str) -> int:
        """An integer scalar variable (e.g. head counts)."""
        value = self.raw(name)
        if value.size != 1:
            raise ValueError(f"{self.path}: {name!r} is not a scalar (shape {value.shape})")
        return int(value.reshape(()))

    def unused_tensors(self) -> list[str]:
        """Non-scalar variables the mapping did not consume."""
        return sorted(
            name for name, value in self.variables.items()
            if name not in self.used and value.ndim > 0
        )


def _count_layers(names: Iterable[str], stack: str, path: Path) -> int:
    """Number of ``<stack>/layer_N`` blocks; they must be numbered 0..N-1."""
    indices = {int(m.group(2)) for m in map(_LAYER.match, names) if m and m.group(1) == stack}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"{path}: {stack} layers are missing or not numbered 0..N-1")
    return len(indices)


def _split(value: numpy.ndarray, parts: int, name: str, path: Path) -> list[numpy.ndarray]:
    """Split a fused projection along dim 0 into equal parts."""
    if value.shape[0] % parts:
        raise ValueError(f"{path}: {name!r} dim 0 ({value.shape[0]}) not divisible by {parts}")
    return numpy.split(value, parts, axis=0)


def _linear(
    out: dict[str, numpy.ndarray], v: _Variables, src: str, dst: str, *, bias: bool = True
) -> None:
    """Copy a CT2 linear (or conv / layer) ``weight``+``bias`` to ``dst.weight/bias``."""
    out[f"{dst}.weight"] = v.tensor(f"{src}/weight")
    if bias:
        out[f"{dst}.bias"] = v.tensor(f"{src}/bias")


def _layer_norm(out: dict[str, numpy.ndarray], v: _Variables, src: str, dst: str) -> None:
    """CT2 ``gamma``/``beta`` -> ``weight``/``bias``."""
    out[f"{dst}.weight"] = v.tensor(f"{src}/gamma")
    out[f"{dst}.bias"] = v.tensor(f"{src}/beta")


def _fused_self_attention(out: dict[str, numpy.ndarray], v: _Variables, src: str, dst: str) -> None:
    """Split fused q,k,v. The key bias is dropped: openai-whisper has none, and a
    key bias adds the same q.b_k to every score of a query, which softmax ignores."""
    weight, bias = v.tensor(f"{src}/linear_0/weight"), v.tensor(f"{src}/linear_0/bias")
    for part, w in zip(("query", "key", "value"), _split(weight, 3, src, v.path)):
        out[f"{dst}.{part}.weight"] = w
    q_bias, _, v_bias = _split(bias, 3, src, v.path)
    out[f"{dst}.query.bias"], out[f"{dst}.value.bias"] = q_bias, v_bias
    _linear(out, v, f"{src}/linear_1", f"{dst}.out")


def _cross_attention(out: dict[str, numpy.ndarray], v: _Variables, src: str, dst: str) -> None:
    """linear_0 = query, linear_1 = fused key,value (key bias dropped), linear_2 = out."""
    _linear(out, v, f"{src}/linear_0", f"{dst}.query")
    key, value = _split(v.tensor(f"{src}/linear_1/weight"), 2, src, v.path)
    _, value_bias = _split(v.tensor(f"{src}/linear_1/bias"), 2, src, v.path)
    out[f"{dst}.key.weight"], out[f"{dst}.value.weight"] = key, value
    out[f"{dst}.value.bias"] = value_bias
    _linear(out, v, f"{src}/linear_2", f"{dst}.out")


def _ffn(out: dict[str, numpy.ndarray], v: _Variables, src: str, dst: str) -> None:
    """ffn/linear_0|1 -> mlp.0|2, ffn/layer_norm -> mlp_ln."""
    _linear(out, v, f"{src}/linear_0", f"{dst}.mlp.0")
    _linear(out, v, f"{src}/linear_1", f"{dst}.mlp.2")
    _layer_norm(out, v, f"{src}/layer_norm", f"{dst}.mlp_ln")


def _encoder(out: dict[str, numpy.ndarray], v: _Variables, n_layer: int) -> None:
    """Map encoder variables."""
    _linear(out, v, "encoder/conv1", "encoder.conv1")
    _linear(out, v, "encoder/conv2", "encoder.conv2")
    out["encoder.positional_embedding"] = v.tensor("encoder/position_encodings/encodings")
    for i in range(n_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _fused_self_attention(out, v, f"{src}/self_attention", f"{dst}.attn")
        _layer_norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        _ffn(out, v, f"{src}/ffn", dst)
    _layer_norm(out, v, "encoder/layer_norm", "encoder.ln_post")


def _decoder(out: dict[str, numpy.ndarray], v: _Variables, n_layer: int) -> None:
    """Map decoder variables; the output projection must be tied to the embeddings."""
    embeddings = v.tensor("decoder/embeddings/weight")
    out["decoder.token_embedding.weight"] = embeddings
    # Usually an alias of the embeddings (whose _scale, if quantized, is not aliased).
    if v.has("decoder/projection/weight") and (
        v.raw("decoder/projection/weight") is not v.raw("decoder/embeddings/weight")
    ):
        if not numpy.array_equal(v.tensor("decoder/projection/weight"), embeddings):
            raise ValueError(f"{v.path}: decoder/projection differs from decoder/embeddings")
    if v.has("decoder/projection/bias") and numpy.any(v.tensor("decoder/projection/bias")):
        raise ValueError(f"{v.path}: decoder/projection has a bias (unsupported)")
    out["decoder.positional_embedding"] = v.tensor("decoder/position_encodings/encodings")
    for i in range(n_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _fused_self_attention(out, v, f"{src}/self_attention", f"{dst}.attn")
        _layer_norm(out, v, f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        _cross_attention(out, v, f"{src}/attention", f"{dst}.cross_attn")
        _layer_norm(out, v, f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        _ffn(out, v, f"{src}/ffn", dst)
    _layer_norm(out, v, "decoder/layer_norm", "decoder.ln")


def _dims(v: _Variables, n_audio_layer: int, n_text_layer: int) -> dict[str, int]:
    """openai-whisper ModelDimensions from tensor shapes and head counts."""
    conv1 = v.raw("encoder/conv1/weight")  # (n_audio_state, n_mels, 3)
    audio_pos = v.raw("encoder/position_encodings/encodings")
    embeddings = v.raw("decoder/embeddings/weight")
    text_pos = v.raw("decoder/position_encodings/encodings")
    return {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(audio_pos.shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": v.scalar("encoder/num_heads"),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(text_pos.shape[0]),
        "n_text_state": int(embeddings.shape[1]),
        "n_text_head": v.scalar("decoder/num_heads"),
        "n_text_layer": n_text_layer,
    }


def _alignment_heads(ct2_dir: Path, n_text_layer: int, n_text_head: int) -> list[list[int]]:
    """``alignment_heads`` from config.json; default (as CT2 and openai-whisper):
    every head of the last half of the decoder layers."""
    config_path = ct2_dir / CONFIG_FILE
    heads = None
    if config_path.is_file():
        try:
            heads = json.loads(config_path.read_text(encoding="utf-8")).get("alignment_heads")
        except (json.JSONDecodeError, AttributeError) as error:
            raise ValueError(f"{config_path}: not a valid CTranslate2 config.json") from error
    if heads is None:
        return [[l, h] for l in range(n_text_layer // 2, n_text_layer) for h in range(n_text_head)]
    result = [[int(l), int(h)] for l, h in heads]
    _check_heads(result, n_text_layer, n_text_head, config_path)
    return result


def _check_heads(heads: Sequence[Sequence[int]], n_layer: int, n_head: int, where: Any) -> None:
    """Raise ValueError if any (layer, head) is out of range."""
    for layer, head in heads:
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(
                f"{where}: alignment head {[layer, head]} outside {n_layer} layers x {n_head} heads"
            )


def openai_state_arrays(ct2_dir: Path) -> tuple[dict[str, int], dict[str, numpy.ndarray]]:
    """(dims, numpy state dict in the stored float dtypes) for the CT2 model in ``ct2_dir``."""
    model_bin = Path(ct2_dir) / MODEL_FILE
    v = _Variables(read_ctranslate2_variables(model_bin), model_bin)
    n_audio_layer = _count_layers(v.variables, "encoder", model_bin)
    n_text_layer = _count_layers(v.variables, "decoder", model_bin)
    dims = _dims(v, n_audio_layer, n_text_layer)
    state: dict[str, numpy.ndarray] = {}
    _encoder(state, v, n_audio_layer)
    _decoder(state, v, n_text_layer)
    unused = v.unused_tensors()
    if unused:
        raise ValueError(f"{model_bin}: unexpected variables {unused[:5]}{'...' if len(unused) > 5 else ''}")
    return dims, state


def _checkpoint(ct2_dir: Path, dtype: numpy.dtype) -> dict:
    """The checkpoint with every tensor a fresh ``dtype`` copy (no shared storage)."""
    import torch

    ct2_dir = Path(ct2_dir)
    dims, arrays = openai_state_arrays(ct2_dir)
    state = {name: torch.from_numpy(numpy.array(a, dtype=dtype)) for name, a in arrays.items()}
    heads = _alignment_heads(ct2_dir, dims["n_text_layer"], dims["n_text_head"])
    return {"dims": dims, "model_state_dict": state, "alignment_heads": heads}


def openai_checkpoint_from_ctranslate2(ct2_dir: Path) -> dict:
    """{"dims": {...}, "model_state_dict": {name: torch.Tensor}, "alignment_heads": [[layer, head], ...]}

    Tensors are float32 (lossless for f32/f16/bf16 sources)."""
    return _checkpoint(ct2_dir, numpy.dtype(numpy.float32))


def alignment_heads_mask(heads: Sequence[Sequence[int]], n_text_layer: int, n_text_head: int) -> bytes:
    """base85(gzip(bool[n_text_layer, n_text_head])) as ``Whisper.set_alignment_heads`` expects."""
    _check_heads(heads, n_text_layer, n_text_head, "alignment_heads_mask")
    mask = numpy.zeros((n_text_layer, n_text_head), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))


# --------------------------------------------------------------------------- writer


def convert_ctranslate2_to_openai(ct2_dir: Path, output: Path, *, half: bool = True) -> Path:
    """Write the checkpoint with torch.save, atomically (files.write_atomically); return output. ``half`` stores float16 tensors (as OpenAI ships them)."""
    output = Path(output)
    checkpoint = _checkpoint(ct2_dir, numpy.dtype(numpy.float16 if half else numpy.float32))
    import torch

    return write_atomically(output, lambda stream: torch.save(checkpoint, stream))
