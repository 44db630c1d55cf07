"""How the tasks used what they asked for: CPU efficiency, and memory peak against request.

The advice is what a user can type on the next `resume` or `submit`: "you asked 8G and used
1.2G: --mem 2G would do" (1.5x the peak, rounded up to 512M, or to a whole G past 4G), and a
warning for every task whose peak came within 10 % of its request, or that ran out of memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from whisper_hpc.batch.report.units import GIB, MIB, clock, human_bytes, percent, slurm_memory
from whisper_hpc.batch.slurm import LIVE

HEADROOM = 1.5  # the request advised: this much more than the peak
TIGHT = 0.9  # a peak above this fraction of the request is warned about
SMALL_STEP, LARGE_STEP, STEP_CHANGE = 512 * MIB, GIB, 4 * GIB


@dataclass(frozen=True)
class TaskUse:
    """One task's request and peaks, whatever they were read from (sacct, the samples, the manifest)."""

    label: str
    state: str = ""
    requested_memory_bytes: int | None = None
    peak_memory_bytes: int | None = None
    cpu_seconds: float = 0.0
    allocated_cpu_seconds: float = 0.0
    cpus: int = 0


def suggested_memory(peak_bytes: int) -> int:
    """HEADROOM x the peak, rounded up to 512M steps (whole G steps past 4G); at least 512M."""
    wanted = max(peak_bytes * HEADROOM, SMALL_STEP)
    step = SMALL_STEP if wanted <= STEP_CHANGE else LARGE_STEP
    return int(math.ceil(wanted / step) * step)


@dataclass
class MemoryAdvice:
    requested_bytes: int | None
    peak_bytes: int
    peak_task: str
    suggestion_bytes: int
    warnings: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.warnings

    def lines(self) -> list[str]:
        peak = human_bytes(self.peak_bytes)
        suggestion = slurm_memory(self.suggestion_bytes)
        if self.requested_bytes is None:
            summary = f"peak {peak} ({self.peak_task}); the request is not known: --mem {suggestion} would do"
        elif self.suggestion_bytes < self.requested_bytes:
            summary = f"you asked {human_bytes(self.requested_bytes)} and used {peak}: --mem {suggestion} would do"
        else:
            share = percent(self.peak_bytes / self.requested_bytes)
            summary = f"you asked {human_bytes(self.requested_bytes)} and used {peak} ({share}, {self.peak_task})"
        return [summary, *self.warnings]


def memory_advice(tasks: list[TaskUse]) -> MemoryAdvice | None:
    """The advice over every task whose peak is known; None when none is."""
    measured = [t for t in tasks if t.peak_memory_bytes]
    out_of_memory = [t for t in tasks if t.state == "OUT_OF_MEMORY"]
    if not measured and not out_of_memory:
        return None
    requests = [t.requested_memory_bytes for t in tasks if t.requested_memory_bytes]
    requested = max(requests) if requests else None
    top = max(measured, key=lambda t: t.peak_memory_bytes or 0) if measured else out_of_memory[0]
    peak = top.peak_memory_bytes or 0
    warnings = []
    for task in out_of_memory:
        asked = task.requested_memory_bytes or requested
        more = suggested_memory(2 * asked) if asked else suggested_memory(2 * peak)
        asked_text = f" (it asked {human_bytes(asked)})" if asked else ""
        warnings.append(f"warning: {task.label} ran out of memory{asked_text}: resume with --mem {slurm_memory(more)}")
    for task in measured:
        asked = task.requested_memory_bytes
        if asked and task.peak_memory_bytes > TIGHT * asked and task.state != "OUT_OF_MEMORY":
            warnings.append(f"warning: {task.label} used {human_bytes(task.peak_memory_bytes)} of the "
                            f"{human_bytes(asked)} it asked ({percent(task.peak_memory_bytes / asked)}): "
                            f"ask for --mem {slurm_memory(suggested_memory(task.peak_memory_bytes))}")
    suggestion = suggested_memory(peak) if peak else suggested_memory(2 * (requested or SMALL_STEP))
    return MemoryAdvice(requested, peak, top.label, suggestion, warnings)


@dataclass(frozen=True)
class CpuUse:
    cpu_seconds: float
    allocated_cpu_seconds: float
    tasks: int
    cpus: int  # the most CPUs a task had

    @property
    def efficiency(self) -> float:
        return self.cpu_seconds / self.allocated_cpu_seconds

    def lines(self) -> list[str]:
        lines = [f"efficiency {percent(self.efficiency)} ({clock(self.cpu_seconds)} of CPU time in "
                 f"{clock(self.allocated_cpu_seconds)} allocated, {self.tasks} tasks)"]
        busy = self.efficiency * self.cpus
        if self.cpus > 1 and self.efficiency < 0.5:
            lines.append(f"the tasks kept {busy:.1f} of their {self.cpus} CPUs busy on average: "
                         f"--cpus {max(1, math.ceil(busy))} would do")
        return lines


def cpu_use(tasks: list[TaskUse]) -> CpuUse | None:
    """CPU time against Elapsed x AllocCPUS over the tasks that ended; None when none has (sacct's
    TotalCPU counts only steps that ended: a task still running would read as idle)."""
    ended = [t for t in tasks if t.allocated_cpu_seconds > 0 and t.state not in LIVE]
    if not ended:
        return None
    return CpuUse(sum(t.cpu_seconds for t in ended), sum(t.allocated_cpu_seconds for t in ended), len(ended),
                  max(t.cpus for t in ended))


def task_efficiency(task: TaskUse) -> float | None:
    if task.allocated_cpu_seconds <= 0 or task.state in LIVE:
        return None
    return task.cpu_seconds / task.allocated_cpu_seconds

