"""What to try when the GPU runs out of memory on a file: half the batch, down to 1; then a lighter
compute type; only then does the file fail."""

from __future__ import annotations

from dataclasses import dataclass, replace

from whisper_hpc.engines.base import DecodeOptions

# The next lighter compute type each engine can load (int8 weights keep float16 activations).
LIGHTER = {
    "faster-whisper": {"float32": "float16", "float16": "int8_float16", "bfloat16": "int8_bfloat16"},
    "openai-whisper": {"float32": "float16"},
}


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, as CTranslate2 ("CUDA failed with error out of memory") or
    torch (torch.cuda.OutOfMemoryError: "CUDA out of memory") raise it."""
    text = str(error).lower()
    return type(error).__name__ == "OutOfMemoryError" or ("out of memory" in text and "cuda" in text)


@dataclass(frozen=True)
class Retry:
    options: DecodeOptions
    compute_type: str | None  # a new compute type (the engine is loaded again), or None: the same
    notice: str


def next_retry(engine_name: str, compute_type: str, options: DecodeOptions) -> Retry | None:
    """The next lighter way to transcribe after an out-of-memory error, or None when none is left."""
    if options.batch_size > 1:
        smaller = options.batch_size // 2
        return Retry(replace(options, batch_size=smaller), None,
                     f"retrying with --batch_size {smaller} (was {options.batch_size})")
    lighter = LIGHTER.get(engine_name, {}).get(compute_type)
    if lighter:
        return Retry(options, lighter, f"retrying with --compute_type {lighter} (was {compute_type})")
    return None
