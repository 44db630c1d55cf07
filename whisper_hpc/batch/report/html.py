"""The report as one self-contained HTML page.

Everything is inside the file: the style in a <style> element, each figure a PNG in a data: URI.
There is no script, and no URL, font or image outside the page; the page's Content Security
Policy forbids fetching anything, so a browser opening it makes no request at all. Every file
name, reason and path is escaped (html.escape, after status.printable has put it on one line).
"""

from __future__ import annotations

import base64
import html

from whisper_hpc.batch.report.data import BatchReport
from whisper_hpc.batch.report.resources import task_efficiency
from whisper_hpc.batch.report.units import clock, hours, human_bytes, moment, percent
from whisper_hpc.batch.status import printable

POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
MAX_ROWS = 2000  # failures and tasks listed; past this the page says how many more
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #212121; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.meta { color: #555; font-size: 0.9em; word-break: break-all; }
.tiles { display: flex; gap: 1em; flex-wrap: wrap; }
.tile { border-radius: 8px; padding: 0.8em 1.4em; min-width: 8em; background: #f5f5f5; }
.tile .number { display: block; font-size: 2.2em; font-weight: bold; }
.done { background: #e8f5e9; } .failed { background: #ffebee; } .left { background: #e3f2fd; }
table { border-collapse: collapse; width: 100%; font-size: 0.9em; margin: 0.8em 0; }
th, td { text-align: left; padding: 0.25em 0.6em; border-bottom: 1px solid #eee; vertical-align: top; }
#sacct-tasks td { white-space: nowrap; }
td.path { word-break: break-all; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 0.95em; }
td.number, th.number { text-align: right; white-space: nowrap; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
.note { color: #555; font-style: italic; } .warning { color: #b71c1c; font-weight: bold; }
.advice { font-size: 1.1em; } pre { background: #fafafa; border: 1px solid #eee; padding: 1em; overflow-x: auto; }
"""


def esc(text: object) -> str:
    """Any text as HTML: on one line (control characters shown as escapes), then escaped."""
    return html.escape(printable(str(text)), quote=True)


def picture(pictures: dict[str, bytes], key: str, alt: str) -> str:
    data = pictures.get(key)
    if not data:
        return ""
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img id="plot-{esc(key)}" alt="{esc(alt)}" src="data:image/png;base64,{encoded}">'


def size(count: int | None) -> str:
    return human_bytes(count) if count else "-"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>' if text else ""


def files_section(report: BatchReport) -> str:
    counts = report.counts
    tiles = "".join(
        f'<div class="tile {css}"><span class="number" id="count-{key}">{value}</span>{esc(words)}</div>'
        for key, css, value, words in (
            ("done", "done", counts["done"], "done"), ("failed", "failed", counts["failed"], "failed"),
            ("left", "left", report.left, f"left ({counts['running']} running, {counts['pending']} pending)"),
            ("total", "", report.total, "files in the batch"),
        ))
    parts = ['<section id="files"><h2>Files</h2>', f'<div class="tiles">{tiles}</div>']
    if report.failures:
        rows = "".join(f'<tr class="failure"><td class="path">{esc(f.path)}</td><td>{esc(f.reason)}</td></tr>'
                       for f in report.failures[:MAX_ROWS])
        parts.append(f'<table id="failures"><tr><th>Failed file</th><th>Why</th></tr>{rows}</table>')
        if len(report.failures) > MAX_ROWS:
            parts.append(note(f"... and {len(report.failures) - MAX_ROWS} more: whisper-batch status lists them all"))
    parts.append("</section>")
    return "".join(parts)


def times_section(report: BatchReport, pictures: dict[str, bytes]) -> str:
    parts = ['<section id="times"><h2>Time</h2>']
    if report.times:
        parts.append(
            f'<p><span id="audio-hours" data-seconds="{report.audio_seconds:.3f}">{esc(hours(report.audio_seconds))}</span>'
            f' of audio in <span id="wall-hours" data-seconds="{report.wall_seconds:.3f}">{esc(hours(report.wall_seconds))}'
            f'</span> of transcription: real-time factor <span id="rtf">{report.real_time_factor:.2f}</span>'
            f' over <span id="timed-files">{len(report.times)}</span> files.</p>')
        parts.append(picture(pictures, "rtf", "histogram of the real-time factor per file"))
        parts.append(picture(pictures, "slowest", "the slowest files"))
        rows = "".join(
            f'<tr class="slow"><td class="path">{esc(t.path)}</td><td class="number">{t.wall_seconds:.1f} s</td>'
            f'<td class="number">{t.audio_seconds:.1f} s</td><td class="number">{t.real_time_factor:.2f}</td>'
            f'<td>{esc(t.device)}</td></tr>' for t in report.slowest())
        parts.append('<table id="slowest"><tr><th>Slowest files</th><th class="number">wall time</th>'
                     f'<th class="number">audio</th><th class="number">RTF</th><th>device</th></tr>{rows}</table>')
    parts.append(note(report.times_note or ("" if report.times else "no file is done yet")))
    parts.append("</section>")
    return "".join(parts)


def tasks_section(report: BatchReport, pictures: dict[str, bytes]) -> str:
    accounted = report.accounted
    parts = ['<section id="tasks"><h2>Tasks</h2>', note(report.accounting_note)]
    parts.append(picture(pictures, "timeline", "timeline of the array tasks"))
    if accounted:
        rows = []
        for task in accounted[:MAX_ROWS]:
            sacct, use = task.accounting, task.use()
            rows.append(
                f'<tr class="task" data-state="{esc(sacct.state)}"><td>{esc(task.label)}</td><td>{esc(sacct.state)}</td>'
                f'<td>{esc(moment(sacct.start))}</td><td>{esc(moment(sacct.end))}</td>'
                f'<td class="number">{esc(clock(sacct.elapsed_seconds))}</td><td class="number">{sacct.alloc_cpus}</td>'
                f'<td class="number">{esc(percent(task_efficiency(use)))}</td>'
                f'<td class="number">{esc(size(use.peak_memory_bytes))}</td>'
                f'<td class="number">{esc(size(use.requested_memory_bytes))}</td>'
                f'<td>{esc(sacct.nodes)}</td><td class="number">{task.files}</td></tr>')
        parts.append(
            f'<table id="sacct-tasks" data-count="{len(accounted)}"><tr><th>Task</th><th>State</th><th>Start</th>'
            '<th>End</th><th class="number">Elapsed</th><th class="number">CPUs</th><th class="number">CPU efficiency</th>'
            '<th class="number">Memory peak</th><th class="number">Requested</th><th>Node</th>'
            f'<th class="number">Files</th></tr>{"".join(rows)}</table>')
        if len(accounted) > MAX_ROWS:
            parts.append(note(f"... and {len(accounted) - MAX_ROWS} more tasks"))
    parts.append("</section>")
    return "".join(parts)


def resources_section(report: BatchReport, pictures: dict[str, bytes]) -> str:
    parts = ['<section id="resources"><h2>CPU and memory</h2>']
    cpu = report.cpu
    if cpu is not None:
        parts.append(f'<p id="cpu-efficiency" data-efficiency="{cpu.efficiency:.4f}">CPU: '
                     + "<br>".join(esc(line) for line in cpu.lines()) + "</p>")
    elif report.cpu_note:
        parts.append(f'<p id="cpu-efficiency">CPU: {esc(report.cpu_note)}</p>')
    parts.append(picture(pictures, "cpu", "CPU efficiency per task"))
    memory = report.memory
    if memory is not None:
        summary, *warnings = memory.lines()
        parts.append(f'<p class="advice" id="memory-advice">Memory: {esc(summary)}</p>')
        parts.extend(f'<p class="warning">{esc(w)}</p>' for w in warnings)
    elif cpu is None:
        parts.append(note("no task has reported its CPU time or memory yet"))
    parts.append(picture(pictures, "memory", "memory peak against request per task"))
    if report.has_samples:
        parts.append("<h3>Over time</h3>")
        parts.append(picture(pictures, "samples-cpu", "CPU use over time per task"))
        parts.append(picture(pictures, "samples-rss", "memory over time per task"))
    if report.has_gpu:
        parts.append('<h3 id="gpu">GPUs</h3>')
        parts.append(picture(pictures, "gpu-util", "GPU utilisation over time"))
        parts.append(picture(pictures, "gpu-memory", "GPU memory over time"))
    parts.append("</section>")
    return "".join(parts)


def page(report: BatchReport, pictures: dict[str, bytes], summary: str, plots_note: str = "") -> str:
    """The whole page: counts and failures, times, tasks, CPU and memory, and the text summary."""
    jobs = ", ".join(report.job_ids) or "none (ran outside Slurm)"
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>whisper-batch report: {esc(report.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>whisper-batch report of {esc(report.name)}</h1>",
        f'<p class="meta">Model {esc(report.model)}; Slurm job {esc(jobs)}; output folder {esc(report.output_dir)};'
        f" manifest {esc(report.manifest)}; made {esc(moment(report.generated))}.</p>",
        note(plots_note),
        files_section(report), times_section(report, pictures), tasks_section(report, pictures),
        resources_section(report, pictures),
        f'<section id="summary"><h2>Text summary</h2><pre>{html.escape(summary)}</pre></section>',
        "</body></html>\n",
    ])
