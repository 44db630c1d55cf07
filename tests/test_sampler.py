"""The task sampler: a real process tree's CPU and memory, GPUs through a stand-in NVML, no NVML at
all, the TSV a killed task leaves, and run_task writing samples-S-T.tsv beside results-S-T.json."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from whisper_hpc.batch import task as task_module
from whisper_hpc.batch.manifest import Manifest, manifest_path, read_result
from whisper_hpc.batch.sampler import (
    DEFAULT_INTERVAL, HEADER, Sample, Sampler, interval_from_environment, parse_stat, read_samples, tree_pids,
)
from whisper_hpc.batch.selection import Entry
from whisper_hpc.devices import visible_devices

GIB = 1 << 30
TREE_SCRIPT = """\
import subprocess, sys, time
depth, pid_file = int(sys.argv[1]), sys.argv[2]
if depth:
    subprocess.run([sys.executable, __file__, str(depth - 1), pid_file], check=True)
else:
    open(pid_file, "w").write(str(__import__("os").getpid()))
    while time.process_time() < 1.5:  # CPU seconds, however loaded the machine
        pass
"""


def wait_for(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise TimeoutError(path)


def cpu_seconds(samples: list[Sample]) -> float:
    """CPU seconds the series accounts for after its first row (cpu_percent times the interval)."""
    return sum(b.cpu_percent / 100 * (b.time - a.time) for a, b in zip(samples, samples[1:]))


def test_a_real_process_tree_is_sampled_down_to_the_grandchild(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT)
    pid_file = tmp_path / "burner.pid"
    root = subprocess.Popen([sys.executable, str(script), "2", str(pid_file)])
    path = tmp_path / "samples.tsv"
    sampler = Sampler(path, root.pid, interval=0.2).start()
    try:
        burner = int(wait_for(pid_file))
        assert burner in tree_pids(root.pid), "the CPU burner is root's grandchild"
        assert root.wait(timeout=60) == 0
    finally:
        sampler.stop()
    samples = read_samples(path)
    assert path.read_text().startswith(HEADER)
    assert len(samples) >= 6
    assert all(b.time > a.time for a, b in zip(samples, samples[1:]))
    assert max(s.cpu_percent for s in samples[1:]) > 30  # only the grandchild works; its parents wait
    assert 1.0 < cpu_seconds(samples) < 2.5  # 1.5 s burnt, counted once though reaped twice
    # While the tree lives every sample sees its memory; once it has gone (a tick may fall between
    # its exit and the stop, and the stop's own sample always comes after) every later one is empty.
    living = list(itertools.takewhile(lambda s: s.rss_bytes > 1 << 20, samples))
    assert len(living) >= 5 and all(s.rss_bytes == 0 for s in samples[len(living):]) and samples[-1].rss_bytes == 0
    assert all(s.gpu is None and s.gpu_util_percent is None for s in samples)
    assert sampler.cost.samples == len(samples) and 0 < sampler.cost.cpu_seconds < sampler.cost.wall_seconds + 0.05


def test_stat_lines_with_odd_command_names():
    line = b"42 (a) b (c)) S 7 42 42 0 -1 4194304 100 0 0 0 30 12 5 3 20 0 1 0 9000 3133440 370 18446744 0 0\n"
    stat = parse_stat(42, line)
    assert (stat.ppid, stat.cpu_ticks, stat.start_ticks, stat.rss_pages) == (7, 50, 9000, 370)
    assert parse_stat(42, b"42 (cut") is None


def test_a_vanished_root_gives_empty_rows_not_an_error(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    path = tmp_path / "samples.tsv"
    sampler = Sampler(path, gone.pid, interval=60).start()
    sampler.stop()
    assert [(s.cpu_percent, s.rss_bytes) for s in read_samples(path)] == [(0.0, 0), (0.0, 0)]


def nvml_failing_to_init() -> types.ModuleType:
    module = types.ModuleType("pynvml")

    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    module.nvmlInit = fail
    return module


@pytest.mark.parametrize("nvml", [None, nvml_failing_to_init()], ids=["not installed", "init fails"])
def test_without_nvml_cpu_rows_go_on_with_empty_gpu_fields(tmp_path, monkeypatch, nvml):
    monkeypatch.setitem(sys.modules, "pynvml", nvml)  # None: `import pynvml` raises ImportError
    path = tmp_path / "samples.tsv"
    sampler = Sampler(path, os.getpid(), interval=60).start()
    begun = time.monotonic()
    sampler.stop()
    assert time.monotonic() - begun < 5, "stop() does not wait for the interval"
    assert sampler.thread is None
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER.rstrip("\n") and len(lines) == 3
    assert all(line.endswith("\t\t\t\t") for line in lines[1:])
    samples = read_samples(path)
    assert [s.gpu for s in samples] == [None, None] and all(s.rss_bytes > 1 << 20 for s in samples)


class FakeNvml(types.ModuleType):
    """Two GPUs; the second has a UUID the tests name; GPU 2 exists but its utilisation fails."""

    UTIL = {0: 10, 1: 90}
    USED = {0: 1 * GIB, 1: 5 * GIB, 2: 7 * GIB}
    UUIDS = {"GPU-0000aaaa": 0, "GPU-1111bbbb": 1}

    def __init__(self, count: int = 2) -> None:
        super().__init__("pynvml")
        self.count = count
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        if not 0 <= index < self.count:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[str, int]:
        return ("handle", self.UUIDS[uuid])

    def nvmlDeviceGetIndex(self, handle: tuple[str, int]) -> int:
        return handle[1]

    def nvmlDeviceGetUtilizationRates(self, handle: tuple[str, int]) -> types.SimpleNamespace:
        if handle[1] not in self.UTIL:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return types.SimpleNamespace(gpu=self.UTIL[handle[1]], memory=3)

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[str, int]) -> types.SimpleNamespace:
        return types.SimpleNamespace(used=self.USED[handle[1]], total=80 * GIB, free=0)


def gpu_rows(tmp_path: Path, monkeypatch, environ: dict[str, str], nvml: FakeNvml | None = None) -> list[Sample]:
    nvml = nvml or FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    path = tmp_path / "samples.tsv"
    sampler = Sampler(path, os.getpid(), interval=60, environ=environ).start()
    sampler.stop()
    assert nvml.shutdowns == 1
    return read_samples(path)


def test_one_row_per_gpu_per_sample_with_nvmls_figures(tmp_path, monkeypatch):
    samples = gpu_rows(tmp_path, monkeypatch, {})
    assert [(s.gpu, s.gpu_util_percent, s.gpu_memory_used_bytes, s.gpu_memory_total_bytes) for s in samples] == \
        [(0, 10, GIB, 80 * GIB), (1, 90, 5 * GIB, 80 * GIB)] * 2
    first, second = samples[:2]
    assert (first.time, first.cpu_percent, first.rss_bytes) == (second.time, second.cpu_percent, second.rss_bytes)
    assert samples[2].time > samples[0].time


@pytest.mark.parametrize("visible", ["1", "GPU-1111bbbb", "1,7", "1,junk,0"])
def test_cuda_visible_devices_limits_the_gpus(tmp_path, monkeypatch, visible):
    samples = gpu_rows(tmp_path, monkeypatch, {"CUDA_VISIBLE_DEVICES": visible})
    assert [(s.gpu, s.gpu_util_percent, s.gpu_memory_used_bytes) for s in samples] == [(1, 90, 5 * GIB)] * 2


@pytest.mark.parametrize("visible", ["", "NoDevFiles", "-1"])
def test_no_visible_gpu_means_cpu_rows_only(tmp_path, monkeypatch, visible):
    samples = gpu_rows(tmp_path, monkeypatch, {"CUDA_VISIBLE_DEVICES": visible})
    assert [s.gpu for s in samples] == [None, None]


def test_a_gpu_whose_utilisation_nvml_cannot_give_keeps_its_memory(tmp_path, monkeypatch):
    samples = gpu_rows(tmp_path, monkeypatch, {"CUDA_VISIBLE_DEVICES": "2"}, FakeNvml(count=3))
    assert [(s.gpu, s.gpu_util_percent, s.gpu_memory_used_bytes) for s in samples] == [(2, None, 7 * GIB)] * 2


def test_visible_devices_are_read_as_cuda_reads_them():
    assert visible_devices(None) is None
    assert visible_devices("0,2") == [0, 2]
    assert visible_devices(" GPU-ab12 , 3") == ["GPU-ab12", 3]
    assert visible_devices("0,nonsense,2") == [0]
    assert visible_devices("") == []
    assert visible_devices("NoDevFiles") == visible_devices("-1") == [], "no GPU allocated: none, not every GPU"


def test_read_samples_skips_garbage_and_a_cut_off_last_line(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text(
        HEADER
        + "1700000000.125\t95.5\t1048576\t\t\t\t\n"
        + "garbage\n"
        + "1700000001.000\tx\t1\t\t\t\t\n"
        + "1700000001.000\t1.0\t1\t\t\t\n"  # a column short
        + "nan\t1.0\t1\t\t\t\t\n"
        + HEADER  # a rerun's header (not written by the sampler, but harmless)
        + "1700000005.250\t120.0\t2097152\t1\t37\t4096\t8192\n"
        + "1700000010.000\t99.0\t20"  # the task was killed mid-write
    )
    assert read_samples(path) == [
        Sample(1700000000.125, 95.5, 1048576),
        Sample(1700000005.25, 120.0, 2097152, 1, 37.0, 4096, 8192),
    ]
    assert read_samples(tmp_path / "absent.tsv") == []
    assert read_samples(tmp_path) == []  # a folder: nothing, not an error


def test_a_rerun_appends_after_what_a_killed_run_left(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER + "1700000000.000\t50.0\t1048576\t\t\t\t\n1700000005.000\t5")
    sampler = Sampler(path, os.getpid(), interval=60).start()
    sampler.stop()
    assert path.read_text().count("time\t") == 1
    samples = read_samples(path)
    assert len(samples) == 3 and samples[0] == Sample(1700000000.0, 50.0, 1048576)


@pytest.mark.parametrize("value, expected", [
    (None, DEFAULT_INTERVAL), ("", DEFAULT_INTERVAL), ("2.5", 2.5), (" 10 ", 10.0), ("0", 0.0), ("0.0", 0.0),
    ("abc", DEFAULT_INTERVAL), ("-1", DEFAULT_INTERVAL), ("nan", DEFAULT_INTERVAL), ("inf", DEFAULT_INTERVAL),
    ("0.001", DEFAULT_INTERVAL), ("1e9", DEFAULT_INTERVAL),
])
def test_the_interval_from_the_environment(value, expected):
    environ = {} if value is None else {"WHISPER_HPC_SAMPLE_SECONDS": value}
    assert interval_from_environment(environ) == expected


def test_an_interval_of_zero_turns_it_off(tmp_path):
    path = tmp_path / "samples.tsv"
    sampler = Sampler(path, os.getpid(), environ={"WHISPER_HPC_SAMPLE_SECONDS": "0"})
    with sampler:
        assert sampler.thread is None
    assert not path.exists() and sampler.cost.samples == 0


def test_a_samples_file_that_cannot_be_created_is_only_said(tmp_path, capsys):
    blocker = tmp_path / "not a folder"
    blocker.write_text("")
    with Sampler(blocker / "samples.tsv", os.getpid(), interval=0.5) as sampler:
        assert sampler.thread is None
    assert "no resource samples" in capsys.readouterr().err


# ---- run_task ------------------------------------------------------------------------------------

FAKE_ENGINE = "import time\nwhile time.process_time() < 1.2:\n    pass\n"


def one_file_batch(tmp_path: Path) -> Manifest:
    out = tmp_path / "out"
    out.mkdir()
    entries = [Entry(str(tmp_path / "talk.wav"), str(out), str(out / "talk"))]
    manifest = Manifest(path=manifest_path(out, "test"), name="test", output_dir=str(out),
                        engine_args=["--model", "tiny.en"], formats=["txt", "json"], split_channels=False,
                        overwrite=False, model="tiny.en", entries=entries)
    manifest.add_submission("run", [[0]], {})
    manifest.save()
    return manifest


@pytest.fixture
def fake_engine(monkeypatch):
    """whisper-hpc replaced by 1.2 CPU seconds of busy Python that writes nothing; no signal handlers installed."""
    monkeypatch.setattr(task_module, "engine_command", lambda: [sys.executable, "-c", FAKE_ENGINE])
    monkeypatch.setattr(task_module.Stopper, "install", lambda self: None)
    monkeypatch.setenv("WHISPER_HPC_SAMPLE_SECONDS", "0.5")


def test_run_task_writes_samples_beside_its_results(tmp_path, fake_engine):
    manifest = one_file_batch(tmp_path)
    assert task_module.run_task(manifest, 1, 0) == 1  # the stand-in wrote no transcript
    result_path, samples_path = manifest.result_path(1, 0), manifest.samples_path(1, 0)
    assert samples_path.parent == result_path.parent and samples_path.name == "samples-1-0.tsv"
    record = read_result(result_path)
    samples = read_samples(samples_path)
    assert record.state == "finished" and len(samples) >= 3
    assert record.started <= samples[0].time and samples[-1].time <= record.ended
    assert max(s.cpu_percent for s in samples[1:]) > 20  # the engine, a child of this process, counted


def test_run_task_without_its_samples_file_runs_as_before(tmp_path, fake_engine):
    manifest = one_file_batch(tmp_path)
    manifest.samples_path(1, 0).mkdir()  # cannot be opened as a file
    assert task_module.run_task(manifest, 1, 0) == 1
    record = json.loads(manifest.result_path(1, 0).read_text())
    assert record["state"] == "finished" and record["exit_codes"] == [0] and not record["task_error"]


def test_the_real_nvml_gives_gpu_rows_where_there_are_gpus_and_cpu_rows_where_not(tmp_path):
    """The installed nvidia-ml-py as it is: on a GPU node one row per GPU per sample; here (no driver)
    it fails to initialise and the sampler goes on with CPU rows."""
    import pynvml

    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        count = 0
    path = tmp_path / "samples.tsv"
    Sampler(path, os.getpid(), interval=60, environ={}).start().stop()
    samples = read_samples(path)
    if count:
        assert [s.gpu for s in samples] == list(range(count)) * 2
        assert all(s.gpu_memory_total_bytes > 0 and 0 <= s.gpu_util_percent <= 100 for s in samples)
    else:
        assert len(samples) == 2 and all(s.gpu is None and s.gpu_util_percent is None for s in samples)
        assert all(s.rss_bytes > 0 for s in samples)
