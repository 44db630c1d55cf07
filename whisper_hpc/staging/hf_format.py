"""The Hugging Face transformers format of a Whisper model, written from a staged model and checked
when it comes in: the weights, config.json, generation_config.json, the tokenizer and the
feature extractor, loadable offline by `WhisperForConditionalGeneration.from_pretrained(DIR)`.

Token ids are read from the model's own tokenizer.json, never derived from the vocabulary size
(transformers' converter gets `<|endoftext|>` wrong for the multilingual base). transformers
is an administrator's tool here (requirements/convert.lock): imported only by these functions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError

TOKENIZER = "tokenizer.json"
PREPROCESSOR = "preprocessor_config.json"
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ARCHITECTURE = "WhisperForConditionalGeneration"
SPECIAL = ("<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
           "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")
LANGUAGE_TOKEN = re.compile(r"^<\|[a-z]{2,3}(_[a-z]+)?\|>$|^<\|haw\|>$|^<\|yue\|>$")
MAX_LABEL_TOKENS = 448


class FormatError(WhisperHpcError):
    """A model folder that is not (or not safely) a Whisper in transformers format."""

    exit_code = 1  # one model failed; the others are still done


def first_words(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut short: converters and loaders can be verbose."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def import_transformers():
    """transformers, importable beside a torchaudio whose C++ part does not match this torch."""
    import importlib.util

    if importlib.util.find_spec("torchaudio") is not None:
        from whisper_hpc.diarization.torch_audio import import_torchaudio

        import_torchaudio()
    try:
        import transformers
    except ImportError as error:
        raise WhisperHpcError(f"transformers is not installed ({error}); an administrator installs "
                              "requirements/convert.lock (make convert-venv) to import or export models") from None
    transformers.logging.set_verbosity_error()
    return transformers


def token_ids(tokenizer_json: Path) -> dict[str, int]:
    """Every added (special) token of a tokenizer.json, by its text."""
    try:
        data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        return {token["content"]: int(token["id"]) for token in data.get("added_tokens", [])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FormatError(f"{tokenizer_json}: not a readable tokenizer.json ({error})") from None


def ctranslate2_config(model_dir: Path) -> dict:
    path = Path(model_dir) / CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise FormatError(f"{path}: not a readable CTranslate2 config ({error})") from None


def generation_settings(ids: dict[str, int], ct2: dict, dims: dict[str, int]) -> dict:
    """generation_config.json's content for a model whose tokens are `ids` (from its tokenizer.json)."""
    missing = [token for token in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>") if token not in ids]
    if missing:
        raise FormatError(f"the tokenizer lacks {', '.join(missing)}: not a Whisper tokenizer")
    by_id = {value: token for token, value in ids.items()}
    languages = {by_id[i]: i for i in ct2.get("lang_ids") or [] if i in by_id}
    settings = {
        "decoder_start_token_id": ids["<|startoftranscript|>"],
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
        "no_timestamps_token_id": ids["<|notimestamps|>"],
        "suppress_tokens": list(ct2.get("suppress_ids") or []),
        "begin_suppress_tokens": list(ct2.get("suppress_ids_begin") or []),
        "alignment_heads": [list(pair) for pair in ct2.get("alignment_heads") or []],
        "max_length": dims["n_text_ctx"],
        "is_multilingual": bool(languages),
    }
    if "<|startofprev|>" in ids:
        settings["prev_sot_token_id"] = ids["<|startofprev|>"]
    if languages:
        settings["lang_to_id"] = languages
        settings["task_to_id"] = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    return settings


def model_config(dims: dict[str, int], generation: dict):
    transformers = import_transformers()
    return transformers.WhisperConfig(
        vocab_size=dims["n_vocab"], num_mel_bins=dims["n_mels"],
        encoder_layers=dims["n_audio_layer"], encoder_attention_heads=dims["n_audio_head"],
        decoder_layers=dims["n_text_layer"], decoder_attention_heads=dims["n_text_head"],
        d_model=dims["n_audio_state"], encoder_ffn_dim=4 * dims["n_audio_state"], decoder_ffn_dim=4 * dims["n_text_state"],
        max_source_positions=dims["n_audio_ctx"], max_target_positions=dims["n_text_ctx"],
        decoder_start_token_id=generation["decoder_start_token_id"], bos_token_id=generation["bos_token_id"],
        eos_token_id=generation["eos_token_id"], pad_token_id=generation["pad_token_id"],
        tie_word_embeddings=True,
    )


def write_transformers(staged_dir: Path, output: Path) -> Path:
    """A staged model (CTranslate2 files and tokenizer.json) as a transformers folder in `output`."""
    import numpy
    import torch

    from whisper_hpc.convert import openai_state_arrays
    from whisper_hpc.weight_names import hf_name

    from whisper_hpc.convert import weight_storage

    transformers = import_transformers()
    staged_dir = Path(staged_dir)
    try:
        storage = weight_storage(staged_dir / "model.bin")
        if storage.startswith("int"):
            raise FormatError(f"{staged_dir}: its CTranslate2 weights are {storage}-quantized; export needs float "
                              "weights: import the model again with --quantization float16 (or float32) and export that")
        dims, arrays = openai_state_arrays(staged_dir)
    except (OSError, ValueError) as error:
        raise FormatError(f"cannot read the weights of {staged_dir}: {error}") from None
    ids = token_ids(staged_dir / TOKENIZER)
    generation = generation_settings(ids, ctranslate2_config(staged_dir), dims)
    config = model_config(dims, generation)
    model = transformers.WhisperForConditionalGeneration(config)
    state = {hf_name(name): torch.from_numpy(numpy.array(value, dtype=numpy.float32)) for name, value in arrays.items()}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m != "proj_out.weight"]:
        raise FormatError(f"{staged_dir}: weights do not fit a Whisper of these dimensions "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.generation_config = transformers.GenerationConfig(**generation)
    model.save_pretrained(output, safe_serialization=True)
    tokenizer = transformers.WhisperTokenizerFast(tokenizer_file=str(staged_dir / TOKENIZER))
    tokenizer.save_pretrained(output)
    transformers.WhisperFeatureExtractor(feature_size=dims["n_mels"]).save_pretrained(output)
    return output


def check_transformers_folder(folder: Path) -> dict:
    """config.json of a transformers folder, if it is a Whisper encoder-decoder that runs without
    remote code and has its weights, tokenizer and feature extractor; else FormatError."""
    folder = Path(folder)
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(f"{folder}: no {CONFIG}; not a transformers model folder") from None
    except (OSError, ValueError) as error:
        raise FormatError(f"{path} cannot be read ({error})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path} is not a JSON object")
    if config.get("auto_map") or (folder / "configuration.py").exists() or list(folder.glob("modeling_*.py")):
        raise FormatError(f"{folder} needs remote code (auto_map / its own Python files); "
                          "whisper-models never runs code that comes with a model")
    architectures = config.get("architectures") or []
    if config.get("model_type") != "whisper" or (architectures and ARCHITECTURE not in architectures):
        raise FormatError(f"{folder} is a {config.get('model_type')!r} model ({', '.join(architectures) or 'no architecture'}), "
                          f"not a Whisper encoder-decoder ({ARCHITECTURE})")
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise FormatError(f"{folder} has no weights ({' or '.join(WEIGHTS[::2])})")
    for needed in (TOKENIZER, PREPROCESSOR):
        if not (folder / needed).is_file():
            raise FormatError(f"{folder} has no {needed}; CTranslate2 and faster-whisper need it")
    return config
