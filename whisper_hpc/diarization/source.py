"""Where a run's speaker turns come from: the pyannote pipeline, or a ready-made RTTM.

The runner asks `begin(path)` for each file, feeds the decoded windows to `add`, and gets
the file's turns from `finish`. Nothing here imports pyannote until a pipeline is loaded.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from whisper_hpc.diarization.pipeline import SpeakerCounts
from whisper_hpc.diarization.rttm import file_id, turns_for
from whisper_hpc.transcript import SpeakerTurn


class FileSpeakers(Protocol):
    def add(self, offset: float, samples: np.ndarray) -> None: ...

    def finish(self) -> tuple[list[SpeakerTurn], dict]: ...


class SpeakerSource(Protocol):
    def begin(self, audio: Path) -> FileSpeakers: ...


class PipelineSpeakers:
    """Runs the pipeline; loaded on the first file that needs it (`load` raises set-up errors)."""

    def __init__(self, load: Callable[[], object], directory: Path, counts: SpeakerCounts) -> None:
        self.load = load
        self.directory = directory
        self.counts = counts
        self.diarizer = None

    def begin(self, audio: Path) -> "PipelineFile":
        if self.diarizer is None:
            self.diarizer = self.load()
        return PipelineFile(self.diarizer.start(file_id(audio.stem), self.counts), self)


class PipelineFile:
    def __init__(self, diarization, source: PipelineSpeakers) -> None:
        self.diarization = diarization
        self.source = source
        self.seconds = 0.0

    def add(self, offset: float, samples: np.ndarray) -> None:
        started = time.monotonic()
        try:
            self.diarization.add(offset, samples)
        except Exception as error:  # one file's failure must not end the batch
            raise RuntimeError(f"speaker diarization failed at {offset:.0f} s: {type(error).__name__}: {error}")
        self.seconds += time.monotonic() - started

    def finish(self) -> tuple[list[SpeakerTurn], dict]:
        started = time.monotonic()
        try:
            turns = self.diarization.finish()
        except Exception as error:
            raise RuntimeError(f"speaker clustering failed: {type(error).__name__}: {error}")
        self.seconds += time.monotonic() - started
        found = len({t.speaker for t in turns})
        wanted = self.source.counts
        lowest = wanted.num_speakers or wanted.min_speakers or 1
        highest = wanted.num_speakers or wanted.max_speakers or found
        if turns and not lowest <= found <= highest:
            asked = wanted.num_speakers or f"{lowest} to {wanted.max_speakers or 'any number of'}"
            print(f"whisper-hpc: {self.diarization.uri}: {found} speakers found, not the {asked} asked for",
                  file=sys.stderr, flush=True)
        counts = {k: v for k, v in vars(self.source.counts).items() if v is not None}
        info = {"source": "pipeline", "pipeline": str(self.source.directory), **counts,
                "wall_time": round(self.seconds, 3)}
        return turns, info


class RttmSpeakers:
    """Merges turns from an RTTM file (or a directory of <stem>.rttm) instead of running a pipeline."""

    def __init__(self, rttm: Path, single_input: bool) -> None:
        self.rttm = rttm
        self.single_input = single_input

    def begin(self, audio: Path) -> "RttmFile":
        return RttmFile(turns_for(audio, self.rttm, self.single_input), self.rttm)


class RttmFile:
    def __init__(self, turns: list[SpeakerTurn], rttm: Path) -> None:
        self.turns = turns
        self.rttm = rttm

    def add(self, offset: float, samples: np.ndarray) -> None:
        pass

    def finish(self) -> tuple[list[SpeakerTurn], dict]:
        return self.turns, {"source": "rttm", "rttm": str(self.rttm)}
