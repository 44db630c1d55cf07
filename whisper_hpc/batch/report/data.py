"""Everything the report shows, gathered once into a BatchReport.

Sources: the manifest and the file states (whisper_hpc.batch.status), each done file's json
transcript (audio `duration`, `wall_time`, `model`, `device`), sacct's accounting of each job
(slurm.job_accounting) and the tasks' resource samples (samples.py). A source that is missing
(no json format, no sacct, no samples) leaves its part of the report empty, and says why.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from whisper_hpc.batch import slurm
from whisper_hpc.batch.manifest import Manifest, Submission
from whisper_hpc.batch.report.resources import CpuUse, MemoryAdvice, TaskUse, cpu_use, memory_advice
from whisper_hpc.batch.report.samples import TaskSamples, read_samples_file
from whisper_hpc.batch.slurm import TaskAccounting
from whisper_hpc.batch.status import FileStatus, counts, file_statuses
from whisper_hpc.files import NotARegularFile, read_regular_file

MAX_TRANSCRIPT_BYTES = 256 << 20
SLOWEST = 10


@dataclass(frozen=True)
class FileTime:
    """How long one done file took, from its json transcript(s)."""

    index: int
    path: str
    audio_seconds: float
    wall_seconds: float
    model: str = ""
    device: str = ""
    cached: bool = False  # written from the result cache (whisper_hpc.result_cache)

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0


@dataclass(frozen=True)
class Failure:
    index: int
    path: str
    reason: str


@dataclass
class TaskRun:
    """One array task, or one `run` submission (its chunks share one allocation): what it was
    asked for, and what sacct and the samples say it used."""

    submission: int
    task: int | None  # None: a `run` submission
    label: str
    job_id: str | None
    files: int
    accounting: TaskAccounting | None = None
    samples: TaskSamples = field(default_factory=TaskSamples)
    requested_memory_bytes: int | None = None  # from the manifest; sacct's ReqMem wins

    @property
    def state(self) -> str:
        return self.accounting.state if self.accounting else ""

    def use(self) -> TaskUse:
        sacct = self.accounting
        peak = (sacct.max_rss_bytes if sacct else None) or self.samples.peak_rss_bytes
        request = (sacct.requested_memory_bytes if sacct else None) or self.requested_memory_bytes
        if sacct is None:
            return TaskUse(self.label, "", request, peak)
        return TaskUse(self.label, sacct.state, request, peak, sacct.total_cpu_seconds, sacct.allocated_cpu_seconds,
                       sacct.alloc_cpus)


@dataclass
class BatchReport:
    manifest: str
    name: str
    output_dir: str
    model: str
    job_ids: list[str]
    counts: dict[str, int]
    failures: list[Failure]
    times: list[FileTime]
    tasks: list[TaskRun]
    accounting_note: str = ""  # why sacct's accounting is missing ("" when it is there)
    times_note: str = ""  # why per-file times are missing
    generated: float = field(default_factory=time.time)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def left(self) -> int:
        return self.counts["pending"] + self.counts["running"]

    @property
    def audio_seconds(self) -> float:
        return sum(t.audio_seconds for t in self.times)

    @property
    def wall_seconds(self) -> float:
        return sum(t.wall_seconds for t in self.times)

    @property
    def real_time_factor(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    def slowest(self, count: int = SLOWEST) -> list[FileTime]:
        return sorted(self.times, key=lambda t: (-t.wall_seconds, t.index))[:count]

    @property
    def accounted(self) -> list[TaskRun]:
        return [t for t in self.tasks if t.accounting is not None]

    @property
    def has_samples(self) -> bool:
        return any(t.samples.cpu for t in self.tasks)

    @property
    def has_gpu(self) -> bool:
        return any(t.samples.gpu for t in self.tasks)

    @property
    def memory(self) -> MemoryAdvice | None:
        return memory_advice([t.use() for t in self.tasks])

    @property
    def cpu(self) -> CpuUse | None:
        return cpu_use([t.use() for t in self.tasks])

    @property
    def cpu_note(self) -> str:
        """Why there is no CPU efficiency while sacct knows tasks ("" when there is one, or no task)."""
        if self.cpu is not None or not self.accounted:
            return ""
        if any(t.state in slurm.LIVE for t in self.accounted):
            return "not known yet: sacct counts a task's CPU time when the task ends"
        return "not known: no task in sacct ran"


def number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def read_transcript(path: Path) -> dict | None:
    try:
        data = json.loads(read_regular_file(path, limit=MAX_TRANSCRIPT_BYTES).decode("utf-8"))
    except (OSError, NotARegularFile, ValueError):
        return None
    return data if isinstance(data, dict) else None


def transcript_paths(manifest: Manifest, index: int) -> list[Path]:
    """The json transcripts of a file: one per channel when channels were split and written so, else one."""
    job = manifest.entries[index].job()
    if manifest.split_channels:
        channels = [job.outputs(("json",), channel)[0] for channel in ("left", "right")]
        if all(p.exists() for p in channels):
            return channels
    return job.outputs(("json",))


def file_time(manifest: Manifest, index: int) -> FileTime | None:
    """The file's audio and wall seconds (channels: the longer audio, the summed wall time);
    None without a readable json transcript that holds them."""
    found = [read_transcript(p) for p in transcript_paths(manifest, index)]
    if not found or any(t is None for t in found):
        return None
    durations = [number(t.get("duration")) for t in found]
    walls = [number(t.get("wall_time")) for t in found]
    if None in durations or None in walls:
        return None
    first = found[0]
    cache = first.get("cache")
    return FileTime(index, manifest.entries[index].path, max(durations), sum(walls),
                    str(first.get("model") or ""), str(first.get("device") or ""),
                    isinstance(cache, dict) and cache.get("hit") is True)


def requested_memory(submission: Submission) -> int | None:
    """The --mem the manifest recorded for a submission, in bytes."""
    from whisper_hpc.sizing import parse_memory

    try:
        return parse_memory(str(submission.resources["memory"])) << 20
    except (KeyError, ValueError, TypeError):
        return None


def merged_samples(manifest: Manifest, submission: int, tasks: range) -> TaskSamples:
    merged = TaskSamples()
    for task in tasks:
        samples = read_samples_file(manifest.samples_path(submission, task))
        merged.cpu.extend(samples.cpu)
        merged.gpu.extend(samples.gpu)
    return merged


def task_runs(manifest: Manifest, accounting: dict[tuple[str, int | None], TaskAccounting]) -> list[TaskRun]:
    several = sum(1 for s in manifest.submissions if s.kind == "array") > 1
    runs = []
    for submission in manifest.submissions:
        request = requested_memory(submission)
        job = submission.job_id
        if submission.kind == "run":
            label = f"run {submission.number}" + (f" (job {job})" if job else "")
            runs.append(TaskRun(submission.number, None, label, job, sum(map(len, submission.tasks)),
                                accounting.get((job, None)) if job else None,
                                merged_samples(manifest, submission.number, range(len(submission.tasks))), request))
            continue
        for task, indices in enumerate(submission.tasks):
            label = f"task {submission.number}.{task}" if several else f"task {task}"
            runs.append(TaskRun(submission.number, task, label, job, len(indices),
                                accounting.get((job, task)) if job else None,
                                read_samples_file(manifest.samples_path(submission.number, task)), request))
    return runs


def accounting_of_jobs(job_ids: list[str], query: Callable[[str], list[TaskAccounting]]
                       ) -> tuple[dict[tuple[str, int | None], TaskAccounting], str]:
    """Every job's tasks by (job id, index), and why some are missing ("" when none is)."""
    if not job_ids:
        return {}, "accounting was not available: the batch ran outside Slurm (no job id)"
    found: dict[tuple[str, int | None], TaskAccounting] = {}
    missing = []
    for job_id in job_ids:
        tasks = query(job_id)
        if not tasks:
            missing.append(job_id)
        found.update({(job_id, t.task): t for t in tasks})
    if not missing:
        return found, ""
    if not slurm.available("sacct") and not found:
        return found, "accounting was not available: sacct is not installed here"
    return found, (f"accounting was not available for job {', '.join(missing)}: sacct gave no record of it "
                   "(accounting is off, sacct failed, or the job is older than the accounting keeps)")


def gather(manifest: Manifest, statuses: list[FileStatus] | None = None,
           accounting_of: Callable[[str], list[TaskAccounting]] = slurm.job_accounting) -> BatchReport:
    """The report of a batch, from what its manifest, transcripts, sacct and samples hold now."""
    statuses = file_statuses(manifest) if statuses is None else statuses
    job_ids = list(dict.fromkeys(s.job_id for s in manifest.submissions if s.job_id))
    accounting, accounting_note = accounting_of_jobs(job_ids, accounting_of)
    done = [s.index for s in statuses if s.state == "done"]
    times = [t for t in (file_time(manifest, index) for index in done) if t is not None]
    times_note = ""
    if len(times) < len(done):
        times_note = (f"{len(done) - len(times)} done files have no readable json transcript with their times"
                      + ("; per-file times come from the json transcripts (add json to --output_format)"
                         if "json" not in manifest.formats else ""))
    return BatchReport(
        manifest=str(manifest.path), name=manifest.name, output_dir=manifest.output_dir, model=manifest.model,
        job_ids=job_ids, counts=counts(statuses),
        failures=[Failure(s.index, s.path, s.detail) for s in statuses if s.state == "failed"],
        times=times, tasks=task_runs(manifest, accounting), accounting_note=accounting_note, times_note=times_note,
    )
