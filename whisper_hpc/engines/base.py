"""What every engine takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Iterator, Protocol

import numpy as np

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.model_store import StagedModel
from whisper_hpc.transcript import Segment


# The temperature fallback samples; both engines seed their generators with this when they load, so
# that a run gives the same transcripts as the same run before (one file at a time: with several at
# once, which replica draws for which file depends on timing).
SAMPLING_SEED = 0


class EngineError(WhisperHpcError):
    """A model or device problem; the message says what to do."""


@dataclass(frozen=True)
class ModelRequest:
    """A request to load a model: which staged model, on which device, how (the engine does the loading)."""

    staged: StagedModel
    device: str  # "cpu" or "cuda"
    compute_type: str | None  # None: the engine's best default for the device
    threads: int
    device_index: int = 0
    workers: int = 1  # faster-whisper: replicas sharing the weights, for files transcribed at once (lanes.py)


@dataclass(frozen=True)
class VadParameters:
    """Silero VAD settings as given; None leaves the engine's own default."""

    threshold: float | None = None
    min_speech_duration_ms: int | None = None
    max_speech_duration_s: float | None = None
    min_silence_duration_ms: int | None = None
    speech_pad_ms: int | None = None

    def given(self) -> dict:
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None = None
    task: str = "transcribe"
    multilingual: bool = False  # detect the language again for every segment
    beam_size: int | None = 5  # None: greedy (openai-whisper's meaning)
    best_of: int | None = 5
    patience: float | None = None
    length_penalty: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    hallucination_silence_threshold: float | None = None
    condition_on_previous_text: bool = True
    prompt_reset_on_temperature: float = 0.5
    initial_prompt: str | None = None
    carry_initial_prompt: bool = False
    prefix: str | None = None
    hotwords: str | None = None
    word_timestamps: bool = False
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    suppress_tokens: str = "-1"
    suppress_blank: bool = True
    vad_filter: bool = False
    vad: VadParameters = VadParameters()
    batch_size: int = 0  # > 1: faster-whisper batched inference
    clips: tuple[tuple[float, float], ...] | None = None  # stretches to transcribe, in seconds of this audio


@dataclass
class EngineResult:
    segments: Iterator[Segment]
    language: str | None
    language_probability: float | None


class Engine(Protocol):
    name: str
    compute_type: str
    device: str

    def transcribe(self, samples: np.ndarray, options: DecodeOptions) -> EngineResult: ...

    def versions(self) -> dict[str, str]: ...


def package_versions(*names: str) -> dict[str, str]:
    found = {"whisper-hpc": installed_version("whisper-hpc")}
    found.update({name: installed_version(name) for name in names})
    return found


def installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


Notice = Callable[[str], None]
