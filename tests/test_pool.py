"""Decoding ahead of the engine (runner.Prefetcher) and several GPUs in one job (whisper_hpc.pool).

The prefetcher is driven unit by unit with a fake decoder. The pool runs real worker processes
(the spawn context) with real tiny.en on clips cut from the shared recordings, pretending to be
on N GPUs: WHISPER_HPC_POOL_FAKE_GPUS=1 makes each worker load on the CPU while it counts as its
GPU (the test hook in whisper_hpc/pool.py), and the kill hooks make a worker SIGKILL itself.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN
from whisper_hpc import audio, devices, runner
from whisper_hpc.assemble import EngineLoader, chosen_gpus, run_gpus
from whisper_hpc.engines import DecodeOptions, ModelRequest
from whisper_hpc.engines.base import EngineResult
from whisper_hpc.inputs import collect_jobs
from whisper_hpc.model_store import StagedModel
from whisper_hpc.options import parse
from whisper_hpc.pool import (
    FAKE_GPUS_VARIABLE, KILL_AT_VARIABLE, KILL_ONCE_VARIABLE, KILL_WHILE_WRITING_VARIABLE, GpuPool, longest_first,
)
from whisper_hpc.runner import RunSettings, run_jobs
from whisper_hpc.transcript import Segment

FORMATS = ("txt", "srt", "vtt", "tsv", "csv", "json")
COMPARED = ("txt", "srt", "vtt", "tsv", "csv")  # json holds times of its own: compared by its segments
# No temperature fallback: sampling at a higher temperature draws random numbers, which no two runs share.
OPTIONS = DecodeOptions(language="en", temperature=(0.0,))
DONE_LINE = re.compile(r"^\[(\d+)/(\d+)\] done (.*): \d+:\d\d of audio", re.MULTILINE)


# ---- decoding ahead: a fake decoder, unit by unit -------------------------------------------------------

class FakeDecoder:
    """audio.probe and audio.stream_windows for made-up files: `windows[name]` windows of one second
    each; a name in `broken` raises AudioError after its last window (as a strict decode of a
    truncated file does), one in `unreadable` fails its probe. It counts what is alive."""

    def __init__(self, windows: dict[str, int], broken=(), unreadable=()) -> None:
        self.windows = windows
        self.broken = set(broken)
        self.unreadable = set(unreadable)
        self.produced = 0
        self.alive = 0  # windows' samples not yet freed
        self.max_alive = 0
        self.lock = threading.Lock()

    def probe(self, path: Path) -> audio.AudioInfo:
        if path.name in self.unreadable:
            raise audio.AudioError(f"{path}: not an audio or video file ffmpeg can read (made up)")
        return audio.AudioInfo(path, float(self.windows[path.name]), 1, "wav")

    def freed(self) -> None:
        with self.lock:
            self.alive -= 1

    def stream_windows(self, info, channel=None, window_seconds=audio.WINDOW_SECONDS, strict=True):
        for number in range(self.windows[info.path.name]):
            samples = np.full(audio.SAMPLE_RATE, 0.1, dtype=np.float32)
            with self.lock:
                self.produced += 1
                self.alive += 1
                self.max_alive = max(self.max_alive, self.alive)
            weakref.finalize(samples, self.freed)
            yield audio.AudioWindow(float(number), samples)
            del samples
        if info.path.name in self.broken:
            raise audio.AudioError(f"{info.path}: truncated or damaged: decoded 1.0 s of 9.0 s (made up)")


@pytest.fixture
def fake_decoder(monkeypatch):
    def install(windows: dict[str, int], broken=(), unreadable=()) -> FakeDecoder:
        decoder = FakeDecoder(windows, broken, unreadable)
        monkeypatch.setattr(audio, "probe", decoder.probe)
        monkeypatch.setattr(audio, "stream_windows", decoder.stream_windows)
        return decoder
    return install


def fake_jobs(tmp_path: Path, names) -> list:
    return collect_jobs([str(tmp_path / "in" / name) for name in names], tmp_path / "out")


def test_the_prefetcher_holds_at_most_one_window_ahead_of_the_engine(fake_decoder, tmp_path):
    decoder = fake_decoder({"long.wav": 12, "short.wav": 2, "next.wav": 5})
    jobs = fake_jobs(tmp_path, ["long.wav", "short.wav", "next.wav"])
    taken = 0
    ahead = []
    with runner.Prefetcher(enumerate(jobs), RunSettings(formats=("txt",))) as prefetched:
        for job in jobs:
            current = prefetched.next_file()
            assert current.job == job and current.info().path == job.source
            for window in current.windows(None):
                taken += 1
                time.sleep(0.02)  # the engine at work: the decoder runs ahead as far as it may
                with decoder.lock:
                    ahead.append(decoder.produced - taken)
                del window
            current.close()
        assert prefetched.next_file() is None
    assert taken == decoder.produced == 19
    assert max(ahead) == runner.PREFETCH_WINDOWS  # it does run ahead, across files too, and no further
    assert decoder.max_alive <= runner.PREFETCH_WINDOWS + 1  # the engine's window and the one decoded ahead


def test_a_file_given_up_on_is_not_decoded_further(fake_decoder, tmp_path):
    decoder = fake_decoder({"cached.wav": 50, "next.wav": 1})
    jobs = fake_jobs(tmp_path, ["cached.wav", "next.wav"])
    with runner.Prefetcher(enumerate(jobs), RunSettings(formats=("txt",))) as prefetched:
        current = prefetched.next_file()
        time.sleep(0.1)
        current.close()  # a result-cache hit: its windows are not wanted
        following = prefetched.next_file()
        assert following.job == jobs[1] and len(list(following.windows(None))) == 1
        following.close()
    assert decoder.produced <= 2 + 1  # what was decoded of it before it was given up on, and next.wav


def test_stopping_never_waits_for_the_decoder(fake_decoder, tmp_path):
    fake_decoder({"a.wav": 1000})
    before = threading.active_count()
    prefetched = runner.Prefetcher(enumerate(fake_jobs(tmp_path, ["a.wav"])), RunSettings(formats=("txt",)))
    prefetched.next_file()
    time.sleep(0.1)  # the decoder is waiting for room in the queue
    started = time.monotonic()
    prefetched.stop()
    assert time.monotonic() - started < 1.0 and not prefetched.thread.is_alive()
    assert threading.active_count() == before


class FakeEngine:
    name, device, compute_type = "faster-whisper", "cpu", "int8"

    def __init__(self, interrupt_on: str | None = None) -> None:
        self.interrupt_on = interrupt_on
        self.files: list[float] = []

    def transcribe(self, samples, options):
        if self.interrupt_on is not None:
            raise KeyboardInterrupt
        return EngineResult(iter([Segment(0.0, 0.5, " words")]), "en", 1.0)

    def versions(self):
        return {}


def test_an_error_of_file_2_is_reported_for_file_2_and_files_1_and_3_finish(fake_decoder, tmp_path):
    fake_decoder({"one.wav": 3, "two.wav": 3, "three.wav": 3, "four.wav": 2}, broken={"two.wav"},
                 unreadable={"four.wav"})
    errors = io.StringIO()
    jobs = fake_jobs(tmp_path, ["one.wav", "two.wav", "three.wav", "four.wav"])
    summary = run_jobs(jobs, RunSettings(formats=("txt",)), lambda compute_type: FakeEngine(), DecodeOptions(),
                       errors=errors)
    assert (summary.done, len(summary.failed)) == (2, 2)
    lines = errors.getvalue().splitlines()
    failures = [line for line in lines if line.startswith("error: ")]
    assert failures == [f"error: {jobs[1].source}: truncated or damaged: decoded 1.0 s of 9.0 s (made up)",
                        f"error: {jobs[3].source}: not an audio or video file ffmpeg can read (made up)"]
    assert [int(m.group(1)) for m in DONE_LINE.finditer(errors.getvalue())] == [1, 3]
    for stem in ("one", "three"):
        assert (tmp_path / "out" / f"{stem}.txt").read_text().split() == ["words"] * 3  # one per window
    assert not list((tmp_path / "out").glob("two.*")) and not list((tmp_path / "out").glob("four.*"))


def test_ctrl_c_in_the_engine_ends_the_run_and_the_decoder(fake_decoder, tmp_path):
    fake_decoder({"a.wav": 1000, "b.wav": 5})
    before = threading.active_count()
    with pytest.raises(KeyboardInterrupt):
        run_jobs(fake_jobs(tmp_path, ["a.wav", "b.wav"]), RunSettings(formats=("txt",)),
                 lambda compute_type: FakeEngine(interrupt_on="a.wav"), DecodeOptions(), errors=io.StringIO())
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)])
def test_a_stop_signal_waits_until_a_files_transcripts_are_all_written(signum, raised):
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    written = []
    try:
        with pytest.raises(raised):
            with runner.signals_held():
                os.kill(os.getpid(), signum)
                time.sleep(0.05)
                written.append("every format")  # the signal did not cut the writing short
        assert written == ["every format"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


# ---- which GPUs: the command line, CUDA_VISIBLE_DEVICES, Slurm --------------------------------------------

def test_device_index_takes_one_gpu_or_a_list():
    assert parse(["a.wav", "--device_index", "0,1"]).device_index == (0, 1)
    assert parse(["a.wav", "--device_index", " 2, 3 ,5"]).device_index == (2, 3, 5)
    single = parse(["a.wav", "--device_index", "1"]).device_index
    assert single == 1 and isinstance(single, int)
    assert chosen_gpus("cuda", parse(["a.wav", "--device_index", "0,1"]).device_index) == (0, 1)
    assert chosen_gpus("cuda", parse(["a.wav", "--device_index", "0"]).device_index) == (0,)  # typed: pinned
    assert chosen_gpus("cuda", parse(["a.wav"]).device_index) is None  # the default: the job's GPUs
    assert chosen_gpus("cuda:1", 0) == (1,)
    with pytest.raises(Exception, match="comma list"):
        parse(["a.wav", "--device_index", "0,x"])
    assert parse(["a.wav", "--gpu_workers", "2"]).gpu_workers == 2 and parse(["a.wav"]).gpu_workers is None


@pytest.mark.parametrize("environ, sees, gpus", [
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, None, [0, 1]),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, None, [0, 1]),  # CUDA numbers the visible ones from 0
    ({"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d,MIG-5e"}, None, [0, 1, 2]),
    ({"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "0,1,2,3"}, None, [0]),  # CUDA's variable wins
    ({"CUDA_VISIBLE_DEVICES": ""}, None, []),
    ({"SLURM_JOB_GPUS": "0,1"}, 2, [0, 1]),
    ({"SLURM_JOB_GPUS": "2,3"}, 4, [2, 3]),  # every GPU of the node visible: Slurm's numbers are CUDA's
    ({"SLURM_JOB_GPUS": "2,3"}, 2, [0, 1]),  # the node hides the others: CUDA numbers the job's from 0
    ({"SLURM_JOB_GPUS": "0-3"}, 4, [0, 1, 2, 3]),
    ({"SLURM_STEP_GPUS": "1", "SLURM_JOB_GPUS": "0,1"}, 2, [1]),  # the step's own list first
    ({"SLURM_JOB_GPUS": "NoDevFiles"}, 0, []),
    ({}, 8, None),  # nothing says: not every GPU of the node
])
def test_the_gpus_a_job_was_given(environ, sees, gpus):
    assert devices.job_gpus(environ, (lambda: sees) if sees is not None else None) == gpus


def test_workers_per_gpu_and_threads_per_worker():
    assert devices.worker_gpus(None, None, [0, 1, 2, 3]) == [0, 1, 2, 3]
    assert devices.worker_gpus((0, 1), None, [0, 1, 2, 3]) == [0, 1]  # --device_index 0,1 wins
    assert devices.worker_gpus(None, 2, [0]) == [0, 0]  # --gpu_workers 2 on one GPU: they share it
    assert devices.worker_gpus(None, 3, [0, 1]) == [0, 1, 0]
    assert devices.worker_gpus(None, 1, [0, 1]) == [0]
    assert devices.worker_gpus(None, None, None) == [0]
    assert [devices.worker_threads(t, w) for t, w in ((8, 4), (9, 4), (16, 3), (2, 3), (1, 8))] == [2, 2, 5, 1, 1]


def test_each_worker_sees_its_gpu_alone():
    assert [devices.only_gpu(i, {"CUDA_VISIBLE_DEVICES": "3,5"}) for i in (0, 1)] == ["3", "5"]
    assert devices.only_gpu(1, {"CUDA_VISIBLE_DEVICES": "GPU-aa,MIG-bb"}) == "MIG-bb"
    assert devices.only_gpu(2, {}) == "2"  # no list: CUDA's own numbering


def request_like(**fields):
    from types import SimpleNamespace

    return SimpleNamespace(**{"gpus": None, "gpu_workers": None, "cpu_workers": None, "device_index": 0, **fields})


@pytest.mark.parametrize("environ, fields, expected", [
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, {}, [0, 1]),
    ({"CUDA_VISIBLE_DEVICES": "0"}, {}, [0]),  # one GPU: no pool
    ({"CUDA_VISIBLE_DEVICES": "0"}, {"gpu_workers": 2}, [0, 0]),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, {"gpus": (2,)}, [2]),  # cuda:2 or --device_index 2: that GPU alone
    ({"SLURM_JOB_GPUS": "4,5"}, {}, [0, 1]),  # this machine's engine sees no GPU: numbered from 0
])
def test_the_run_decides_its_workers(monkeypatch, environ, fields, expected):
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(devices, "engine_cuda_status", lambda backend: ("12.0", 0))
    assert run_gpus(request_like(**fields), "cuda", "faster-whisper") == expected
    assert run_gpus(request_like(**fields), "cpu", "faster-whisper") == [0]  # on the CPU: never a pool


# ---- the pool, with real tiny.en on real clips -----------------------------------------------------------

CLIP_NAMES = ("it's a \"talk\" ünïcødé $(touch pwned).wav", "with  two spaces.flac", "日本語 テスト.wav",
              "-leading dash.wav", "back`tick`.mp3", "plain.wav")


def ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *arguments], check=True)


@pytest.fixture(scope="module")
def clips(shared_data, tmp_path_factory) -> list[Path]:
    """Six clips of distinct lengths (3 to 8 s, in no order) with hostile names."""
    folder = tmp_path_factory.mktemp("clips") / "in put"
    folder.mkdir()
    made = []
    for number, (name, seconds) in enumerate(zip(CLIP_NAMES, (5, 8, 3, 7, 4, 6))):
        source = shared_data / ("sample.wav" if number % 2 else "jfk.flac")
        ffmpeg("-ss", str(number), "-t", str(seconds), "-i", str(source), str(folder / name))
        made.append(folder / name)
    return made


def loader(model_root: Path, threads: int = 1) -> EngineLoader:
    return EngineLoader("faster-whisper", ModelRequest(StagedModel("tiny.en", model_root / "tiny.en"), "cuda", None,
                                                      threads, 0))


def settings() -> RunSettings:
    return RunSettings(formats=FORMATS, model_name="tiny.en")


def outputs(folder: Path) -> dict[str, object]:
    """Every transcript in `folder`: the text formats whole, the json by what it transcribed."""
    found: dict[str, object] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
            found[path.name] = (record["text"], record["language"], record["segments"], record["source"])
        else:
            found[path.name] = path.read_text(encoding="utf-8")
    return found


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def one_worker(clips, model_root, tmp_path_factory) -> dict[str, object]:
    """The reference: the same clips on one worker process of one CPU thread, as each pool worker
    below (a process of its own: OpenMP takes its thread count once, as the engine is imported)."""
    out = tmp_path_factory.mktemp("one") / "out"
    saved = os.environ.get(FAKE_GPUS_VARIABLE)
    os.environ[FAKE_GPUS_VARIABLE] = "1"
    try:
        _, summary, text = run_pool(clips, out, model_root, [0], threads=1)
    finally:
        if saved is None:
            os.environ.pop(FAKE_GPUS_VARIABLE)
        else:
            os.environ[FAKE_GPUS_VARIABLE] = saved
    assert summary.done == len(clips), text
    return outputs(out)


def run_pool(clips, out: Path, model_root: Path, gpus: list[int], threads: int, **keywords):
    errors = io.StringIO()
    pool = GpuPool(collect_jobs([str(c) for c in clips], out), settings(), loader(model_root, threads),
                   OPTIONS, gpus, threads, errors=errors, **keywords)
    summary = pool.run()
    return pool, summary, errors.getvalue()


@pytest.fixture
def fake_gpus(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS_VARIABLE, "1")
    for name in (KILL_AT_VARIABLE, KILL_WHILE_WRITING_VARIABLE, KILL_ONCE_VARIABLE, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def done_names(text: str) -> list[str]:
    return [Path(m.group(3)).name for m in DONE_LINE.finditer(text)]


@pytest.mark.engine
@pytest.mark.parametrize("gpus", [[0, 1], [0, 1, 2]])
def test_files_are_shared_across_gpus_each_done_once_as_one_worker_does_them(
        fake_gpus, clips, model_root, one_worker, tmp_path, gpus):
    out = tmp_path / "out"
    pool, summary, text = run_pool(clips, out, model_root, gpus, threads=len(gpus))
    assert (summary.done, summary.skipped, summary.failed) == (len(clips), 0, []), text
    assert sorted(done_names(text)) == sorted(c.name for c in clips)  # one line each, exactly once
    assert [int(m.group(1)) for m in DONE_LINE.finditer(text)] == list(range(1, len(clips) + 1))
    assert sorted(pool.done_by) == list(range(len(clips))) and set(pool.done_by.values()) == set(gpus), pool.done_by
    assert outputs(out) == one_worker
    assert not partials(out) and not list(tmp_path.rglob("pwned")) and not Path("pwned").exists()
    # each worker said which GPU it counts as, and its share of the threads: one each here
    loaded = re.findall(r"GPU (\d+) \(worker \d+, CUDA_VISIBLE_DEVICES=(\d+)\): faster-whisper tiny\.en on cpu "
                        r"\(int8, (\d+) threads\)", text)
    assert sorted(int(g) for g, _, _ in loaded) == sorted(gpus) and {t for _, _, t in loaded} == {"1"}, text
    assert all(g == visible for g, visible, _ in loaded)  # each worker sees its GPU alone
    # longest first, from one queue
    seconds = {c.name: audio.probe(c).duration for c in clips}
    order = sorted(range(len(clips)), key=lambda i: -seconds[clips[i].name])
    assert pool.dispatched == order


@pytest.mark.engine
def test_the_threads_are_divided_between_the_workers(fake_gpus, clips, model_root, tmp_path):
    pool, summary, text = run_pool(clips[:2], tmp_path / "out", model_root, [0, 0], threads=5)
    assert summary.done == 2, text
    assert "2 workers on GPU 0,0, 2 CPU threads each" in text
    assert sorted(re.findall(r"GPU 0 \(worker (\d), CUDA_VISIBLE_DEVICES=0\): faster-whisper tiny\.en on cpu "
                             r"\(int8, (\d+) threads\)", text)) == [("1", "2"), ("2", "2")], text


def test_longest_first_guesses_an_unreadable_file_from_its_size(clips, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"\x00" * 16000 * 5)  # no audio: "5 seconds" by its size
    missing = tmp_path / "missing.wav"
    jobs = collect_jobs([str(clips[2]), str(broken), str(clips[1]), str(missing)], tmp_path / "out")
    order = [task.job.source.name for task in longest_first(jobs)]
    assert order == [clips[1].name, "broken.wav", clips[2].name, "missing.wav"]  # 8 s, ~5 s, 3 s, nothing


@pytest.mark.engine
def test_a_worker_killed_while_writing_loses_no_file_and_leaves_no_partial_output(
        fake_gpus, clips, model_root, one_worker, tmp_path, monkeypatch):
    victim = clips[3].name
    monkeypatch.setenv(KILL_WHILE_WRITING_VARIABLE, victim)
    monkeypatch.setenv(KILL_ONCE_VARIABLE, str(tmp_path / "killed-once"))
    out = tmp_path / "out"
    pool, summary, text = run_pool(clips, out, model_root, [0, 1], threads=2)
    assert (tmp_path / "killed-once").exists(), "the hook did not fire"
    assert (summary.done, summary.failed) == (len(clips), []), text
    assert sorted(done_names(text)) == sorted(c.name for c in clips)
    assert re.search(r"worker \d \(GPU \d\) died \(killed by SIGKILL\) while it held .*" + re.escape(victim), text)
    assert "starts in its place" in text
    assert not partials(out)
    assert outputs(out) == one_worker


@pytest.mark.engine
def test_a_file_that_kills_every_worker_fails_alone_and_the_rest_finish(fake_gpus, clips, model_root, tmp_path,
                                                                       monkeypatch):
    killer = clips[1].name  # the longest: the first one handed out
    monkeypatch.setenv(KILL_AT_VARIABLE, killer)
    out = tmp_path / "out"
    pool, summary, text = run_pool(clips, out, model_root, [0, 1], threads=2)
    assert summary.done == len(clips) - 1, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and killer in errors[0] and "every worker that transcribed it died" in errors[0], text
    assert errors[0].count("killed by SIGKILL") == 2
    assert sorted(done_names(text)) == sorted(c.name for c in clips if c.name != killer)
    assert not list(out.glob(f"{Path(killer).stem}.*")) and not partials(out)


@pytest.mark.engine
def test_bad_files_among_good_ones_are_reported_and_the_rest_finish(fake_gpus, clips, model_root, shared_data,
                                                                   tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.wav").write_text("this is a text file, not audio\n")
    (bad / "cut.mp3").write_bytes((shared_data / "multilingual.mp3").read_bytes()[:30000])
    inputs = [*clips[:3], bad / "empty.wav", bad / "notes.wav", bad / "cut.mp3", bad / "missing.wav"]
    pool, summary, text = run_pool(inputs, tmp_path / "out", model_root, [0, 1], threads=2)
    assert summary.done == 3, text
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    for name, reason in (("empty.wav", "empty"), ("notes.wav", "not an audio or video file"),
                         ("cut.mp3", "truncated"), ("missing.wav", "no such file")):
        assert sum(1 for line in errors if name in line and reason in line) == 1, (name, errors)
    assert len(errors) == 4 and sorted(done_names(text)) == sorted(c.name for c in clips[:3])


# ---- the whole command, pretending to be on a node with GPUs ---------------------------------------------

DRIVER = """
import sys
from whisper_hpc import devices
devices.resolve_device = lambda requested, backend: "cuda"
devices.engine_cuda_status = lambda backend: ("12.0", 2)
from whisper_hpc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def whisper_on_gpus(model_root, home, tmp_path, *arguments, env=None, popen=False):
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
                   "WHISPER_MODELS": str(model_root), "SLURM_CPUS_PER_TASK": "2", FAKE_GPUS_VARIABLE: "1",
                   **(env or {})}
    command = [sys.executable, "-c", DRIVER, *arguments]
    if popen:
        return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.engine
@pytest.mark.parametrize("how, env, seen", [
    (["--device_index", "0,1"], {}, ["0", "1"]),
    ([], {"CUDA_VISIBLE_DEVICES": "0,1"}, ["0", "1"]),
    ([], {"CUDA_VISIBLE_DEVICES": "3,5"}, ["3", "5"]),
    ([], {"SLURM_JOB_GPUS": "0,1"}, ["0", "1"]),
])
def test_whisper_hpc_runs_one_worker_per_gpu_it_was_given(clips, model_root, home, tmp_path, how, env, seen):
    out = tmp_path / "out"
    result = whisper_on_gpus(model_root, home, tmp_path, *map(str, clips[:3]), "--model", "tiny.en", "--device",
                             "cuda", "-o", str(out), "-f", "txt,json", *how, env=env)
    assert result.returncode == 0, result.stderr
    assert "2 workers on GPU 0,1, 1 CPU thread each; 3 files, longest first" in result.stderr
    for gpu, visible in enumerate(seen):
        assert f"GPU {gpu} (worker {gpu + 1}, CUDA_VISIBLE_DEVICES={visible}): faster-whisper tiny.en" in result.stderr
    assert "3 done, 0 skipped, 0 failed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c.stem}.{f}" for c in clips[:3] for f in ("txt", "json"))
    assert list((tmp_path / "tmp").iterdir()) == []  # the run directory, the workers' caches in it, all gone
    again = whisper_on_gpus(model_root, home, tmp_path, *map(str, clips[:3]), "--model", "tiny.en", "--device",
                            "cuda", "-o", str(out), "-f", "txt,json", *how, env=env)
    assert "0 done, 3 skipped, 0 failed" in again.stderr and "workers on GPU" not in again.stderr


def twelve_files(clips, folder: Path) -> Path:
    """`folder` with twelve copies of the clips, numbered."""
    folder.mkdir()
    for number in range(12):
        shutil.copy(clips[number % len(clips)], folder / f"{number:02d} {clips[number % len(clips)].name}")
    return folder


def until_first_done(process: subprocess.Popen, total: int) -> list[str]:
    """The run's stderr lines up to its first `[1/total] done` (asserted to come)."""
    lines = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if f"[1/{total}] done" in line or not line:
            break
    assert f"[1/{total}] done" in lines[-1], "".join(lines)
    return lines


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.engine
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_or_sigterm_stops_every_worker(clips, model_root, home, tmp_path, signum, code):
    many = twelve_files(clips, tmp_path / "many")
    out = tmp_path / "out"
    process = whisper_on_gpus(model_root, home, tmp_path, str(many), "--model", "tiny.en", "--device", "cuda",
                              "--device_index", "0,1", "-o", str(out), popen=True)
    lines = until_first_done(process, 12)
    workers = children_of(process.pid)
    process.send_signal(signum)
    process.wait(timeout=60)
    rest = process.stderr.read()
    assert process.returncode == code, "".join(lines) + rest
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(running(pid) for pid in workers)
    assert not partials(out) and "Traceback" not in rest
    finished = {p.stem for p in out.glob("*.json")}
    for path in out.iterdir():  # what was written is whole: every format of each finished file
        assert path.name.rsplit(".", 1)[0] in finished, path


# ---- workers on the CPU (--cpu_workers) -------------------------------------------------------------

def whisper_on_cpu(model_root, home, tmp_path, *arguments, popen=False):
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
                   "WHISPER_MODELS": str(model_root)}
    command = [str(BIN / "whisper-hpc"), *arguments]
    if popen:
        return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.mark.engine
def test_cpu_workers_share_the_files_and_threads_and_write_what_one_process_writes(clips, model_root, home, tmp_path):
    # No temperature fallback: its sampling draws differ from process to process.
    names = [str(c) for c in clips[:4]] + ["--temperature_increment_on_fallback", "None"]
    alone = whisper_on_cpu(model_root, home, tmp_path, *names, "--model", "tiny.en", "--device", "cpu", "--threads", "1",
                           "-o", str(tmp_path / "alone"), "-f", "txt,srt")
    assert alone.returncode == 0, alone.stderr
    assert "workers on" not in alone.stderr
    shared = whisper_on_cpu(model_root, home, tmp_path, *names, "--model", "tiny.en", "--device", "cpu", "--threads", "2",
                            "--cpu_workers", "2", "-o", str(tmp_path / "shared"), "-f", "txt,srt")
    assert shared.returncode == 0, shared.stderr
    assert "2 workers on the CPU, 1 CPU thread each; 4 files, longest first" in shared.stderr
    assert sorted(re.findall(r"worker (\d): faster-whisper tiny\.en on cpu \(int8, 1 threads\)", shared.stderr)) == ["1", "2"]
    assert "4 done, 0 skipped, 0 failed" in shared.stderr and sorted(done_names(shared.stderr)) == sorted(
        c.name for c in clips[:4])
    assert outputs(tmp_path / "shared") == outputs(tmp_path / "alone")
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.engine
def test_one_file_never_starts_cpu_workers_and_a_bad_count_is_refused(clips, model_root, home, tmp_path):
    one = whisper_on_cpu(model_root, home, tmp_path, str(clips[0]), "--model", "tiny.en", "--device", "cpu",
                         "--threads", "2", "--cpu_workers", "2", "-o", str(tmp_path / "out"), "-f", "txt")
    assert one.returncode == 0, one.stderr
    assert "workers on" not in one.stderr and "(int8, 2 threads)" in one.stderr  # the file keeps every thread
    refused = whisper_on_cpu(model_root, home, tmp_path, str(clips[0]), "--model", "tiny.en", "--cpu_workers", "0")
    assert refused.returncode == 2 and "--cpu_workers must be at least 1" in refused.stderr, refused.stderr
