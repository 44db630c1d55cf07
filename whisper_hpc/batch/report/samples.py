"""The tasks' resource samples as the report plots them: CPU and memory per sample, GPUs apart.

The file (work_dir/samples-S-T.tsv) is written and read by whisper_hpc.batch.sampler; a file
still being appended to gives its whole rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from whisper_hpc.batch.sampler import Sample, parse_samples, read_samples


@dataclass(frozen=True)
class CpuSample:
    time: float  # seconds since the epoch
    cpu_percent: float  # of one CPU: 200 is two CPUs busy
    rss_bytes: int


@dataclass(frozen=True)
class GpuSample:
    time: float
    gpu: int
    util_percent: float
    memory_used_bytes: int
    memory_total_bytes: int


@dataclass
class TaskSamples:
    cpu: list[CpuSample] = field(default_factory=list)
    gpu: list[GpuSample] = field(default_factory=list)

    @property
    def peak_rss_bytes(self) -> int | None:
        return max((s.rss_bytes for s in self.cpu), default=None)

    def __bool__(self) -> bool:
        return bool(self.cpu or self.gpu)


def task_samples(rows: list[Sample]) -> TaskSamples:
    """The sampler's rows split: one CPU sample per time (a row per GPU repeats it), the GPU rows."""
    samples = TaskSamples()
    seen_times: set[float] = set()
    for row in rows:
        if row.time not in seen_times:
            seen_times.add(row.time)
            samples.cpu.append(CpuSample(row.time, row.cpu_percent, row.rss_bytes))
        if row.gpu is not None and row.gpu_util_percent is not None and row.gpu_memory_used_bytes is not None:
            samples.gpu.append(GpuSample(row.time, row.gpu, row.gpu_util_percent, row.gpu_memory_used_bytes,
                                         row.gpu_memory_total_bytes or 0))
    return samples


def samples_from_text(text: str) -> TaskSamples:
    return task_samples(parse_samples(text))


def read_samples_file(path: Path) -> TaskSamples:
    """The samples of one task; none when the file is missing, unreadable, not a file or too large."""
    return task_samples(read_samples(path))
