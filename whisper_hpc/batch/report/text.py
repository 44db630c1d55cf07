"""The text summary: what a Slurm log (or a terminal) shows of the report, a dozen lines."""

from __future__ import annotations

from collections import Counter

from whisper_hpc.batch.report.data import BatchReport
from whisper_hpc.batch.report.units import clock, hours, moment
from whisper_hpc.batch.status import printable

FAILURES_SHOWN = 20
SLOWEST_SHOWN = 5
WIDTH = 9


def state_counts(states: list[str]) -> str:
    """["COMPLETED", "FAILED", "COMPLETED"] -> "2 COMPLETED, 1 FAILED" (most frequent first)."""
    return ", ".join(f"{count} {state}" for state, count in Counter(states).most_common())


def block(label: str, lines: list[str]) -> list[str]:
    """The first line behind the label, the others indented under it."""
    return [f"{label if i == 0 else '':<{WIDTH}} {line}" for i, line in enumerate(lines)]


def summary(report: BatchReport) -> str:
    jobs = f"job {', '.join(report.job_ids)}" if report.job_ids else "no Slurm job"
    counts = report.counts
    lines = [f"whisper-batch report of {printable(report.name)} ({jobs}; model {printable(report.model)})"]
    lines += block("files", [f"{counts['done']} done, {counts['failed']} failed, {report.left} left "
                             f"({counts['running']} running, {counts['pending']} pending) of {report.total}"])
    if report.failures:
        shown = [f"{printable(f.path)}: {printable(f.reason)}" for f in report.failures[:FAILURES_SHOWN]]
        if len(report.failures) > FAILURES_SHOWN:
            shown.append(f"... and {len(report.failures) - FAILURES_SHOWN} more (whisper-batch status lists them all)")
        lines += block("failed", shown)
    if report.times:
        lines += block("time", [f"{hours(report.audio_seconds)} of audio in {hours(report.wall_seconds)} of "
                                f"transcription: real-time factor {report.real_time_factor:.2f} over "
                                f"{len(report.times)} files"])
        cached = sum(1 for t in report.times if t.cached)
        if cached:
            lines += block("cache", [f"{cached} of {len(report.times)} files were written from the result cache "
                                     "(transcribed before, with the same settings)"])
        lines += block("slowest", [f"{t.wall_seconds:6.1f} s  {printable(t.path)} ({t.audio_seconds:.1f} s of audio, "
                                   f"RTF {t.real_time_factor:.2f})" for t in report.slowest(SLOWEST_SHOWN)])
    if report.times_note:
        lines += block("time" if not report.times else "", [report.times_note])
    lines += block("tasks", task_lines(report))
    cpu = report.cpu
    if cpu is not None or report.cpu_note:
        lines += block("cpu", cpu.lines() if cpu is not None else [report.cpu_note])
    memory = report.memory
    if memory is not None:
        lines += block("memory", memory.lines())
    if report.has_samples:
        sampled = sum(1 for t in report.tasks if t.samples.cpu)
        gpus = "GPU use sampled too" if report.has_gpu else "no GPU"
        lines += block("samples", [f"{sampled} of {len(report.tasks)} tasks sampled CPU and memory over time ({gpus})"])
    return "\n".join(lines) + "\n"


def task_lines(report: BatchReport) -> list[str]:
    accounted = report.accounted
    lines = []
    if accounted:
        states = state_counts([t.state for t in accounted])
        starts = [t.accounting.start for t in accounted if t.accounting.start is not None]
        ends = [t.accounting.end for t in accounted if t.accounting.end is not None]
        span = ""
        if starts and ends:
            span = f"; from {moment(min(starts))} to {moment(max(ends))} ({clock(max(ends) - min(starts))})"
        lines.append(f"{len(accounted)} of {len(report.tasks)} in sacct: {states}{span}")
    if report.accounting_note:
        lines.append(report.accounting_note)
    if not lines:
        lines.append(f"{len(report.tasks)} tasks")
    return lines
