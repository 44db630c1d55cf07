"""`whisper-batch report`: sacct's accounting parsed, the memory advice, the samples read, a report
built from a batch written here, and one real batch on the private Slurm cluster whose report
matches the manifest and sacct and renders in a headless browser with no network.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from cluster_fixtures import slurm_cluster  # noqa: F401  (pytest fixture)
from conftest import BIN, need
from test_batch import batch, submitted  # noqa: F401  (`batch` is a pytest fixture)
from whisper_hpc.batch import slurm
from whisper_hpc.batch.manifest import Manifest, TaskResult, manifest_path, write_result
from whisper_hpc.batch.report import data, html as report_html, plots, text
from whisper_hpc.batch.report.resources import TaskUse, cpu_use, memory_advice, suggested_memory, task_efficiency
from whisper_hpc.batch.sampler import HEADER
from whisper_hpc.batch.report.samples import read_samples_file, samples_from_text
from whisper_hpc.batch.report.units import GIB, MIB, human_bytes
from whisper_hpc.batch.selection import Entry
from whisper_hpc.batch.status import file_statuses

SEP = slurm.FIELD_SEPARATOR
HOSTILE = '<script>alert(1)</script> "x" $(touch y).wav'


def sacct_lines(*rows: tuple[str, ...]) -> str:
    """Lines as `sacct -n -P --delimiter=\\x1f -o JobID,State,Start,End,Elapsed,AllocCPUS,TotalCPU,MaxRSS,ReqMem,NodeList` prints them."""
    return "".join(SEP.join(row) + "\n" for row in rows)


# An array of 4 tasks as Slurm 22.05 reported it on the test cluster, plus what other Slurm
# versions and states look like: an .extern and a .0 step, an out-of-memory task, "CANCELLED by 0",
# never-started tasks folded into one range, another job's line, and a line cut short.
ARRAY = sacct_lines(
    ("77_0", "COMPLETED", "2026-12-02T15:14:42", "2026-12-02T15:14:50", "00:00:08", "2", "00:01.378", "", "700M", "wh33045"),
    ("77_0.batch", "COMPLETED", "2026-12-02T15:14:42", "2026-12-02T15:14:50", "00:00:08", "2", "00:01.378", "221380K", "", "wh33045"),
    ("77_0.extern", "COMPLETED", "2026-12-02T15:14:42", "2026-12-02T15:14:50", "00:00:08", "2", "00:00:00", "1024K", "", "wh33045"),
    ("77_1", "OUT_OF_MEMORY", "2026-12-02T15:14:42", "2026-12-02T15:16:50", "00:02:08", "2", "03:10.250", "", "4Gn", "wh33045"),
    ("77_1.batch", "OUT_OF_MEMORY", "2026-12-02T15:14:42", "2026-12-02T15:16:50", "00:02:08", "2", "03:00.100", "4.01G", "", "wh33045"),
    ("77_1.0", "COMPLETED", "2026-12-02T15:14:43", "2026-12-02T15:16:40", "00:01:57", "2", "00:10.150", "3900M", "", "wh33045"),
    ("77_[2-3%2]", "CANCELLED by 0", "None", "2026-12-02T15:17:00", "00:00:00", "2", "00:00:00", "", "1Gc", "None assigned"),
    ("78_0", "COMPLETED", "2026-12-02T15:14:42", "2026-12-02T15:14:50", "00:00:08", "2", "00:01.000", "", "700M", "wh33045"),
) + "77_4\x1fRUNNING\x1f2026-12-02T15:1"


# ---- sacct's answers -----------------------------------------------------------------------------

@pytest.mark.parametrize("written, seconds", [
    ("00:00:08", 8), ("1-02:03:04", 93784), ("00:01.378", 1.378), ("12:34.500", 754.5), ("2-00:00:00", 172800),
    ("59", 59), ("", None), ("Unknown", None), ("INVALID", None),
])
def test_sacct_durations(written, seconds):
    parsed = slurm.parse_duration(written)
    assert parsed == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("written, cpus, size", [
    ("221380K", 1, 221380 * 1024), ("4G", 1, 4 << 30), ("4000M", 1, 4000 << 20), ("4Gn", 1, 4 << 30),
    ("4Gc", 2, 8 << 30), ("1.50G", 1, int(1.5 * (1 << 30))), ("0", 1, 0), ("1T", 1, 1 << 40), ("", 1, None),
    ("lots", 1, None),
])
def test_sacct_memory(written, cpus, size):
    assert slurm.parse_accounted_memory(written, cpus) == size


def test_sacct_start_and_end():
    assert slurm.parse_timestamp("2026-12-02T15:14:42") == datetime(2026, 12, 2, 15, 14, 42).timestamp()
    assert slurm.parse_timestamp("Unknown") is None and slurm.parse_timestamp("None") is None


def efficiency(task: slurm.TaskAccounting) -> float | None:
    """The report's CPU efficiency of one accounted task (resources.task_efficiency)."""
    return task_efficiency(TaskUse("t", task.state, cpu_seconds=task.total_cpu_seconds,
                                   allocated_cpu_seconds=task.allocated_cpu_seconds, cpus=task.alloc_cpus))


def test_sacct_steps_fold_into_their_task():
    tasks = {t.task: t for t in slurm.parse_accounting(ARRAY, "77")}
    assert sorted(tasks) == [0, 1, 2, 3], "other jobs and a line cut short are left out"
    first = tasks[0]
    assert (first.state, first.alloc_cpus, first.nodes) == ("COMPLETED", 2, "wh33045")
    assert first.elapsed_seconds == 8 and first.total_cpu_seconds == pytest.approx(1.378)
    assert first.max_rss_bytes == 221380 * 1024, "the largest step's peak"
    assert first.requested_memory_bytes == 700 << 20
    assert efficiency(first) == pytest.approx(1.378 / 16)
    assert first.start == datetime(2026, 12, 2, 15, 14, 42).timestamp()
    oom = tasks[1]
    assert oom.state == "OUT_OF_MEMORY" and oom.max_rss_bytes == int(4.01 * (1 << 30))
    assert oom.total_cpu_seconds == pytest.approx(190.25), "the task's own TotalCPU, not one step's"
    for never in (tasks[2], tasks[3]):
        assert never.state == "CANCELLED" and never.start is None and never.nodes == ""
        assert never.requested_memory_bytes == 2 << 30, "1G per CPU, 2 CPUs"
        assert efficiency(never) is None


def test_a_job_that_is_not_an_array_is_one_task():
    lines = sacct_lines(
        ("90", "RUNNING", "2026-12-02T15:14:42", "Unknown", "00:05:00", "4", "00:00:00", "", "8G", "n1"),
        ("90.batch", "RUNNING", "2026-12-02T15:14:42", "Unknown", "00:05:00", "4", "00:00:00", "", "", "n1"),
    )
    [task] = slurm.parse_accounting(lines, "90")
    assert task.task is None and task.state == "RUNNING" and task.end is None and task.max_rss_bytes is None
    use = TaskUse("run 1", task.state, task.requested_memory_bytes, None, task.total_cpu_seconds,
                  task.allocated_cpu_seconds, task.alloc_cpus)
    assert cpu_use([use]) is None, "TotalCPU is 0 until the task ends: no efficiency for a task still running"


def fake_slurm_commands(folder: Path, exit_status: int) -> Path:
    """sacct and squeue that answer like a Slurm without a controller (or, exit 0, with nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("sacct", "squeue"):
        program = folder / name
        program.write_text(f"#!/bin/sh\necho '{name}: error: Problem talking to the database' >&2\nexit {exit_status}\n")
        program.chmod(0o755)
    return folder


def test_no_sacct_or_a_failing_one_gives_no_accounting(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert slurm.job_accounting("77") == []
    monkeypatch.setenv("PATH", str(fake_slurm_commands(tmp_path / "failing", 1)))
    assert slurm.job_accounting("77") == []


# ---- the advice, the samples -----------------------------------------------------------------------

@pytest.mark.parametrize("peak, advised", [
    (int(1.2 * GIB), 2 * GIB), (100 * MIB, 512 * MIB), (700 * MIB, 1536 * MIB), (3 * GIB, 5 * GIB), (10 * GIB, 15 * GIB),
])
def test_suggested_memory_leaves_headroom_in_whole_steps(peak, advised):
    assert suggested_memory(peak) == advised
    assert suggested_memory(peak) >= 1.5 * peak


def test_memory_advice_says_what_to_ask_for():
    advice = memory_advice([TaskUse("task 0", "COMPLETED", 8 * GIB, int(1.2 * GIB)),
                            TaskUse("task 1", "COMPLETED", 8 * GIB, 900 * MIB)])
    assert advice.lines() == ["you asked 8G and used 1.2G: --mem 2G would do"]
    tight = memory_advice([TaskUse("task 0", "COMPLETED", 1 * GIB, 950 * MIB), TaskUse("task 1", "COMPLETED", 1 * GIB, 100 * MIB)])
    summary, warning = tight.lines()
    assert summary.startswith("you asked 1G and used 950M (93%") and "would do" not in summary
    assert warning == "warning: task 0 used 950M of the 1G it asked (93%): ask for --mem 1536M"
    oom = memory_advice([TaskUse("task 3", "OUT_OF_MEMORY", 2 * GIB, 2 * GIB)])
    assert "warning: task 3 ran out of memory (it asked 2G): resume with --mem 6G" in oom.lines()
    assert memory_advice([TaskUse("task 0", "PENDING")]) is None


def test_samples_reader_takes_what_is_whole_and_skips_the_rest(tmp_path):
    rows = "".join(f"{1000 + i}.5\t{120 + i}\t{(400 + i) << 20}\t\t\t\t\n" for i in range(5))
    text_of_file = HEADER + rows + "garbage\n\n1010\tNaN\t5\t\t\t\t\n1011\t-3\t5\t\t\t\t\n1012\t50\t7"
    samples = samples_from_text(text_of_file)
    assert [s.time for s in samples.cpu] == [1000.5 + i for i in range(5)], "the cut-short last line and garbage are left out"
    assert samples.peak_rss_bytes == 404 << 20 and samples.gpu == []
    gpus = HEADER + "".join(f"{2000 + i}\t90\t{1 << 30}\t{g}\t{50 + g}\t{(g + 1) << 30}\t{16 << 30}\n"
                            for i in range(3) for g in (0, 1))
    with_gpus = samples_from_text(gpus)
    assert len(with_gpus.cpu) == 3, "one GPU row per GPU repeats the CPU sample: counted once"
    assert [(s.gpu, s.util_percent, s.memory_used_bytes) for s in with_gpus.gpu[:2]] == [(0, 50, 1 << 30), (1, 51, 2 << 30)]
    assert samples_from_text("1\t2\t3\n") == samples_from_text("") == samples_from_text(HEADER)
    assert not read_samples_file(tmp_path / "missing.tsv")
    fifo = tmp_path / "fifo.tsv"
    os.mkfifo(fifo)
    assert not read_samples_file(fifo), "a FIFO in its place is not opened for reading"


# ---- a report from a batch written here ------------------------------------------------------------

SYNTHETIC_SACCT = sacct_lines(
    ("4242_0", "COMPLETED", "2025-01-01T10:00:00", "2025-01-01T10:01:40", "00:01:40", "2", "02:30.500", "", "8G", "node1"),
    ("4242_0.batch", "COMPLETED", "2025-01-01T10:00:00", "2025-01-01T10:01:40", "00:01:40", "2", "02:30.500", "1258291K", "", "node1"),
    ("4242_1", "FAILED", "2025-01-01T10:00:01", "2025-01-01T10:00:31", "00:00:30", "2", "00:20.000", "", "8G", "node1"),
    ("4242_1.batch", "FAILED", "2025-01-01T10:00:01", "2025-01-01T10:00:31", "00:00:30", "2", "00:20.000", "700M", "", "node1"),
    ("4242_2", "CANCELLED by 0", "None", "2025-01-01T10:02:00", "00:00:00", "2", "00:00:00", "", "8G", "None assigned"),
)
# (file name, audio seconds, wall seconds or None when the file is not done), in manifest order
SYNTHETIC_FILES = [("a.wav", 11.0, 2.5), ("long b.flac", 30.0, 9.0), ("ünï\ncödé.mp3", 5.0, 1.0),
                   (HOSTILE, 4.0, None), ("later.wav", 7.0, None)]
FAILURE = "not an audio or video file <img src=x onerror=alert(2)>; convert it"


def synthetic_batch(root: Path) -> Manifest:
    """Five files in three tasks of job 4242: three done (json transcripts), one failed, one left."""
    out = root / "out"
    entries = []
    for name, audio, wall in SYNTHETIC_FILES:
        base = out / Path(name).stem
        entries.append(Entry(str(root / "in" / name), str(base.parent), str(base), duration=audio))
        if wall is not None:
            base.parent.mkdir(parents=True, exist_ok=True)
            Path(f"{base}.txt").write_text("words", encoding="utf-8")
            cache = {"cache": {"hit": True, "key": "0" * 64}} if name == "a.wav" else {}
            Path(f"{base}.json").write_text(json.dumps({"text": "words", "duration": audio, "wall_time": wall,
                                                        "model": "tiny.en", "device": "cpu", **cache}), encoding="utf-8")
    name = "20250101-100000-abcdef"
    manifest = Manifest(path=manifest_path(out, name), name=name, output_dir=str(out), engine_args=["--model", "tiny.en"],
                        formats=["txt", "json"], split_channels=False, overwrite=False, model="tiny.en", entries=entries)
    submission = manifest.add_submission("array", [[0, 1], [2, 3], [4]], {"memory": "8G", "cpus": 2})
    submission.job_id = "4242"
    manifest.save()
    write_result(manifest.result_path(1, 0), TaskResult(1, 0, state="finished"))
    write_result(manifest.result_path(1, 1), TaskResult(1, 1, state="finished", errors={"3": FAILURE}))
    manifest.samples_path(1, 0).write_text(
        HEADER + "".join(f"{1000 + 5 * i}\t{150 + i}\t{(500 + 20 * i) << 20}\t\t\t\t\n" for i in range(20)) + "1100\t1")
    manifest.samples_path(1, 1).write_text(HEADER + "".join(
        f"{1002 + 5 * i}\t90\t{700 << 20}\t{g}\t{40 + i}\t{(2000 + i) << 20}\t{16 << 30}\n" for i in range(20) for g in (0, 1)))
    return Manifest.load(manifest.path)


def synthetic_report(manifest: Manifest) -> data.BatchReport:
    statuses = file_statuses(manifest, states_of=lambda job: slurm.parse_states(SYNTHETIC_SACCT, job, SEP))
    return data.gather(manifest, statuses, accounting_of=lambda job: slurm.parse_accounting(SYNTHETIC_SACCT, job))


def element(page: str, identifier: str) -> str:
    match = re.search(rf'id="{identifier}"[^>]*>([^<]*)<', page)
    assert match, f"no element {identifier}"
    return match.group(1)


def attribute(page: str, identifier: str, name: str) -> str:
    match = re.search(rf'id="{identifier}"[^>]*\b{name}="([^"]*)"', page)
    assert match, f"no {name} on {identifier}"
    return match.group(1)


def assert_self_contained(page: str) -> None:
    """No script, no stylesheet or font fetched, no image but data: URIs, no URL at all."""
    lowered = page.lower()
    for forbidden in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "url(", "http:", "https:", "//cdn"):
        assert forbidden not in lowered, forbidden
    sources = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), [s[:40] for s in sources]


def test_report_of_a_synthetic_batch_counts_times_and_escapes(tmp_path):
    manifest = synthetic_batch(tmp_path)
    report = synthetic_report(manifest)
    done = [(name, audio, wall) for name, audio, wall in SYNTHETIC_FILES if wall is not None]
    assert report.counts == {"done": len(done), "failed": 1, "running": 0, "pending": 1}
    assert report.left == 1 and report.total == len(SYNTHETIC_FILES)
    assert [(f.path, f.reason) for f in report.failures] == [(str(tmp_path / "in" / HOSTILE), FAILURE)]
    assert report.audio_seconds == sum(a for _, a, _ in done) and report.wall_seconds == sum(w for _, _, w in done)
    slowest = sorted(done, key=lambda f: -f[2])
    assert [Path(t.path).name for t in report.slowest()] == [name for name, _, _ in slowest]
    assert [t.state for t in report.tasks] == ["COMPLETED", "FAILED", "CANCELLED"]
    assert report.cpu.efficiency == pytest.approx((150.5 + 20) / (100 * 2 + 30 * 2))
    assert report.memory.lines()[0] == f"you asked 8G and used {human_bytes(1258291 * 1024)}: --mem 2G would do"
    assert report.has_samples and report.has_gpu

    summary = text.summary(report)
    assert f"{len(done)} done, 1 failed, 1 left (0 running, 1 pending) of {len(SYNTHETIC_FILES)}" in summary
    assert "ünï\\ncödé.mp3" in summary, "a newline in a name is shown escaped, on one line"
    assert "3 of 3 in sacct: 1 COMPLETED, 1 FAILED, 1 CANCELLED" in summary
    assert f"1 of {len(done)} files were written from the result cache" in summary

    pictures = plots.pictures(report)
    assert set(pictures) == {"rtf", "slowest", "timeline", "cpu", "memory", "samples-cpu", "samples-rss", "gpu-util",
                             "gpu-memory"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pictures.values())
    page = report_html.page(report, pictures, summary)
    assert_self_contained(page)
    assert int(element(page, "count-done")) == len(done) and int(element(page, "count-failed")) == 1
    assert int(element(page, "count-left")) == 1 and int(element(page, "count-total")) == len(SYNTHETIC_FILES)
    assert float(attribute(page, "audio-hours", "data-seconds")) == pytest.approx(report.audio_seconds)
    assert HOSTILE not in page and "<img src=x" not in page and "alert(1)</script>" not in page
    assert html.escape(str(tmp_path / "in" / HOSTILE)) in page and html.escape(FAILURE) in page
    assert "ünï\\ncödé.mp3" in page
    assert re.findall(r'<tr class="task" data-state="([A-Z_]+)">', page) == ["COMPLETED", "FAILED", "CANCELLED"]
    assert 'id="gpu"' in page
    assert not (tmp_path / "y").exists() and not Path("y").exists()


def test_split_channels_and_missing_transcripts(tmp_path):
    manifest = synthetic_batch(tmp_path)
    manifest.split_channels = True
    base = manifest.entries[0].output_base
    for channel, audio, wall in (("left", 11.0, 2.0), ("right", 10.5, 3.0)):
        Path(f"{base}.{channel}.txt").write_text("words", encoding="utf-8")
        Path(f"{base}.{channel}.json").write_text(json.dumps({"duration": audio, "wall_time": wall}), encoding="utf-8")
    both = data.file_time(manifest, 0)
    assert (both.audio_seconds, both.wall_seconds) == (11.0, 5.0), "the longer channel's audio, both channels' work"
    Path(f"{manifest.entries[1].output_base}.json").write_text("{not json", encoding="utf-8")
    manifest.formats = ["txt"]
    report = synthetic_report(manifest)
    assert len(report.times) == 2 and report.counts["done"] == 3
    assert report.times_note.startswith("1 done files have no readable json") and "add json to --output_format" in report.times_note
    assert report.times_note in text.summary(report)


def test_the_command_writes_the_report_when_sacct_fails(tmp_path):
    """Slurm's commands failing (no controller): a report all the same, saying why accounting is missing."""
    manifest = synthetic_batch(tmp_path)
    fake = fake_slurm_commands(tmp_path / "slurm", 1)
    sheet = tmp_path / "sheet.png"
    env = {"PATH": f"{fake}:{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    result = subprocess.run([str(BIN / "whisper-batch"), "report", str(manifest.path), "--png", str(sheet)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "accounting was not available for job 4242: sacct gave no record of it" in result.stdout
    page_path = manifest.work_dir / "report.html"
    assert f"report written: {page_path}" in result.stdout and f"report written: {sheet}" in result.stdout
    page = page_path.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "accounting was not available" in page and 'class="task"' not in page
    assert int(element(page, "count-done")) == 3, "the files' states do not need sacct"
    assert sheet.read_bytes().startswith(b"\x89PNG") and sheet.stat().st_size > 20_000

    refused = subprocess.run([str(BIN / "whisper-batch"), "report", str(manifest.path), "--html",
                              str(manifest.path / "report.html")], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("whisper-batch: cannot write the report ") and "--html FILE" in refused.stderr


def test_help_does_not_import_matplotlib():
    probe = "import sys, whisper_hpc.batch.cli as c; c.main(['--help']); print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "whisper-batch report JOBID|MANIFEST" in result.stdout
    assert result.stdout.strip().endswith("False")


# ---- the real thing ----------------------------------------------------------------------------------

RECORDINGS = ["jfk.flac", "multilingual.mp3", "hotwords.mp3", "sample.wav"]
HOSTILE_COPY = '<b onclick=alert(1)>jfk "x" $(touch pwned).flac'  # no "/": a closing tag would make a folder


def real_batch_inputs(folder: Path, shared_data: Path) -> tuple[list[Path], list[Path]]:
    """(the recordings, the two files that must fail: one corrupt, one empty)."""
    folder.mkdir(parents=True)
    good = [folder / name for name in RECORDINGS] + [folder / HOSTILE_COPY]
    for name in RECORDINGS:
        shutil.copy(shared_data / name, folder / name)
    shutil.copy(shared_data / "jfk.flac", folder / HOSTILE_COPY)
    corrupt, empty = folder / "corrupt.wav", folder / "empty.mp3"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 16)
    empty.write_bytes(b"")
    return good, [corrupt, empty]


def sacct_seconds(text_value: str) -> float:
    """sacct's [D-][HH:]MM:SS[.mmm], read independently of the code under test."""
    days, _, clock = text_value.rpartition("-")
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total + 86400 * int(days or 0)


def screenshot(page: Path, shot: Path, home: Path) -> subprocess.CompletedProcess:
    """Headless Chromium renders the page into a PNG; as root, in a network namespace with no network."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    need(chromium is not None, "chromium is not installed: run `make chromium-installed` (apt-get install chromium)")
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={home / 'chromium'}", f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()]
    if os.geteuid() == 0:
        command = ["unshare", "-n", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"})


@pytest.mark.system
@pytest.mark.engine
def test_a_real_batch_with_failures_gets_a_report_matching_sacct_that_a_browser_renders(
        batch, slurm_cluster, shared_data, tmp_path):
    from PIL import Image

    good, bad = real_batch_inputs(tmp_path / "in put", shared_data)
    out = tmp_path / "out"
    job, count, tasks, manifest = submitted(batch(
        "submit", str(tmp_path / "in put"), "--model", "tiny.en", "--compute_type", "int8", "--output_dir", str(out),
        "--output_format", "txt,json", "--chunk_size", "2", "--throttle", "2", "--cpus", "1", "--mem", "1G",
        "--beam_size", "1",
    ))
    assert count == len(good) + len(bad) and tasks == 4
    states = slurm_cluster.wait(job, timeout=900)
    assert set(states.split(",")) == {"COMPLETED", "FAILED"}, states  # the tasks holding a bad file exit 1

    sheet = tmp_path / "sheet.png"
    result = batch("report", job, "--png", str(sheet))  # found from the job id alone
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    page_path = manifest.parent / manifest.stem / "report.html"
    assert f"report written: {page_path}" in result.stdout
    page = page_path.read_text(encoding="utf-8")
    assert_self_contained(page)

    # The files: as `whisper-batch status` counts them, and as the test made them.
    status = json.loads(batch("status", str(manifest), "--json").stdout)
    assert status["counts"] == {"done": len(good), "failed": len(bad), "running": 0, "pending": 0}
    for state in ("done", "failed"):
        assert int(element(page, f"count-{state}")) == status["counts"][state]
    assert int(element(page, "count-left")) == 0 and int(element(page, "count-total")) == len(good) + len(bad)
    failed = [f for f in status["files"] if f["state"] == "failed"]
    assert sorted(f["path"] for f in failed) == sorted(map(str, bad))
    for item in failed:
        assert f'<td class="path">{html.escape(item["path"])}</td><td>{html.escape(item["detail"])}</td>' in page
    assert HOSTILE_COPY not in page and html.escape(str(good[-1])) in page

    # The times: what the json transcripts hold.
    transcripts = [json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.json")]
    assert len(transcripts) == len(good)
    assert float(attribute(page, "audio-hours", "data-seconds")) == pytest.approx(sum(t["duration"] for t in transcripts), abs=0.01)
    assert float(attribute(page, "wall-hours", "data-seconds")) == pytest.approx(sum(t["wall_time"] for t in transcripts), abs=0.01)
    assert int(element(page, "timed-files")) == len(good)

    # The tasks: what sacct says, asked here (without -X: sacct sums a task's TotalCPU from its steps).
    fields = "JobID,State,Elapsed,AllocCPUS,TotalCPU"
    sacct = slurm_cluster.run(["sacct", "-n", "-P", "-j", job, "-o", fields]).stdout.splitlines()
    rows = [line.split("|") for line in sacct if line.strip() and "." not in line.split("|")[0]]
    expected = {f"task {row[0].split('_')[1]}": row[1].split()[0] for row in rows}
    shown = dict(re.findall(r'<tr class="task" data-state="[A-Z_]+"><td>([^<]+)</td><td>([A-Z_]+)</td>', page))
    assert shown == expected and len(shown) == tasks
    assert int(attribute(page, "sacct-tasks", "data-count")) == len(rows)
    allocated = sum(sacct_seconds(row[2]) * int(row[3]) for row in rows)
    used = sum(sacct_seconds(row[4]) for row in rows)
    assert float(attribute(page, "cpu-efficiency", "data-efficiency")) == pytest.approx(used / allocated, abs=1e-3)
    assert element(page, "memory-advice").startswith("Memory: you asked 1G and used ")

    summary = result.stdout
    assert f"{len(good)} done, {len(bad)} failed, 0 left (0 running, 0 pending) of {len(good) + len(bad)}" in summary
    assert f"{len(rows)} of {tasks} in sacct" in summary
    assert sheet.read_bytes().startswith(b"\x89PNG")

    shot = tmp_path / "report.png"
    rendered = screenshot(page_path, shot, tmp_path)
    assert rendered.returncode == 0 and shot.is_file(), rendered.stderr[-2000:]
    assert shot.stat().st_size > 20_000, "a page with tables and figures, not a blank one"
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        assert image.convert("RGB").getcolors(maxcolors=1) is None, "the screenshot is more than one colour"
    assert not list(tmp_path.rglob("pwned")) and not Path("pwned").exists(), "a file name was executed"
