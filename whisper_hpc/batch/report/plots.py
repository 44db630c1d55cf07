"""The report's figures, drawn with matplotlib's Agg renderer into PNG bytes (no display, no pyplot).

Each figure is a Panel: a title and a function that draws on one Axes. The HTML page embeds one
PNG per panel; --png stacks them all in one image. matplotlib is imported only here, and only
when a figure is drawn.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from whisper_hpc.batch.report.data import BatchReport, TaskRun
from whisper_hpc.batch.report.resources import task_efficiency
from whisper_hpc.batch.report.units import GIB, MIB
from whisper_hpc.batch.status import printable

WIDTH_INCHES = 10.0
DPI = 100
MAX_LEGEND = 12
LABEL_LENGTH = 48
STATE_COLOURS = {"COMPLETED": "#2e7d32", "FAILED": "#c62828", "OUT_OF_MEMORY": "#ef6c00", "TIMEOUT": "#f9a825",
                 "CANCELLED": "#757575", "RUNNING": "#1565c0", "PENDING": "#90caf9"}
OTHER_COLOUR = "#6a1b9a"


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    draw: Callable[[object], None]  # draws on a matplotlib Axes
    height: float = 3.2  # inches


def label(text: str) -> str:
    """A name as a plot label: one line, not too long, and no $ that matplotlib would read as maths."""
    text = printable(text)
    if len(text) > LABEL_LENGTH:
        text = text[: LABEL_LENGTH // 2 - 1] + "…" + text[-(LABEL_LENGTH // 2 - 1):]
    return text.replace("$", r"\$")


def memory_scale(values: list[float]) -> tuple[float, str]:
    return (GIB, "GiB") if max(values, default=0) >= GIB else (MIB, "MiB")


def panels(report: BatchReport) -> list[Panel]:
    """The figures the report has data for, in the page's order."""
    found = []
    if report.times:
        found.append(Panel("rtf", "Real-time factor per file (wall time / audio time)", lambda ax: draw_rtf(ax, report)))
        slowest = report.slowest()
        found.append(Panel("slowest", f"The {len(slowest)} slowest files (wall time)",
                           lambda ax: draw_slowest(ax, report), 0.6 + 0.32 * len(slowest)))
    timed = [t for t in report.accounted if t.accounting.start is not None]
    if timed:
        found.append(Panel("timeline", "Array tasks over time (sacct Start to End, by state)",
                           lambda ax: draw_timeline(ax, report, timed), min(12.0, 1.2 + 0.28 * len(timed))))
    if any(task_efficiency(t.use()) is not None for t in report.tasks):
        found.append(Panel("cpu", "CPU efficiency per task (TotalCPU / Elapsed x AllocCPUS)",
                           lambda ax: draw_cpu(ax, report)))
    if any(t.use().peak_memory_bytes for t in report.tasks):
        found.append(Panel("memory", "Memory per task: peak against request", lambda ax: draw_memory(ax, report)))
    if report.has_samples:
        found.append(Panel("samples-cpu", "CPU use over time (100% = one CPU busy)",
                           lambda ax: draw_cpu_samples(ax, report)))
        found.append(Panel("samples-rss", "Memory (RSS) over time", lambda ax: draw_rss_samples(ax, report)))
    if report.has_gpu:
        found.append(Panel("gpu-util", "GPU utilisation over time", lambda ax: draw_gpu(ax, report, memory=False)))
        found.append(Panel("gpu-memory", "GPU memory over time (dashed: the GPU's total)",
                           lambda ax: draw_gpu(ax, report, memory=True)))
    return found


def draw_rtf(ax, report: BatchReport) -> None:
    factors = [t.real_time_factor for t in report.times]
    from matplotlib.ticker import MaxNLocator

    ax.hist(factors, bins=min(30, max(5, len(factors) // 2)), color="#1565c0", edgecolor="white")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axvline(report.real_time_factor, color="#c62828", linestyle="--",
               label=f"whole batch: {report.real_time_factor:.2f}")
    ax.set_xlabel("real-time factor (below 1: faster than the audio plays)")
    ax.set_ylabel("files")
    ax.legend(loc="upper right")


def draw_slowest(ax, report: BatchReport) -> None:
    slowest = list(reversed(report.slowest()))
    positions = range(len(slowest))
    ax.barh(positions, [t.wall_seconds for t in slowest], color="#1565c0")
    ax.set_yticks(list(positions), [label(Path(t.path).name) for t in slowest])
    for position, item in zip(positions, slowest):
        ax.text(item.wall_seconds, position, f"  RTF {item.real_time_factor:.2f}", va="center", fontsize=8)
    ax.set_xlabel("wall time (s)")
    ax.margins(x=0.15)


def time_unit(span_seconds: float) -> tuple[float, str]:
    """The unit a time axis reads best in: seconds for a short batch, minutes, or hours."""
    if span_seconds < 180:
        return 1.0, "seconds"
    return (60.0, "minutes") if span_seconds < 3 * 3600 else (3600.0, "hours")


def relative(moments: list[float], start: float, unit: float) -> list[float]:
    return [(m - start) / unit for m in moments]


def draw_timeline(ax, report: BatchReport, timed: list[TaskRun]) -> None:
    import time

    start = min(t.accounting.start for t in timed)
    ends = {id(t): t.accounting.end if t.accounting.end is not None else max(time.time(), t.accounting.start)
            for t in timed}
    unit, unit_name = time_unit(max(ends.values()) - start)
    seen: dict[str, object] = {}
    for position, task in enumerate(timed):
        sacct = task.accounting
        colour = STATE_COLOURS.get(sacct.state, OTHER_COLOUR)
        bar = ax.barh(position, (ends[id(task)] - sacct.start) / unit, left=(sacct.start - start) / unit, color=colour,
                      height=0.7)
        seen.setdefault(sacct.state, bar)
    ax.set_yticks(range(len(timed)), [label(t.label) for t in timed] if len(timed) <= 60 else [""] * len(timed))
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit_name} since the first task started")
    ax.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)


def draw_cpu(ax, report: BatchReport) -> None:
    measured = [(t, task_efficiency(t.use())) for t in report.tasks]
    measured = [(t, e) for t, e in measured if e is not None]
    positions = range(len(measured))
    ax.bar(positions, [e * 100 for _, e in measured], color="#2e7d32")
    ax.axhline(100, color="#757575", linestyle="--", linewidth=1)
    ax.set_xticks(list(positions), [label(t.label) for t, _ in measured] if len(measured) <= 40 else [""] * len(measured),
                  rotation=90 if len(measured) > 10 else 0, fontsize=8)
    ax.set_ylabel("% of the allocated CPU time")


def draw_memory(ax, report: BatchReport) -> None:
    uses = [t.use() for t in report.tasks if t.use().peak_memory_bytes]
    scale, unit = memory_scale([u.requested_memory_bytes or 0 for u in uses] + [u.peak_memory_bytes for u in uses])
    positions = list(range(len(uses)))
    ax.bar([p - 0.2 for p in positions], [(u.requested_memory_bytes or 0) / scale for u in uses], width=0.4,
           color="#bbdefb", label="requested")
    ax.bar([p + 0.2 for p in positions], [u.peak_memory_bytes / scale for u in uses], width=0.4, color="#1565c0",
           label="peak")
    ax.set_xticks(positions, [label(u.label) for u in uses] if len(uses) <= 40 else [""] * len(uses),
                  rotation=90 if len(uses) > 10 else 0, fontsize=8)
    ax.set_ylabel(unit)
    ax.legend(loc="upper right")


def sample_span(report: BatchReport) -> tuple[float, float, str]:
    """(the first sample's time, the axis unit, its name)."""
    moments = [s.time for t in report.tasks for s in t.samples.cpu] + [s.time for t in report.tasks for s in t.samples.gpu]
    unit, name = time_unit(max(moments) - min(moments))
    return min(moments), unit, name


def draw_cpu_samples(ax, report: BatchReport) -> None:
    start, unit, unit_name = sample_span(report)
    sampled = [t for t in report.tasks if t.samples.cpu]
    for task in sampled:
        cpu = sorted(task.samples.cpu, key=lambda s: s.time)
        ax.plot(relative([s.time for s in cpu], start, unit), [s.cpu_percent for s in cpu], label=label(task.label))
    finish(ax, len(sampled), "CPU %", unit_name)


def draw_rss_samples(ax, report: BatchReport) -> None:
    start, unit, unit_name = sample_span(report)
    sampled = [t for t in report.tasks if t.samples.cpu]
    scale, memory_unit = memory_scale([s.rss_bytes for t in sampled for s in t.samples.cpu])
    for task in sampled:
        cpu = sorted(task.samples.cpu, key=lambda s: s.time)
        ax.plot(relative([s.time for s in cpu], start, unit), [s.rss_bytes / scale for s in cpu], label=label(task.label))
    finish(ax, len(sampled), memory_unit, unit_name)


def draw_gpu(ax, report: BatchReport, memory: bool) -> None:
    start, unit, unit_name = sample_span(report)
    series = 0
    every = [s for t in report.tasks for s in t.samples.gpu]
    scale, memory_unit = memory_scale([s.memory_total_bytes or s.memory_used_bytes for s in every])
    for task in report.tasks:
        for gpu in sorted({s.gpu for s in task.samples.gpu}):
            rows = sorted((s for s in task.samples.gpu if s.gpu == gpu), key=lambda s: s.time)
            moments = relative([s.time for s in rows], start, unit)
            name = label(f"{task.label} GPU {gpu}")
            if memory:
                line, = ax.plot(moments, [s.memory_used_bytes / scale for s in rows], label=name)
                if any(s.memory_total_bytes for s in rows):
                    ax.plot(moments, [s.memory_total_bytes / scale for s in rows], linestyle="--", color=line.get_color())
            else:
                ax.plot(moments, [s.util_percent for s in rows], label=name)
            series += 1
    finish(ax, series, memory_unit if memory else "GPU utilisation %", unit_name)


def finish(ax, series: int, ylabel: str, unit_name: str) -> None:
    ax.set_xlabel(f"{unit_name} since the first sample")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    if 0 < series <= MAX_LEGEND:
        ax.legend(loc="upper right", fontsize=8)


def matplotlib_figure(height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a glyph missing from the font (a CJK file name) is drawn as a box
        figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def panel_png(panel: Panel) -> bytes:
    figure = matplotlib_figure(panel.height)
    ax = figure.add_subplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        panel.draw(ax)
    ax.set_title(panel.title, loc="left", fontsize=11)
    return png_bytes(figure)


def pictures(report: BatchReport) -> dict[str, bytes]:
    """Every panel of the report as PNG bytes, by key."""
    return {panel.key: panel_png(panel) for panel in panels(report)}


def sheet_png(report: BatchReport) -> bytes:
    """All the panels stacked in one PNG (--png), with the batch's name on top."""
    found = panels(report)
    figure = matplotlib_figure(0.6 + sum(p.height for p in found) if found else 2.0)
    figure.suptitle(f"whisper-batch report of {report.name}", x=0.01, ha="left")
    if not found:
        figure.text(0.5, 0.5, "nothing to plot yet: no transcript times, accounting or samples", ha="center")
        return png_bytes(figure)
    axes = figure.subplots(len(found), 1, squeeze=False, height_ratios=[p.height for p in found])[:, 0]
    for panel, ax in zip(found, axes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            panel.draw(ax)
        ax.set_title(panel.title, loc="left", fontsize=11)
    return png_bytes(figure)
