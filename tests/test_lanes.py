"""Several files at once in one process (whisper_hpc.lanes): threads sharing one model on the CPU.

How many lanes (sizing.file_lanes) and the lanes' bookkeeping are driven with a fake decoder and
engine (pure logic); the whole command runs real tiny.en on real clips with hostile names, and
must write what one file at a time writes.
"""

from __future__ import annotations

import io
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest

from test_pool import (
    DONE_LINE, FakeEngine, clips, done_names, fake_decoder, fake_jobs, outputs, partials, twelve_files,
    until_first_done, whisper_on_cpu,
)
from whisper_hpc import lanes, sizing
from whisper_hpc.assemble import file_lanes
from whisper_hpc.engines import DecodeOptions
from whisper_hpc.engines.base import EngineError
from whisper_hpc.pool import longest_first
from whisper_hpc.progress import Progress
from whisper_hpc.runner import RunSettings
from whisper_hpc.writers import FORMATS

__all__ = ["clips", "fake_decoder"]  # fixtures shared with test_pool


@pytest.mark.parametrize("threads, durations, expected", [
    (2, [5, 5, 5], 2),
    (4, [10, 10, 10, 10], 4),
    (8, [10, 10, 10], 3),  # a lane per file at most
    (4, [10, 5, 5], 2),  # the longest is half of the audio: two lanes finish together
    (4, [60, 5, 5], 1),  # one long file: it keeps every thread
    (2, [3], 1),
    (1, [5, 5, 5], 1),
    (2, [], 1),
    (2, [0, 0, 0], 2),  # nothing known of the durations: a lane per thread
])
def test_lanes_are_as_many_as_keep_the_longest_file_within_a_lanes_share(threads, durations, expected):
    assert sizing.file_lanes(threads, durations) == expected


def request_like(**fields):
    from types import SimpleNamespace

    return SimpleNamespace(**{"backend": "faster-whisper", "speakers": False, "cpu_workers": None,
                              "num_workers": None, **fields})


@pytest.mark.parametrize("fields, device, batch_size, verbose, expected, said", [
    ({}, "cpu", 0, False, None, ""),  # chosen from the files when the run starts
    ({"num_workers": 3}, "cpu", 0, False, 3, ""),
    ({"num_workers": 3}, "cuda", 0, False, 1, "the run is on CUDA"),
    ({"num_workers": 2, "backend": "openai-whisper"}, "cpu", 0, False, 1, "needs --backend faster-whisper"),
    ({"num_workers": 2}, "cpu", 8, False, 1, "batched inference"),
    ({"num_workers": 2, "speakers": True}, "cpu", 0, False, 1, "--diarize"),
    ({"num_workers": 2}, "cpu", 0, True, 1, "--verbose"),
    ({"num_workers": 2, "cpu_workers": 2}, "cpu", 0, False, 1, "--cpu_workers"),
    ({"backend": "openai-whisper"}, "cpu", 0, False, 1, ""),  # not asked for: no notice
])
def test_lanes_run_only_where_they_can_and_a_count_that_cannot_be_honoured_says_why(
        capsys, fields, device, batch_size, verbose, expected, said):
    chosen = file_lanes(request_like(**fields), device, DecodeOptions(batch_size=batch_size),
                        RunSettings(formats=("txt",), verbose=verbose))
    assert chosen == expected
    told = capsys.readouterr().err
    assert (said in told and "--num_workers" in told) if said else told == ""


# ---- the lanes' bookkeeping, with a fake decoder and engine ----------------------------------------------

@dataclass
class CountingLoader:
    """Loads a FakeEngine, counting the loads; optionally failing as a model that cannot load does."""

    fail: bool = False
    loads: int = 0

    def __call__(self, compute_type=None):
        self.loads += 1
        time.sleep(0.05)  # long enough for every lane to ask at once
        if self.fail:
            raise EngineError("cannot load the model (made up)")
        return FakeEngine()


def run_lanes_on(tmp_path, windows: dict[str, int], count: int, loader=None, **decoder):
    jobs = fake_jobs(tmp_path, list(windows))
    errors = io.StringIO()
    running = lanes.Lanes(longest_first(jobs), RunSettings(formats=("txt", "srt")), loader or CountingLoader(),
                          DecodeOptions(), Progress(len(jobs), errors), errors, None)
    return jobs, running, running.run(count), errors.getvalue()


def test_every_file_is_done_once_by_one_of_the_lanes_and_the_model_loaded_once(fake_decoder, tmp_path):
    windows = {f"f{number:02d}.wav": 1 + number % 4 for number in range(11)}
    fake_decoder(windows)
    loader = CountingLoader()
    jobs, running, summary, text = run_lanes_on(tmp_path, windows, 3, loader)
    assert (summary.done, summary.failed) == (11, []) and loader.loads == 1
    assert sorted(done_names(text)) == sorted(windows)
    assert [int(m.group(1)) for m in DONE_LINE.finditer(text)] == list(range(1, 12))  # in the order they finish
    for name, count in windows.items():
        assert (tmp_path / "out" / name).with_suffix(".txt").read_text().split() == ["words"] * count
    assert not partials(tmp_path / "out")


def test_a_bad_file_fails_alone_in_its_lane_and_the_rest_finish(fake_decoder, tmp_path):
    windows = {"one.wav": 3, "two.wav": 3, "three.wav": 2, "four.wav": 2, "five.wav": 1}
    fake_decoder(windows, broken={"two.wav"}, unreadable={"four.wav"})
    jobs, running, summary, text = run_lanes_on(tmp_path, windows, 2)
    assert summary.done == 3 and len(summary.failed) == 2, text
    failures = sorted(line for line in text.splitlines() if line.startswith("error: "))
    assert failures == sorted([f"error: {tmp_path / 'in' / 'two.wav'}: truncated or damaged: decoded 1.0 s of 9.0 s "
                               "(made up)",
                               f"error: {tmp_path / 'in' / 'four.wav'}: not an audio or video file ffmpeg can read "
                               "(made up)"])
    assert sorted(done_names(text)) == ["five.wav", "one.wav", "three.wav"]
    assert not list((tmp_path / "out").glob("two.*")) and not list((tmp_path / "out").glob("four.*"))


def test_a_model_that_cannot_load_ends_the_run_once_loaded_once(fake_decoder, tmp_path):
    windows = {f"f{number}.wav": 2 for number in range(6)}
    fake_decoder(windows)
    loader = CountingLoader(fail=True)
    before = threading.active_count()
    with pytest.raises(EngineError, match="cannot load the model"):
        run_lanes_on(tmp_path, windows, 3, loader)
    assert loader.loads == 1 and not list((tmp_path / "out").glob("*.txt"))
    deadline = time.monotonic() + 3
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before  # every lane and its decoder ended


def test_a_stop_waits_for_the_transcripts_being_written_and_begins_no_other(fake_decoder, tmp_path, monkeypatch):
    windows = {f"f{number}.wav": 1 for number in range(8)}
    fake_decoder(windows)
    writing, written = threading.Event(), []

    def slow_write(job, transcripts, settings):
        writing.set()
        time.sleep(0.5)
        written.append(job.source.name)

    monkeypatch.setattr(lanes, "write_all", slow_write)
    jobs = fake_jobs(tmp_path, list(windows))
    errors = io.StringIO()
    running = lanes.Lanes(longest_first(jobs), RunSettings(formats=("txt",)), CountingLoader(), DecodeOptions(),
                          Progress(len(jobs), errors), errors, None)
    threads = [threading.Thread(target=running.lane, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert writing.wait(timeout=10)
    running.stop()
    assert len(written) == 1  # the write under way was finished before stop returned
    for thread in threads:
        thread.join(timeout=5)
    assert not any(thread.is_alive() for thread in threads)
    assert len(written) == 1 and running.summary.done == 1  # it counts as done, and no other began


# ---- the whole command, real tiny.en on real clips ---------------------------------------------------------

def whisper(model_root, home, tmp_path, *arguments, popen=False):
    return whisper_on_cpu(model_root, home, tmp_path, "--model", "tiny.en", "--device", "cpu", *arguments, popen=popen)


@pytest.mark.engine
def test_files_at_once_write_what_one_at_a_time_writes_and_bad_files_fail_alone(
        clips, model_root, home, tmp_path, shared_data):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.wav").write_text("this is a text file, not audio\n")
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-t", "6", "-i", str(shared_data / "jfk.flac"),
                    str(bad / "whole.mp3")], check=True)
    (bad / "cut.mp3").write_bytes((bad / "whole.mp3").read_bytes()[:20000])  # claims 6 s (a long claim: one lane)
    (bad / "whole.mp3").unlink()
    # No temperature fallback: its sampling draws differ from run to run.
    names = [*map(str, clips), "--temperature_increment_on_fallback", "None", "-f", "txt,srt,json"]
    alone = whisper(model_root, home, tmp_path, *names, "--threads", "2", "--num_workers", "1",
                    "-o", str(tmp_path / "alone"))
    assert alone.returncode == 0 and "at once" not in alone.stderr, alone.stderr
    together = whisper(model_root, home, tmp_path, *names, *map(str, sorted(bad.iterdir())), "--threads", "2",
                       "-o", str(tmp_path / "together"))
    assert together.returncode == 1, together.stderr
    assert f"2 files at once on one model, 1 CPU thread each; {len(clips) + 3} files, longest first" in together.stderr
    assert "faster-whisper tiny.en on cpu (int8, 1 threads, 2 replicas)" in together.stderr
    assert f"{len(clips)} done, 0 skipped, 3 failed" in together.stderr
    assert sorted(done_names(together.stderr)) == sorted(c.name for c in clips)  # each exactly once
    errors = [line for line in together.stderr.splitlines() if line.startswith("error: ")]
    for name, reason in (("empty.wav", "empty"), ("notes.wav", "not an audio or video file"), ("cut.mp3", "truncated")):
        assert sum(1 for line in errors if name in line and reason in line) == 1, (name, errors)
    assert outputs(tmp_path / "together") == outputs(tmp_path / "alone")
    assert not partials(tmp_path / "together") and not list(tmp_path.rglob("pwned"))
    assert list((tmp_path / "tmp").iterdir()) == []
    again = whisper(model_root, home, tmp_path, *names, "--threads", "2", "-o", str(tmp_path / "together"))
    assert f"0 done, {len(clips)} skipped, 0 failed" in again.stderr and "at once" not in again.stderr


@pytest.mark.engine
def test_one_long_file_keeps_every_thread_and_num_workers_1_runs_one_at_a_time(clips, model_root, home, tmp_path,
                                                                                shared_data):
    long_and_short = [str(shared_data / "sample.wav"), str(clips[0])]  # 30 s and 5 s
    chosen = whisper(model_root, home, tmp_path, *long_and_short, "--threads", "2", "-o", str(tmp_path / "a"), "-f",
                     "txt")
    assert chosen.returncode == 0, chosen.stderr
    assert "at once" not in chosen.stderr and "(int8, 2 threads)" in chosen.stderr
    one = whisper(model_root, home, tmp_path, *map(str, clips[:3]), "--threads", "2", "--num_workers", "1",
                  "-o", str(tmp_path / "b"), "-f", "txt")
    assert one.returncode == 0 and "at once" not in one.stderr and "(int8, 2 threads)" in one.stderr, one.stderr
    refused = whisper(model_root, home, tmp_path, str(clips[0]), "--num_workers", "0")
    assert refused.returncode == 2 and "--num_workers must be at least 1" in refused.stderr, refused.stderr


@pytest.mark.engine
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_or_sigterm_keeps_every_written_file_whole(clips, model_root, home, tmp_path, signum, code):
    many = twelve_files(clips, tmp_path / "many")
    out = tmp_path / "out"
    process = whisper(model_root, home, tmp_path, str(many), "--threads", "2", "-o", str(out), popen=True)
    lines = until_first_done(process, 12)
    assert any("files at once" in line for line in lines), "".join(lines)
    process.send_signal(signum)
    process.wait(timeout=60)
    rest = process.stderr.read()
    assert process.returncode == code, "".join(lines) + rest
    assert not partials(out) and "Traceback" not in rest
    finished = {p.stem for p in out.glob("*.json")}
    assert 1 <= len(finished) < 12
    for path in out.iterdir():  # what was written is whole: every format of each finished file
        assert path.name.rsplit(".", 1)[0] in finished, path
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{stem}.{f}" for stem in finished for f in FORMATS)
    assert list((tmp_path / "tmp").iterdir()) == []
