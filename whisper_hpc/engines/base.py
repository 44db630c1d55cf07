"""What every engine takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Callable, Iterator, Protocol

import numpy as np

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.model_store import StagedModel
from whisper_hpc.transcript import Segment


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


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    best_of: int = 5
    patience: float | None = None
    length_penalty: float | None = None
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    word_timestamps: bool = False
    suppress_tokens: str = "-1"
    vad_filter: bool = False
    batch_size: int = 0  # > 1: faster-whisper batched inference


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
