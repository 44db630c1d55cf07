"""Hostile and broken audio through the real whisper-hpc: a WAV that lies about its length, things
that are not files, file lists with CRLF, NUL bytes and a BOM, thousands of missing entries, and
two hours of silence."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import need


def wav_claiming(path: Path, real_seconds: float, claimed_seconds: float) -> Path:
    """A real 16 kHz mono WAV of `real_seconds`, whose header claims `claimed_seconds`."""
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=frequency=440:duration={real_seconds}",
                    "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", "-y", str(path)], check=True)
    data = bytearray(path.read_bytes())
    start = data.find(b"data")
    claimed = int(claimed_seconds * 16000 * 2)
    data[start + 4:start + 8] = struct.pack("<I", claimed)
    data[4:8] = struct.pack("<I", claimed + start)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.system
def test_a_wav_claiming_ten_hours_but_holding_one_second_is_not_a_clean_success(cli, tmp_path):
    liar = wav_claiming(tmp_path / "liar.wav", 1, 10 * 3600)
    result = cli(str(liar), "--model", "tiny.en", "-o", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    assert f"error: {liar}: truncated or damaged: decoded 1.0 s of 36000.0 s" in result.stderr
    assert "--ignore_decode_errors True" in result.stderr and "0 done" in result.stderr
    assert not (tmp_path / "out" / "liar.json").exists()
    kept = cli(str(liar), "--model", "tiny.en", "-o", str(tmp_path / "out"), "--ignore_decode_errors", "True")
    assert kept.returncode == 0 and (tmp_path / "out" / "liar.json").exists(), kept.stderr


@pytest.mark.system
def test_devices_fifos_and_sockets_are_refused_by_type_before_any_read(cli, tmp_path):
    zero, random_, fifo, sock = (tmp_path / n for n in ("zero.wav", "random.mp3", "fifo.wav", "socket.wav"))
    zero.symlink_to("/dev/zero")
    random_.symlink_to("/dev/urandom")
    os.mkfifo(fifo)  # opening it would block forever: the timeout below proves it is never opened
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    try:
        started = time.monotonic()
        result = cli(str(zero), str(random_), str(fifo), str(sock), "--model", "tiny.en", "-o", str(tmp_path / "out"))
        assert time.monotonic() - started < 120
    finally:
        server.close()
    assert result.returncode == 1, result.stderr
    for path, kind in ((zero, "a character device"), (random_, "a character device"), (fifo, "a FIFO (named pipe)"),
                       (sock, "a socket")):
        assert f"error: {path}: is {kind}, not an audio file" in result.stderr
    assert "empty (0 bytes)" not in result.stderr and "0 done, 0 skipped, 4 failed" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.system
def test_file_lists_with_crlf_nul_bytes_a_bom_and_ten_thousand_missing_entries(cli, tmp_path, shared_data):
    audio = tmp_path / "jfk.flac"
    audio.write_bytes((shared_data / "jfk.flac").read_bytes())
    listing = tmp_path / "list.txt"
    missing = [str(tmp_path / f"missing-{i}.wav") for i in range(10_000)]
    listing.write_bytes(b"\xef\xbb\xbf" + f"{audio}\r\n".encode() + b"bad\x00name.wav\r\n"
                        + "".join(f"{m}\r\n" for m in missing).encode())
    started = time.monotonic()
    result = cli("--file_list", str(listing), "--model", "tiny.en", "-o", str(tmp_path / "out"), "--output_format", "txt")
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "whisper-hpc: 1 done, 0 skipped, 10001 failed"
    assert "error: bad\\x00name.wav: the name holds a NUL byte" in result.stderr
    assert f"error: {missing[-1]}: no such file" in result.stderr
    assert (tmp_path / "out" / "jfk.txt").read_text().strip()
    assert elapsed < 600  # bounded: no model load or decoder start per missing file


@pytest.mark.system
@pytest.mark.engine
def test_two_hours_of_silence_finish_fast_in_bounded_memory_with_no_invented_words(cli, tmp_path):
    need(subprocess.run(["which", "ffmpeg"], capture_output=True).returncode == 0, "ffmpeg is needed")
    silence = tmp_path / "silence.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "7200",
                    "-c:a", "flac", "-y", str(silence)], check=True)
    result = cli(str(silence), "--model", "tiny.en", "-o", str(tmp_path / "out"), wrap=["/usr/bin/time", "-v"])
    assert result.returncode == 0, result.stderr
    peak_kb = int(next(line for line in result.stderr.splitlines() if "Maximum resident" in line).split()[-1])
    assert peak_kb < 1_500_000, peak_kb  # ten-minute windows: the 2 h never sit in memory at once
    assert (tmp_path / "out" / "silence.txt").read_text() == ""
    record = json.loads((tmp_path / "out" / "silence.json").read_text())
    assert record["segments"] == [] and record["duration"] == pytest.approx(7200, abs=1)
