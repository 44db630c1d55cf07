"""Interrupted and starved runs: SIGKILL mid-transcription, SIGTERM mid-diarization, a full disk.

What must hold each time: transcripts already written stay intact, nothing half-written appears
under a transcript's name, and after SIGTERM the run's temporary folders are gone.
"""

from __future__ import annotations

import hashlib
import shutil
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from conftest import BIN, IN_CI, need
from test_diarization import pipeline_dir  # noqa: F401  (the session fixture)
from whisper_hpc.writers import FORMATS

pytestmark = [pytest.mark.system, pytest.mark.engine]


def ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *arguments], check=True)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def start(arguments: list[str], model_root: Path, home: Path, scratch: Path) -> subprocess.Popen:
    environment = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch),
                   "WHISPER_MODELS": str(model_root), "SLURM_CPUS_PER_TASK": "2", "LANG": "C.UTF-8"}
    return subprocess.Popen([str(BIN / "whisper-hpc"), *arguments], env=environment, stderr=subprocess.PIPE, text=True)


def wait_for(process: subprocess.Popen, text: str, timeout: float = 600) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)}")


def test_sigkill_mid_file_keeps_finished_transcripts_and_writes_nothing_half(model_root, shared_data, tmp_path, home):
    long_audio = tmp_path / "long.wav"
    ffmpeg("-stream_loop", "5", "-i", str(shared_data / "multilingual.mp3"), str(long_audio))
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    process = start([str(shared_data / "jfk.flac"), str(long_audio), "--model", "tiny.en", "-o", str(out)],
                    model_root, home, scratch)
    wait_for(process, "[1/2] done")
    finished = digest(out)
    assert sorted(finished) == sorted(f"jfk.{f}" for f in FORMATS)
    time.sleep(2)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert digest(out) == finished  # nothing of long.wav under a transcript's name, jfk untouched
    again = start([str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(out)], model_root, home, scratch)
    assert again.wait(timeout=600) == 0
    assert "skip" in again.stderr.read() and digest(out) == finished  # the kill cost nothing already done


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signal_mid_diarization_writes_nothing_and_sigterm_removes_its_temporary_folders(
        model_root, shared_data, tmp_path, home, pipeline_dir, stop):  # noqa: F811
    conversation = tmp_path / "conversation.wav"
    ffmpeg("-stream_loop", "9", "-i", str(shared_data / "sample.wav"), str(conversation))
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    process = start([str(conversation), "--model", "tiny.en", "--diarize", "-o", str(out)], model_root, home, scratch)
    wait_for(process, "speaker diarization: pyannote pipeline")
    time.sleep(3)
    process.send_signal(stop)
    assert process.wait(timeout=120) in (128 + signal.SIGTERM, -signal.SIGKILL)
    assert not out.exists() or list(out.iterdir()) == []  # no transcript, not even a partial one
    if stop == signal.SIGTERM:  # a killed process cannot clean up; the next run's folder is its own
        assert list(scratch.iterdir()) == []
    assert list(home.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (root only; CI runs as root), unmounted afterwards."""
    need(os.geteuid() == 0, "mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        if IN_CI:
            pytest.fail(f"CI must run this tier, but mount failed: {result.stderr.strip()}")
        pytest.skip(reason=f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_file_clearly_and_leaves_earlier_transcripts_intact(cli, shared_data, small_disk):
    out = small_disk / "out"
    assert cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(out), check=True).returncode == 0
    earlier = digest(out)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as stream:  # fill the disk, then give back a few KiB
        try:
            while stream.write(b"\0" * 4096):
                pass
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 6 * 1024))
    result = cli(str(shared_data / "jfk.flac"), "--model", "tiny.en", "-o", str(out),
                 "--word_timestamps", "True", "--overwrite", "True")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "--output_dir" in errors[0], errors
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    now = digest(out)
    assert sorted(now) == sorted(earlier)
    for name, value in now.items():  # each transcript is the earlier one or a whole new one, never a cut one
        if value == earlier[name]:
            continue
        if name.endswith(".docx"):
            assert zipfile.is_zipfile(out / name) and zipfile.ZipFile(out / name).testzip() is None, name
        else:
            text = (out / name).read_text()
            assert text.endswith("\n") and "And so" in text, name
    assert now["jfk.json"] == earlier["jfk.json"]  # json is written last: the file is not marked done anew


def test_sigterm_mid_import_stages_nothing_and_leaves_no_temporary_folders(model_root, tmp_path, home):
    root, scratch = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    scratch.mkdir()
    shutil.copytree(model_root / "tiny.en", root / "tiny.en")
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
    models = [str(BIN / "whisper-models"), "--root", str(root)]
    subprocess.run([*models, "export", "tiny.en", "--format", "transformers", "--output", str(tmp_path / "hf")],
                   env=env, check=True, capture_output=True, timeout=600)
    process = subprocess.Popen([*models, "import", str(tmp_path / "hf"), "--name", "tiny-x", "--quantization", "int8"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "converting with CTranslate2" in line:
            break
    time.sleep(0.2)  # the conversion takes about a second: the signal lands inside it
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, "".join(seen) + process.stdout.read()
    assert not (root / "tiny-x").exists()
    assert not [p for p in (root / ".staging").rglob("*") if "tiny-x" in p.name and not p.name.endswith(".lock")]
    assert list(scratch.iterdir()) == [] and list(home.iterdir()) == []


SIGTERM_INSIDE_TORCH_SAVE = """
import os, signal, sys
from pathlib import Path

import torch

from whisper_hpc.errors import entry_point
from whisper_hpc.files import write_atomically


class SignalledOnSecondWrite:
    def __init__(self, stream):
        self.stream = stream
        self.writes = 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:  # a record is half-written: torch's zip writer then fails to close
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside the writer
        return self.stream.write(data)

    def __getattr__(self, name):
        return getattr(self.stream, name)


@entry_point("whisper-models")
def main():
    checkpoint = {"weights": torch.zeros(1 << 20)}
    write_atomically(Path(sys.argv[1]), lambda stream: torch.save(checkpoint, SignalledOnSecondWrite(stream)))
    return 0


sys.exit(main())
"""


def test_sigterm_inside_torch_save_exits_143_and_leaves_no_partial_file(tmp_path):
    """torch.save's writer turns SIGTERM's SystemExit into RuntimeError ("unexpected pos"): the
    program still ends as terminated, with no traceback, and the atomic writer leaves nothing."""
    target = tmp_path / "out" / "openai-whisper.pt"
    ran = subprocess.run([str(BIN / "python"), "-c", SIGTERM_INSIDE_TORCH_SAVE, str(target)],
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 128 + signal.SIGTERM, ran.stderr
    assert "unexpected error" not in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
    assert list(target.parent.iterdir()) == []
