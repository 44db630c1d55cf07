"""Decode any file ffmpeg reads into mono 16 kHz float32, in bounded windows.

Decoding runs in-process, with PyAV (`av`: libavformat, libavcodec and libswresample, the
libraries ffmpeg is made of): no ffprobe or ffmpeg process per file, which dominates a batch of
thousands of short clips. The mono mix is libswresample's, as ffmpeg's `-ac 1` (stereo: the mean
of the two channels; more channels: its standard downmix); one channel is taken as decoded.

ffmpeg stays the fallback: a file PyAV cannot open, or whose codec its build lacks (libcodec2,
say), is probed and decoded by the ffprobe and ffmpeg processes as before; a file both refuse
gets their message. One file uses one decoder for everything (`AudioInfo.decoder`), so the
samples `samples_sha256` hashes are the ones `stream_windows` yields.

WHISPER_HPC_DECODER=ffmpeg forces the ffprobe/ffmpeg processes for every file (for debugging and
benchmarks); `pyav`, or unset, is the in-process decoder with that fallback.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from whisper_hpc.errors import WhisperHpcError, first_line

SAMPLE_RATE = 16000
WINDOW_SECONDS = 600.0  # audio held in memory at once; longer files are cut at quiet points
CUT_SEARCH_SECONDS = 20.0  # where, before a window's end, to look for the quietest moment
FRAME_SECONDS = 0.1
READ_BLOCK = 1 << 20
BLOCK_SAMPLES = READ_BLOCK // 4  # samples the in-process decoder gathers before handing them on
MAX_ERROR_RATE = 2 / 3  # ffmpeg's -max_error_rate: more packets failing than this fails the decode
MESSAGES_KEPT = 100  # of a decoder's error messages (only the first is shown)
DECODER_VARIABLE = "WHISPER_HPC_DECODER"
DECODERS = ("pyav", "ffmpeg")
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
    decoder: str | None = None  # "pyav" (in-process) or "ffmpeg" (the processes); None: as WHISPER_HPC_DECODER says

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
    if chosen_decoder() == "pyav":
        found = probe_in_process(path)
        if found is not None:
            return found
    return probe_with_ffprobe(path)


def chosen_decoder() -> str:
    """The decoder WHISPER_HPC_DECODER asks for: "pyav" (the default) or "ffmpeg"."""
    value = os.environ.get(DECODER_VARIABLE, "").strip().lower() or "pyav"
    if value not in DECODERS:
        raise AudioError(f"{DECODER_VARIABLE}={value}: no such decoder; set it to pyav or ffmpeg, or unset it")
    return value


def import_av():
    """PyAV, imported on first use (so `--help` stays instant); None where it is not installed."""
    try:
        import av
        import av.logging
    except ImportError:
        return None
    return av


def pyav_url(path: Path) -> str:
    """What av.open is given: like ffmpeg_url, since av.open(str) reads 'a:b.wav' or 'http:x.wav'
    as protocols; with file: in front, libav's own file protocol opens the local file."""
    return ffmpeg_url(path)


@contextmanager
def libav_messages(sink: list[str]) -> Iterator[Callable[[str], None]]:
    """libav's error messages, captured into `sink` (as ffmpeg's `-loglevel error` would print
    them) instead of reaching stderr; held only while PyAV works, never across a yield. It gives
    a function that adds a message of ours in its place among libav's."""
    av = import_av()
    previous, skipped = av.logging.get_level(), av.logging.get_skip_repeated()
    capture = av.logging.Capture(local=False)  # libav logs from its own threads too
    # Not skipping repeats: PyAV would tally them up later, into the next file's messages.
    av.logging.set_skip_repeated(False)
    av.logging.set_level(av.logging.ERROR)
    try:
        with capture:
            yield lambda text: capture.logs.append((av.logging.ERROR, "", text))
    finally:
        av.logging.set_level(previous)
        av.logging.set_skip_repeated(skipped)
        said = (f"[{name}] {message.strip()}" if name else message.strip()
                for level, name, message in capture.logs if level <= av.logging.ERROR and message.strip())
        sink.extend(itertools.islice(said, max(0, MESSAGES_KEPT - len(sink))))


def open_in_process(path: Path, messages: list[str]):
    """(container, its first audio stream) opened by PyAV, or None where ffmpeg must try instead:
    PyAV not installed, the file not opened, no decoder for its codec. No audio stream at all (a
    video alone) is an AudioError, as ffprobe's answer would be."""
    av = import_av()
    if av is None:
        return None
    try:
        with libav_messages(messages):
            container = av.open(pyav_url(path), metadata_errors="replace")
    except Exception:  # noqa: BLE001 - whatever PyAV cannot open, ffmpeg gets to try
        return None
    try:
        streams = container.streams.audio
        if streams and streams[0].codec_context is not None:
            return container, streams[0]
        video_only = not streams and len(container.streams) > 0
    except Exception:  # noqa: BLE001
        video_only = False
    container.close()
    if video_only:
        raise AudioError(f"{path}: has no audio stream (video only?); nothing to transcribe")
    return None


def probe_in_process(path: Path) -> AudioInfo | None:
    """probe, with PyAV; None where ffprobe must answer instead."""
    opened = open_in_process(path, [])
    if opened is None:
        return None
    container, stream = opened
    try:
        # The audio stream's own duration: a video's container may run longer than its sound.
        duration = None
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        if not duration and container.duration:
            duration = container.duration / 1_000_000  # AV_TIME_BASE
        channels = int(stream.codec_context.channels or 1)
        format_name = container.format.name or "?"
    finally:
        container.close()
    claimed = wav_claimed_seconds(path) if format_name in ("wav", "rf64", "w64") else None
    return AudioInfo(path, duration or None, channels, format_name, claimed, decoder="pyav")


def probe_with_ffprobe(path: Path) -> AudioInfo:
    """probe, with an ffprobe process (the fallback, and WHISPER_HPC_DECODER=ffmpeg)."""
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
    return AudioInfo(path, duration, int(audio_streams[0].get("channels") or 1), format_name, claimed, decoder="ffmpeg")


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
    outcome = DecodeOutcome()
    source = sample_blocks(info, channel, outcome)
    pending = np.empty(0, dtype=np.float32)
    blocks: list[np.ndarray] = []
    buffered = 0
    offset = 0
    try:
        while True:
            block = next(source, None)
            if block is not None:
                blocks.append(block)
                buffered += len(block)
            if buffered >= window + window // 10 or block is None:
                pending = np.concatenate([pending, *blocks])
                blocks, buffered = [], len(pending)
                while len(pending) >= window + window // 10 or (block is None and len(pending) > window):
                    cut = quietest_cut(pending[:window])
                    yield AudioWindow(offset / SAMPLE_RATE, pending[:cut].copy())
                    offset += cut
                    pending = pending[cut:]
                buffered = len(pending)
            if block is None:
                break
    finally:
        source.close()  # an abandoned decode ends here: its ffmpeg is killed, its container closed
    total = offset + len(pending)
    if outcome.failure is not None:
        raise AudioError(f"{info.path}: ffmpeg could not decode the audio ({outcome.failure})")
    if total == 0:
        raise AudioError(f"{info.path}: contains no audio samples")
    if strict:
        check_complete(info, total / SAMPLE_RATE, outcome.errors)
    if len(pending):
        yield AudioWindow(offset / SAMPLE_RATE, pending)


@dataclass
class DecodeOutcome:
    """What a decode said besides its samples: its error messages, and why it failed as a whole."""

    messages: list[str] = field(default_factory=list)
    failure: str | None = None  # set where ffmpeg would exit non-zero: the first line of why

    @property
    def errors(self) -> str:
        return "\n".join(self.messages)


def sample_blocks(info: AudioInfo, channel: int | None, outcome: DecodeOutcome,
                  seconds: float | None = None) -> Iterator[np.ndarray]:
    """The file's samples (mono float32 at 16 kHz; its first `seconds` only, where given), block
    by block, from the decoder the file uses; `outcome` collects what the decoder said.

    In-process first (unless the file or WHISPER_HPC_DECODER says ffmpeg); a file PyAV cannot open
    or of which it decodes nothing at all goes to the ffmpeg process instead, before any sample."""
    if (info.decoder or chosen_decoder()) == "pyav":
        messages: list[str] = []
        opened = open_in_process(info.path, messages)
        if opened is not None:
            produced = 0
            for block in decode_in_process(*opened, channel, outcome, messages, seconds):
                produced += len(block)
                yield block
            if produced:
                return
            outcome.messages, outcome.failure = [], None
    yield from decode_with_ffmpeg(info.path, channel, outcome, seconds)


def decode_in_process(container, stream, channel: int | None, outcome: DecodeOutcome, messages: list[str],
                      seconds: float | None = None) -> Iterator[np.ndarray]:
    """PyAV's decode of `stream`, resampled by libswresample (as ffmpeg's -ac 1 -ar 16000 is).

    As the ffmpeg command does, a packet that does not decode is reported (in `outcome`) and
    skipped, a read error ends the stream, and more failed packets than MAX_ERROR_RATE fail it."""
    av = import_av()
    outcome.messages = messages  # what opening it said counts, as ffmpeg's messages would
    limit = None if seconds is None else max(0, round(seconds * SAMPLE_RATE))
    produced = decoded = failed = 0
    resample = Resampler(channel)
    packets = container.demux(stream)
    ended = False
    try:
        while not ended:
            pieces: list[np.ndarray] = []
            gathered = 0
            with libav_messages(outcome.messages) as note:
                while gathered < BLOCK_SAMPLES and not ended:
                    try:
                        packet = next(packets)
                    except StopIteration:
                        ended = True
                        break
                    except av.error.FFmpegError as error:  # a read error: what came before is kept
                        note(f"Error during demuxing: {error_text(error)}")
                        ended = True
                        packet = None  # the decoder still gives what it holds
                    try:
                        frames = packet.decode() if packet is not None else stream.codec_context.decode(None)
                    except (av.error.FFmpegError, ValueError) as error:
                        failed += 1
                        note(f"Error while decoding stream #0:{stream.index}: {error_text(error)}")
                        continue
                    decoded += 1
                    for frame in frames:
                        for piece in resample(frame, note):
                            pieces.append(piece)
                            gathered += len(piece)
                if ended:
                    pieces.extend(resample(None, note))
            block = pieces[0] if len(pieces) == 1 else np.concatenate(pieces or [np.empty(0, np.float32)])
            if limit is not None and produced + len(block) >= limit:
                yield block[:limit - produced]
                return
            produced += len(block)
            if len(block):
                yield block
        if failed and failed > (decoded + failed) * MAX_ERROR_RATE:
            outcome.failure = first_line(outcome.errors) or "too many packets failed to decode"
    finally:
        container.close()


def error_text(error: Exception) -> str:
    """An FFmpegError's message without its errno and file name: 'Invalid data found when ...'."""
    return getattr(error, "strerror", None) or str(error)


class Resampler:
    """Frames to mono float32 at 16 kHz: libswresample's mix to mono for `channel` None (ffmpeg's
    -ac 1), else that channel of the frame resampled in its own layout (ffmpeg's pan=mono|c0=cN).
    A stream whose format, layout or rate changes midway gets a new resampler, as ffmpeg's filters do."""

    def __init__(self, channel: int | None) -> None:
        self.channel = channel
        self.resampler = None
        self.shape: tuple | None = None

    def __call__(self, frame, note: Callable[[str], None]) -> list[np.ndarray]:
        """The samples of `frame` (None: what the resampler still holds)."""
        if frame is None:
            return self.convert(self.resampler.resample(None), note) if self.resampler is not None else []
        shape = (frame.format.name, frame.layout.name, frame.sample_rate)
        flushed: list[np.ndarray] = []
        if shape != self.shape:
            flushed = self(None, note)
            av = import_av()
            if self.channel is None:
                self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            else:
                self.resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=SAMPLE_RATE)
            self.shape = shape
        return flushed + self.convert(self.resampler.resample(frame), note)

    def convert(self, frames, note: Callable[[str], None]) -> list[np.ndarray]:
        pieces = []
        row = 0 if self.channel is None else self.channel
        for frame in frames:
            planes = frame.planes  # one (flt mono), or one per channel (fltp in the frame's layout)
            if row >= len(planes):
                note(f"the stream has {len(planes)} channel(s) here, no channel {row}")
                continue
            pieces.append(np.frombuffer(planes[row], dtype=np.float32, count=frame.samples))
        return pieces


def decode_with_ffmpeg(path: Path, channel: int | None, outcome: DecodeOutcome,
                       seconds: float | None = None) -> Iterator[np.ndarray]:
    """The samples from an ffmpeg process (the fallback, and WHISPER_HPC_DECODER=ffmpeg)."""
    command = decode_command(path, channel)
    if seconds is not None:
        command[-1:-1] = ["-t", f"{seconds:g}"]
    # ffmpeg's messages go to a file: a pipe read only at the end would fill up and deadlock.
    messages = tempfile.TemporaryFile()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=messages, stdin=subprocess.DEVNULL)
    carry = b""
    try:
        for block in iter(lambda: process.stdout.read(READ_BLOCK), b""):
            data = carry + block
            usable = len(data) // 4 * 4
            carry = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], dtype=np.float32)
        returncode = process.wait()
        messages.seek(0)
        errors = messages.read(1 << 16).decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()  # an interrupted decode: ffmpeg ends here
            process.wait()
        process.stdout.close()
        messages.close()
    outcome.messages = [errors] if errors.strip() else []
    if returncode != 0:
        outcome.failure = first_line(errors)


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
    """SamplesDigest of the file (or of its first `seconds`), decoded apart by the decoder
    `stream_windows` uses for it; None when that cannot decode it (the transcription then says why)."""
    digest = SamplesDigest()
    for channel in channels:
        digest.channel(channel)
        outcome = DecodeOutcome()
        blocks = sample_blocks(info, channel, outcome, seconds)
        try:
            for block in blocks:
                digest.add(block)
        finally:
            blocks.close()
        if outcome.failure is not None:
            return None
    return digest.hexdigest()


def decode(path: Path, channel: int | None = None) -> np.ndarray:
    """The whole file at once (for short files and tests)."""
    info = probe(path)
    return np.concatenate([w.samples for w in stream_windows(info, channel, window_seconds=1e9)])
