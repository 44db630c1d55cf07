"""Run a local pyannote speaker-diarization pipeline over audio that arrives in windows.

The runner decodes a file once and hands each window (at most 10 minutes of 16 kHz mono
float32) to Whisper and to `FileDiarization.add`. Per window, pyannote's own steps run:
segmentation, speaker counting and one embedding per (chunk, local speaker). Only those small
results are kept. At the end the embeddings of the whole file are clustered at once, so speaker
labels hold across windows, and each window's turns are rebuilt from the global clusters.

Memory is bounded by one window of audio plus the kept results (about 6 MB per 10 minutes),
and the clustering trains on at most MAX_TRAIN_EMBEDDINGS embeddings (evenly spread over the
file): its distance matrix would otherwise grow with the square of the duration.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from whisper_hpc.diarization import DiarizationError
from whisper_hpc.diarization.merge import number_speakers
from whisper_hpc.diarization.staged import check_pipeline
from whisper_hpc.transcript import SpeakerTurn

SAMPLE_RATE = 16000
MAX_TRAIN_EMBEDDINGS = 6000  # 6000^2/2 float64 distances = 144 MB


@dataclass(frozen=True)
class SpeakerCounts:
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def check(self) -> None:
        for flag, value in (("--num_speakers", self.num_speakers), ("--min_speakers", self.min_speakers),
                            ("--max_speakers", self.max_speakers)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError(f"--min_speakers {self.min_speakers} is more than --max_speakers {self.max_speakers}")


def load_pipeline(directory: Path, device: str = "cpu", device_index: int = 0, threads: int = 0):
    """The pyannote pipeline in `directory`, checked to be complete and local first."""
    check_pipeline(directory)
    from whisper_hpc.diarization.torch_audio import import_pyannote

    import_pyannote()
    import torch
    from pyannote.audio import Pipeline
    from pyannote.audio.pipelines import SpeakerDiarization

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipeline = Pipeline.from_pretrained(directory)
    except Exception as error:  # pyannote raises many kinds for a damaged checkpoint or config
        raise DiarizationError(f"diarization pipeline {directory} cannot be loaded: {type(error).__name__}: {error}")
    if not isinstance(pipeline, SpeakerDiarization):
        raise DiarizationError(
            f"diarization pipeline {directory}: {type(pipeline).__name__} is not a speaker-diarization pipeline "
            "(pipeline.name must be pyannote.audio.pipelines.SpeakerDiarization or a subclass)"
        )
    if device == "cuda":
        pipeline.to(torch.device("cuda", device_index))
    bound_clustering(pipeline.clustering)
    return pipeline


def bound_clustering(clustering, limit: int = MAX_TRAIN_EMBEDDINGS) -> None:
    """Train the clustering on at most `limit` embeddings, evenly spread over the file.

    Every embedding is still assigned to the resulting clusters; only the hierarchical
    clustering's input (whose distance matrix is quadratic) is thinned on long recordings.
    """
    select = clustering.filter_embeddings

    def bounded(embeddings, segmentations=None, **options):
        chosen, chunks, speakers = select(embeddings, segmentations=segmentations, **options)
        if len(chosen) <= limit:
            return chosen, chunks, speakers
        keep = np.unique(np.linspace(0, len(chosen) - 1, limit).round().astype(int))
        return chosen[keep], chunks[keep], speakers[keep]

    object.__setattr__(clustering, "filter_embeddings", bounded)


@dataclass
class WindowResult:
    offset: float
    segmentations: object  # SlidingWindowFeature (chunks, frames, local speakers), window time
    binarized: object
    count: object  # SlidingWindowFeature (frames, 1)
    embeddings: np.ndarray | None  # (chunks, local speakers, dimension); None: nobody speaks


def to_stderr(message: str) -> None:
    print(f"whisper-hpc: {message}", file=sys.stderr, flush=True)


def within_gpu_memory(pipeline, work: Callable[[], WindowResult], notice: Callable[[str], None]) -> WindowResult:
    """`work()`, again with half the segmentation and embedding batches (down to 1) each time the
    GPU runs out of memory; the smaller batches stay for the rest of the run."""
    from whisper_hpc.engines.memory import is_out_of_memory

    while True:
        try:
            return work()
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            sizes = (pipeline.segmentation_batch_size, pipeline.embedding_batch_size)
            if max(sizes) <= 1:
                # worded so that the runner does not take it for Whisper's own out-of-memory error
                raise RuntimeError("speaker diarization ran out of GPU memory even with batches of 1; "
                                   "diarize on a GPU with more memory, or with --device cpu") from None
            smaller = tuple(max(1, size // 2) for size in sizes)
            pipeline.segmentation_batch_size, pipeline.embedding_batch_size = smaller
            notice(f"speaker diarization ran out of GPU memory; retrying with segmentation and embedding "
                   f"batches of {smaller[0]} and {smaller[1]} (were {sizes[0]} and {sizes[1]})")


class FileDiarization:
    """The diarization of one file, fed window by window."""

    def __init__(self, pipeline, uri: str, counts: SpeakerCounts, notice: Callable[[str], None] | None = None) -> None:
        self.pipeline = pipeline
        self.uri = uri
        self.counts = counts
        self.notice = notice or to_stderr
        self.windows: list[WindowResult] = []

    def add(self, offset: float, samples: np.ndarray) -> None:
        self.windows.append(within_gpu_memory(self.pipeline, lambda: self.window_result(offset, samples), self.notice))

    def window_result(self, offset: float, samples: np.ndarray) -> WindowResult:
        import torch
        from pyannote.audio.utils.signal import binarize

        pipeline = self.pipeline
        audio = {"waveform": torch.from_numpy(samples).unsqueeze(0), "sample_rate": SAMPLE_RATE, "uri": self.uri}
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            segmentations = pipeline.get_segmentations(audio)
            if pipeline._segmentation.model.specifications.powerset:
                binarized = segmentations
            else:
                binarized = binarize(segmentations, onset=pipeline.segmentation.threshold, initial_state=False)
            count = pipeline.speaker_count(binarized, pipeline._segmentation.model.receptive_field, warm_up=(0.0, 0.0))
            embeddings = None
            if np.nanmax(count.data) > 0:
                embeddings = pipeline.get_embeddings(audio, binarized, exclude_overlap=pipeline.embedding_exclude_overlap)
        return WindowResult(offset, segmentations, binarized, count, embeddings)

    def finish(self) -> list[SpeakerTurn]:
        """Cluster the whole file's embeddings, then rebuild each window's turns: SPEAKER_00, ..."""
        from pyannote.audio.pipelines.utils.diarization import set_num_speakers
        from pyannote.core import SlidingWindowFeature

        speaking = [w for w in self.windows if w.embeddings is not None]
        if not speaking:
            return []
        pipeline = self.pipeline
        num_speakers, min_speakers, max_speakers = set_num_speakers(
            self.counts.num_speakers, self.counts.min_speakers, self.counts.max_speakers
        )
        embeddings = np.concatenate([w.embeddings for w in speaking])
        activity = SlidingWindowFeature(
            np.concatenate([w.binarized.data for w in speaking]), speaking[0].binarized.sliding_window
        )
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # pyannote prints hints
            warnings.simplefilter("ignore")
            hard_clusters, _, _ = pipeline.clustering(
                embeddings=embeddings, segmentations=activity, num_clusters=num_speakers,
                min_clusters=min_speakers, max_clusters=max_speakers,
                frames=pipeline._segmentation.model.receptive_field,
            )
        turns: list[SpeakerTurn] = []
        start = 0
        for window in speaking:
            chunks = len(window.embeddings)
            turns += self.window_turns(window, np.array(hard_clusters[start:start + chunks]), max_speakers)
            start += chunks
        return number_speakers(turns)

    def window_turns(self, window: WindowResult, hard_clusters: np.ndarray, max_speakers: float) -> list[SpeakerTurn]:
        pipeline = self.pipeline
        inactive = np.sum(window.binarized.data, axis=1) == 0
        hard_clusters = hard_clusters.astype(np.int64)
        hard_clusters[inactive] = -2
        if hard_clusters.max() < 0:
            return []
        count = window.count
        count.data = np.minimum(count.data, max_speakers).astype(np.int8)
        discrete = pipeline.reconstruct(window.segmentations, hard_clusters, count)
        annotation = pipeline.to_annotation(
            discrete, min_duration_on=0.0, min_duration_off=pipeline.segmentation.min_duration_off
        )
        return [
            SpeakerTurn(round(window.offset + segment.start, 3), round(window.offset + segment.end, 3), f"cluster{label}")
            for segment, _, label in annotation.itertracks(yield_label=True)
        ]


class SpeakerDiarizer:
    """One loaded pipeline for a whole run; `start` begins a file."""

    def __init__(self, directory: Path, device: str = "cpu", device_index: int = 0, threads: int = 0,
                 notice: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.pipeline = load_pipeline(directory, device, device_index, threads)
        self.notice = notice or to_stderr

    def start(self, uri: str, counts: SpeakerCounts) -> FileDiarization:
        return FileDiarization(self.pipeline, uri, counts, self.notice)
