"""Decode any file ffmpeg reads into mono 16 kHz float32, in bounded windows."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from whisper_hpc.errors import WhisperHpcError, first_line

SAMPLE_RATE = 16000
WINDOW_SECONDS = 600.0  # audio held in memory at once; longer files are cut at quiet points
CUT_SEARCH_SECONDS = 20.0  # where, before a window's end, to look for the quietest moment
FRAME_SECONDS = 0.1
READ_BLOCK = 1 << 20
INAUDIBLE_PEAK = 10 ** (-60 / 20)  # -60 dBFS: below any recorded speech, above dither noise


class AudioError(WhisperHpcError):
    """A file we cannot turn into audio; the message names the file and what to do."""


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    duration: float | None  # what ffprobe reports (for WAV it is clipped to the bytes that are there)
    channels: int
    format_name: str
    claimed_duration: float | None = None  # what the file's own header promises, where it says

    @property
    def expected_duration(self) -> float | None:
        known = [d for d in (self.duration, self.claimed_duration) if d]
        return max(known) if known else None


@dataclass(frozen=True)
class AudioWindow:
    offset: float  # seconds from the start of the file
    samples: np.ndarray  # float32, mono, 16 kHz

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def between(self, start: float, end: float) -> np.ndarray:
        """The samples from `start` to `end` seconds into the window."""
        return self.samples[max(0, int(start * SAMPLE_RATE)):max(0, int(end * SAMPLE_RATE))]


def inaudible(samples: np.ndarray) -> bool:
    """Nothing anyone could hear: empty, or never louder than INAUDIBLE_PEAK (digital silence, a muted channel)."""
    return samples.size == 0 or float(np.max(np.abs(samples))) < INAUDIBLE_PEAK


def ffmpeg_url(path: Path) -> str:
    """A file: URL, so names with ':' or a leading '-' are never read as options or protocols."""
    return "file:" + str(path)


def require_tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise AudioError(f"{name} is not installed or not on PATH; install ffmpeg (Debian: apt-get install ffmpeg)")
    return found


FILE_KINDS = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO (named pipe)",
              stat.S_IFSOCK: "a socket"}


def probe(path: Path) -> AudioInfo:
    """Check that `path` is readable media with an audio stream, before any model time is spent.

    Only regular files are opened: a device (a link to /dev/zero or /dev/urandom), a FIFO or a
    socket is refused by its type, before anything reads it."""
    if "\x00" in str(path):
        shown = str(path).replace("\x00", "\\x00")
        raise AudioError(f"{shown}: the name holds a NUL byte, which no file name can; fix the file list")
    try:
        info = path.stat()
    except FileNotFoundError:
        kind = "a broken symbolic link" if path.is_symlink() else None
        raise AudioError(f"{path}: no such file{f' ({kind})' if kind else ''}; check the path") from None
    except OSError as error:
        raise AudioError(f"{path}: cannot be read ({error.strerror}); check its permissions") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if not stat.S_ISREG(info.st_mode):
        kind = FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise AudioError(f"{path}: is {kind}, not an audio file; give a recording stored in a file")
    if info.st_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes); re-copy or re-record it")
    command = [
        require_tool("ffprobe"), "-v", "error", "-show_entries",
        "format=duration,format_name:stream=codec_type,channels,duration", "-of", "json", ffmpeg_url(path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    data = json.loads(result.stdout or "{}") if result.returncode == 0 else {}
    if not data.get("format"):
        reason = first_line(result.stderr) or "unrecognised format"
        raise AudioError(f"{path}: not an audio or video file ffmpeg can read ({reason}); convert it to WAV, FLAC or MP3")
    audio_streams = [s for s in data.get("streams", []) if s.get("codec_type") == "audio"]
    if not audio_streams:
        raise AudioError(f"{path}: has no audio stream (video only?); nothing to transcribe")
    fmt = data["format"]
    # The audio stream's own duration: a video's container may run longer than its sound.
    duration = seconds_or_none(audio_streams[0].get("duration")) or seconds_or_none(fmt.get("duration"))
    format_name = fmt.get("format_name", "?")
    claimed = wav_claimed_seconds(path) if format_name in ("wav", "rf64", "w64") else None
    return AudioInfo(path, duration, int(audio_streams[0].get("channels") or 1), format_name, claimed)


def wav_claimed_seconds(path: Path) -> float | None:
    """The length a RIFF WAVE header promises (its data chunk's size over the byte rate); None when
    the header says nothing usable (streamed WAV, RF64 placeholder, no fmt chunk)."""
    try:
        with path.open("rb") as stream:
            head = stream.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = None
            for _ in range(64):  # chunks before the data; a header never needs more
                chunk = stream.read(8)
                if len(chunk) < 8:
                    return None
                name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if name == b"fmt ":
                    body = stream.read(size + size % 2)
                    byte_rate = int.from_bytes(body[8:12], "little") if len(body) >= 12 else None
                    continue
                if name == b"data":
                    unknown = size in (0, 0xFFFFFFFF)
                    return None if unknown or not byte_rate else size / byte_rate
                stream.seek(size + size % 2, 1)
    except OSError:
        return None
    return None


def seconds_or_none(value: object) -> float | None:
    try:
        return float(value) if value not in (None, "N/A") else None
    except (TypeError, ValueError):
        return None


def decode_command(path: Path, channel: int | None) -> list[str]:
    mix = ["-ac", "1"] if channel is None else ["-af", f"pan=mono|c0=c{channel}"]
    return [
        require_tool("ffmpeg"), "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0",
        "-i", ffmpeg_url(path), "-map", "0:a:0", "-vn", "-sn", "-dn",
        *mix, "-ar", str(SAMPLE_RATE), "-f", "f32le", "-",
    ]


def quietest_cut(samples: np.ndarray, search_seconds: float = CUT_SEARCH_SECONDS) -> int:
    """Index of the quietest 100 ms frame in the last `search_seconds`: a cut there splits no word."""
    frame = int(FRAME_SECONDS * SAMPLE_RATE)
    search = min(int(search_seconds * SAMPLE_RATE), len(samples) // 2) // frame * frame
    if search < frame:
        return len(samples)
    start = len(samples) - search
    energy = np.square(samples[start:].reshape(-1, frame)).mean(axis=1)
    latest_quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))
    return start + latest_quietest * frame + frame // 2


def stream_windows(
    info: AudioInfo,
    channel: int | None = None,
    window_seconds: float = WINDOW_SECONDS,
    strict: bool = True,
) -> Iterator[AudioWindow]:
    """Yield the audio in windows of at most `window_seconds`, cut at quiet points.

    With `strict`, decoding errors and a file much shorter than its header says (a truncated
    download) raise AudioError after the last window.
    """
    window = int(window_seconds * SAMPLE_RATE)
    # ffmpeg's messages go to a file: a pipe read only at the end would fill up and deadlock.
    messages = tempfile.TemporaryFile()
    process = subprocess.Popen(
        decode_command(info.path, channel), stdout=subprocess.PIPE, stderr=messages, stdin=subprocess.DEVNULL
    )
    pending = np.empty(0, dtype=np.float32)
    blocks: list[np.ndarray] = []
    buffered = 0
    offset = 0
    carry = b""
    try:
        while True:
            block = process.stdout.read(READ_BLOCK)
            if block:
                data = carry + block
                usable = len(data) // 4 * 4
                carry = data[usable:]
                blocks.append(np.frombuffer(data[:usable], dtype=np.float32))
                buffered += usable // 4
            if buffered >= window + window // 10 or not block:
                pending = np.concatenate([pending, *blocks])
                blocks, buffered = [], len(pending)
                while len(pending) >= window + window // 10 or (not block and len(pending) > window):
                    cut = quietest_cut(pending[:window])
                    yield AudioWindow(offset / SAMPLE_RATE, pending[:cut].copy())
                    offset += cut
                    pending = pending[cut:]
                buffered = len(pending)
            if not block:
                break
        returncode = process.wait()
        messages.seek(0)
        errors = messages.read(1 << 16).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        messages.close()
    total = offset + len(pending)
    if returncode != 0:
        raise AudioError(f"{info.path}: ffmpeg could not decode the audio ({first_line(errors)})")
    if total == 0:
        raise AudioError(f"{info.path}: contains no audio samples")
    if strict:
        check_complete(info, total / SAMPLE_RATE, errors)
    if len(pending):
        yield AudioWindow(offset / SAMPLE_RATE, pending)


def check_complete(info: AudioInfo, decoded_seconds: float, errors: str) -> None:
    """Refuse a damaged file rather than silently transcribing part of it."""
    expected = info.expected_duration
    if expected and decoded_seconds < 0.9 * expected - 1.0:
        raise AudioError(
            f"{info.path}: truncated or damaged: decoded {decoded_seconds:.1f} s of {expected:.1f} s "
            f"({first_line(errors) or 'stream ends early'}); re-copy the file, or pass --ignore_decode_errors True"
        )
    if errors.strip():
        raise AudioError(
            f"{info.path}: damaged audio ({first_line(errors)}); re-copy the file, "
            "or pass --ignore_decode_errors True to transcribe what can be decoded"
        )


class SamplesDigest:
    """SHA-256 of the samples Whisper is given, channel by channel: the same whether taken while
    transcribing (window by window) or apart (`samples_sha256`), and for a lossless re-encode."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def channel(self, channel: int | None) -> None:
        self.hash.update(f"channel {channel}\n".encode())

    def add(self, samples: np.ndarray | bytes) -> None:
        self.hash.update(samples if isinstance(samples, bytes) else samples.tobytes())

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def samples_sha256(info: AudioInfo, channels: Sequence[int | None] = (None,), seconds: float | None = None) -> str | None:
    """SamplesDigest of the file (or of its first `seconds`), decoded apart; None when ffmpeg cannot
    decode it (the transcription then says why)."""
    digest = SamplesDigest()
    for channel in channels:
        digest.channel(channel)
        command = decode_command(info.path, channel)
        if seconds is not None:
            command[-1:-1] = ["-t", f"{seconds:g}"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            for block in iter(lambda: process.stdout.read(READ_BLOCK), b""):
                digest.add(block)
        finally:
            process.stdout.close()  # an interrupted ffmpeg ends on the closed pipe
            code = process.wait()
        if code != 0:
            return None
    return digest.hexdigest()


def decode(path: Path, channel: int | None = None) -> np.ndarray:
    """The whole file at once (for short files and tests)."""
    info = probe(path)
    return np.concatenate([w.samples for w in stream_windows(info, channel, window_seconds=1e9)])
