"""`whisper-models export NAME --format ggml`: whisper.cpp's model file, from a staged model's
openai-whisper checkpoint (openai-whisper.pt: {"dims": ..., "model_state_dict": ...}).

The file is whisper.cpp's own "ggml" model format, as its models/convert-pt-to-ggml.py writes it
and whisper.cpp's loader reads it; all integers int32, little-endian:

    magic 0x67676d6c ("ggml")
    hparams  n_vocab n_audio_ctx n_audio_state n_audio_head n_audio_layer
             n_text_ctx n_text_state n_text_head n_text_layer n_mels ftype (1: float16 weights)
    mel filters  n_mels, 201, then n_mels x 201 float32 (openai-whisper's assets/mel_filters.npz)
    vocabulary   count, then per token: length, bytes (openai-whisper's gpt2 / multilingual
                 .tiktoken, by rank; whisper.cpp adds the special tokens itself)
    tensors      per tensor: n_dims, name length, ftype (0 float32, 1 float16), the dims
                 innermost first (ggml's order: reversed from torch), the name, the raw data

Matrices (2-D and up) are float16, vectors, the conv biases (stored as [n, 1]) and the
positional embeddings float32, as whisper.cpp expects them. The mel filters and the vocabulary
come from the pinned openai-whisper package, offline. torch and numpy are imported only here.
"""

from __future__ import annotations

import base64
import importlib.util
import struct
from pathlib import Path
from typing import IO

from whisper_hpc.files import write_atomically
from whisper_hpc.model_store import OPENAI_CHECKPOINT, StagedModel
from whisper_hpc.staging.hf_format import FormatError, first_words

MAGIC = 0x67676D6C
HPARAMS = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
           "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels")
MULTILINGUAL_VOCABULARY = 51865  # English-only Whisper vocabularies have 51864 tokens, multilingual ones more
FLOAT32, FLOAT16 = 0, 1
FLOAT32_ALWAYS = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
                  "decoder.positional_embedding")
CONV_BIASES = ("encoder.conv1.bias", "encoder.conv2.bias")
ATTENTION = ("query.weight", "query.bias", "key.weight", "value.weight", "value.bias", "out.weight", "out.bias")
BLOCK = tuple(f"attn.{name}" for name in ATTENTION) + (
    "attn_ln.weight", "attn_ln.bias", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
    "mlp_ln.weight", "mlp_ln.bias")
CROSS = tuple(f"cross_attn.{name}" for name in ATTENTION) + ("cross_attn_ln.weight", "cross_attn_ln.bias")


class GgmlError(FormatError):
    """A staged model that cannot be written as a whisper.cpp model file (one line, what to do)."""


def ggml_name(model: StagedModel) -> str:
    """whisper.cpp's own naming: ggml-tiny.en.bin."""
    return f"ggml-{model.name}.bin"


def export_ggml(model: StagedModel, output: Path, use_f16: bool = True) -> Path:
    """Write `model` as whisper.cpp's ggml file `output` (atomically: whole or not at all)."""
    checkpoint = model.openai_checkpoint
    if checkpoint is None:
        raise GgmlError(f"{model.path} has no {OPENAI_CHECKPOINT}, which the ggml file is made from; "
                        f"write it with `whisper-models convert {model.name}`")
    dims, state = load_checkpoint(checkpoint)
    assets = whisper_assets()
    filters = mel_filters(assets, dims["n_mels"])
    tokens = vocabulary(assets, dims["n_vocab"])
    return write_atomically(Path(output), lambda stream: write_ggml(stream, dims, state, filters, tokens, use_f16))


def load_checkpoint(path: Path) -> tuple[dict[str, int], dict]:
    """(dims, state dict) of an openai-whisper checkpoint, checked against what whisper.cpp loads."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, foreign or not a zip: torch raises several kinds
        raise GgmlError(f"{path} cannot be read as an openai-whisper checkpoint ({first_words(error)}); "
                        "re-stage the model") from None
    dims = checkpoint.get("dims") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("model_state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(dims, dict) or not isinstance(state, dict):
        raise GgmlError(f"{path} is not an openai-whisper checkpoint (no 'dims' and 'model_state_dict')")
    missing = [name for name in HPARAMS if not isinstance(dims.get(name), int)]
    if missing:
        raise GgmlError(f"{path}: its dims lack {', '.join(missing)}")
    problem = misfit(dims, state)
    if problem:
        raise GgmlError(f"{path}: its weights do not fit its dims ({problem}); whisper.cpp would refuse the file")
    return {name: int(dims[name]) for name in HPARAMS}, state


def expected_tensors(dims: dict[str, int]) -> dict[str, tuple[int, ...] | None]:
    """Every tensor whisper.cpp loads for these dims, with the shape it must have where it is
    fixed by the dims alone (None: checked by whisper.cpp against the others)."""
    audio, text = dims["n_audio_state"], dims["n_text_state"]
    names: dict[str, tuple[int, ...] | None] = {
        "encoder.conv1.weight": (audio, dims["n_mels"], 3), "encoder.conv1.bias": (audio,),
        "encoder.conv2.weight": (audio, audio, 3), "encoder.conv2.bias": (audio,),
        "encoder.positional_embedding": (dims["n_audio_ctx"], audio),
        "encoder.ln_post.weight": (audio,), "encoder.ln_post.bias": (audio,),
        "decoder.token_embedding.weight": (dims["n_vocab"], text),
        "decoder.positional_embedding": (dims["n_text_ctx"], text),
        "decoder.ln.weight": (text,), "decoder.ln.bias": (text,),
    }
    for layer in range(dims["n_audio_layer"]):
        names.update({f"encoder.blocks.{layer}.{name}": None for name in BLOCK})
    for layer in range(dims["n_text_layer"]):
        names.update({f"decoder.blocks.{layer}.{name}": None for name in BLOCK + CROSS})
    return names


def misfit(dims: dict[str, int], state: dict) -> str | None:
    expected = expected_tensors(dims)
    wrong = [f"{name} is {tuple(state[name].shape)}, not {shape}" for name, shape in expected.items()
             if name in state and shape is not None and tuple(state[name].shape) != shape]
    missing = [f"missing {name}" for name in expected if name not in state]
    unknown = [f"unknown {name}" for name in state if name not in expected]
    return "; ".join(wrong[:2] + missing[:2] + unknown[:2]) or None


def whisper_assets() -> Path:
    """openai-whisper's assets folder (mel filters, tiktoken vocabularies), without importing it."""
    spec = importlib.util.find_spec("whisper")
    locations = list(spec.submodule_search_locations or []) if spec else []
    folder = Path(locations[0]) / "assets" if locations else None
    if folder is None or not (folder / "mel_filters.npz").is_file():
        raise GgmlError("openai-whisper's assets (mel_filters.npz, *.tiktoken) are not installed; "
                        "the ggml export needs the pinned openai-whisper of requirements/whisper.lock")
    return folder


def mel_filters(assets: Path, n_mels: int):
    import numpy

    with numpy.load(assets / "mel_filters.npz") as filters:
        key = f"mel_{n_mels}"
        if key not in filters:
            raise GgmlError(f"n_mels {n_mels}: openai-whisper has mel filters for {', '.join(sorted(filters))} only")
        return numpy.ascontiguousarray(filters[key], dtype="<f4")


def vocabulary(assets: Path, n_vocab: int) -> list[bytes]:
    """The byte strings of the ordinary tokens, by rank (token id), as whisper.cpp reads them."""
    name = "multilingual.tiktoken" if n_vocab >= MULTILINGUAL_VOCABULARY else "gpt2.tiktoken"
    ranks: dict[int, bytes] = {}
    for line in (assets / name).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[int(rank)] = base64.b64decode(token)
    if sorted(ranks) != list(range(len(ranks))) or len(ranks) >= n_vocab:
        raise GgmlError(f"{assets / name} does not fit a vocabulary of {n_vocab} tokens")
    return [ranks[rank] for rank in range(len(ranks))]


def write_ggml(stream: IO[bytes], dims: dict[str, int], state: dict, filters, tokens: list[bytes],
               use_f16: bool = True) -> None:
    def ints(*values: int) -> None:
        stream.write(struct.pack(f"<{len(values)}i", *values))

    ints(MAGIC, *(dims[name] for name in HPARAMS), FLOAT16 if use_f16 else FLOAT32)
    ints(*filters.shape)
    stream.write(filters.tobytes())
    ints(len(tokens))
    for token in tokens:
        ints(len(token))
        stream.write(token)
    for name, tensor in state.items():
        data, ftype = tensor_data(name, tensor, use_f16)
        encoded = name.encode("utf-8")
        ints(data.ndim, len(encoded), ftype)
        ints(*reversed(data.shape))
        stream.write(encoded)
        stream.write(data.tobytes())


def tensor_data(name: str, tensor, use_f16: bool):
    """(numpy array in the file's layout, ftype) for one tensor."""
    import torch

    array = tensor.detach().to(torch.float32 if tensor.dtype == torch.bfloat16 else tensor.dtype).cpu().numpy()
    if name in CONV_BIASES:
        array = array.reshape(array.shape[0], 1)
    if use_f16 and array.ndim >= 2 and name not in FLOAT32_ALWAYS:
        return array.astype("<f2", copy=False), FLOAT16
    return array.astype("<f4", copy=False), FLOAT32

