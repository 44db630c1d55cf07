"""Transcribe a list of jobs with one model load: skip finished files, survive bad ones.

The audio is decoded ahead of the engine, on a thread of its own (`Prefetcher`): while the engine
transcribes one window, the next is decoded, the next file's too, at most one window ahead, so a
GPU never waits for the decoder and memory stays flat however long the file.
"""

from __future__ import annotations

import math
import queue
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

from whisper_hpc import audio, runtime
from whisper_hpc.diarization.merge import DEFAULT_SPEAKER_NAME, assign_speakers, number_in_transcript_order, within
from whisper_hpc.engines import DecodeOptions, Engine
from whisper_hpc.engines.memory import is_out_of_memory, next_retry
from whisper_hpc.inputs import Job
from whisper_hpc.progress import Progress
from whisper_hpc.result_cache import START_SECONDS, ResultCache, hit_transcript
from whisper_hpc.transcript import Segment, Transcript
from whisper_hpc.writers import WriterOptions, write_transcript

PROMPT_CARRY_CHARACTERS = 200  # text carried into the next window as its prompt
FILE_ERRORS = (audio.AudioError, OSError, ValueError, RuntimeError)  # one file fails; the others go on
PREFETCH_WINDOWS = 1  # decoded windows waiting for the engine, at most
POLL_SECONDS = 0.2  # how often a waiting thread looks whether the run is stopping
# libav's messages (which decide whether a file counts as damaged) are captured process-wide: two
# decodes at once would mix them up. One decode at a time, then (the engine never waits for it);
# re-entrant, so a decoder closed by the garbage collector inside a decode cannot deadlock.
DECODE_LOCK = threading.RLock()


@dataclass
class RunSettings:
    formats: tuple[str, ...]
    overwrite: bool = False
    skip_existing: bool = True
    split_channels: bool = False
    strict_audio: bool = True
    verbose: bool = False
    print_colors: bool = False
    model_name: str = ""
    window_seconds: float = audio.WINDOW_SECONDS
    layout: WriterOptions = WriterOptions()
    speaker_name: str = DEFAULT_SPEAKER_NAME


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"whisper-hpc: {self.done} done, {self.skipped} skipped, {len(self.failed)} failed"

    def file_failed(self, message: str, errors) -> None:
        """Count a file that failed, and say so in its one `error: FILE: reason` line."""
        self.failed.append(message)
        print(f"error: {message}", file=errors, flush=True)


def channel_names(count: int) -> list[str]:
    return ["left", "right"] if count == 2 else [f"ch{i}" for i in range(count)]


def file_channels(info: audio.AudioInfo, settings: RunSettings) -> list[int | None]:
    """The channels transcribed apart (--split_channels on a file with several), else [None]: the mix."""
    return list(range(info.channels)) if settings.split_channels and info.channels > 1 else [None]


def is_finished(job: Job, settings: RunSettings) -> bool:
    """Nothing to do for `job`: its transcripts exist, and the run keeps existing ones."""
    return settings.skip_existing and not settings.overwrite and job.is_done(settings.formats, settings.split_channels)


def pending_jobs(jobs: list[Job], settings: RunSettings, summary: Summary, errors) -> list[Job]:
    """The jobs still to do; each finished one is counted as skipped, with a line that says so."""
    pending = []
    for job in jobs:
        if is_finished(job, settings):
            summary.skipped += 1
            print(f"skip {job.source}: transcripts exist (pass --overwrite True to redo)", file=errors)
        else:
            pending.append(job)
    return pending


def failure_message(job: Job, error: BaseException) -> str:
    """The file's `error:` line (without the prefix), naming the file once."""
    shown = str(job.source).replace("\x00", "\\x00")  # a NUL byte would cut the line short
    return str(error) if shown in str(error) else f"{shown}: {error}"


# ---- decoding ahead of the engine ---------------------------------------------------------------

def locked(windows: Iterator[audio.AudioWindow]) -> Iterator[audio.AudioWindow]:
    """`windows`, each decoded under DECODE_LOCK (never held while the caller has a window)."""
    try:
        while True:
            with DECODE_LOCK:
                try:
                    window = next(windows)
                except StopIteration:
                    return
            yield window
            del window
    finally:
        with DECODE_LOCK:
            windows.close()


def locked_call(function: Callable, *arguments, **keywords):
    with DECODE_LOCK:
        return function(*arguments, **keywords)


class Stopped(Exception):
    """The run is stopping: the decoding thread ends where it is."""


@dataclass
class Message:
    """What the decoding thread hands over, in order: for each file "file" (its probe, or the error
    that refused it), then per channel its "window"s and a "channel_end" (with the error the
    decode ended in, if any), then "file_end"; after the last file, "exhausted"."""

    kind: str
    ordinal: int = -1
    channel: int | None = None
    payload: object = None


class Prefetcher:
    """Probes and decodes the jobs, in order, on a daemon thread, ahead of the engine: while the
    engine transcribes a window, the next one is decoded, and the next file's first once this one's
    are all decoded. A window is only decoded once its slot is free (`ahead` windows wait at most,
    beside the one the engine has), and a file only begun while the engine is on the one before
    (so a pool worker holds at most two): memory stays flat, a long file's windows still stream.
    The queue carries the windows and the small messages around them; the slots bound it.

    `jobs` yields (key, job) pairs; the key is the caller's (an index, a pool's task number), and
    `next` may block (a pool worker asks its parent for the next file). With --split_channels
    every channel is its own decode, one after the other, all of them ahead of the engine. Errors
    (the probe's, the AudioError a strict decode raises after its last window) travel through the
    queue and are raised where the engine's thread takes them (`PrefetchedFile.info`, the end of
    `windows`), at the point they were raised before. `stop` (or setting `stop`, the event) ends
    the thread at its next window or wait: every wait has a timeout that looks at the event, so
    Ctrl-C or SIGTERM never hangs on it.
    """

    def __init__(self, jobs: Iterable[tuple[object, Job]], settings: RunSettings,
                 stop: threading.Event | None = None, ahead: int = PREFETCH_WINDOWS) -> None:
        self.jobs = iter(jobs)
        self.settings = settings
        self.queue: queue.Queue[Message] = queue.Queue()
        self.slots = threading.Semaphore(ahead)  # windows decoded and not yet taken
        self.files = threading.Semaphore(1)  # files begun beyond the one the engine is on
        self.stopping = stop or threading.Event()
        self.given_up = -1  # the consumer gave up on the files up to this ordinal: skip the rest of them
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.produce, name="whisper-hpc-decode", daemon=True)
        self.thread.start()

    # ---- the decoding thread

    def reserve(self, slots: threading.Semaphore) -> None:
        """Wait for a free slot (before decoding what will take it)."""
        while not slots.acquire(timeout=POLL_SECONDS):
            if self.stopping.is_set():
                raise Stopped
        if self.stopping.is_set():
            slots.release()
            raise Stopped

    def post(self, message: Message) -> None:
        if self.stopping.is_set():
            raise Stopped
        self.queue.put(message)

    def abandoned(self, ordinal: int) -> bool:
        with self.lock:
            return ordinal <= self.given_up

    def produce(self) -> None:
        try:
            ordinal = 0
            while True:
                self.reserve(self.files)
                try:
                    key, job = next(self.jobs)
                except StopIteration:
                    break
                self.decode(ordinal, key, job)
                ordinal += 1
            self.post(Message("exhausted"))
        except Stopped:
            return
        except BaseException as error:  # noqa: BLE001 - the jobs' source failed: the engine's thread raises it
            try:
                self.post(Message("exhausted", payload=error))
            except Stopped:
                return

    def decode(self, ordinal: int, key: object, job: Job) -> None:
        try:
            info = locked_call(audio.probe, job.source)
            channels = file_channels(info, self.settings)
        except Exception as error:  # noqa: BLE001 - raised for this file where its turn comes
            self.post(Message("file", ordinal, payload=(key, job, error, [])))
            self.post(Message("file_end", ordinal))
            return
        self.post(Message("file", ordinal, payload=(key, job, info, channels)))
        for channel in channels:
            if not self.stream(ordinal, info, channel):
                break
        self.post(Message("file_end", ordinal))

    def stream(self, ordinal: int, info: audio.AudioInfo, channel: int | None) -> bool:
        """One channel's windows, then its end; False when the file ends here (an error, or given up)."""
        windows = audio.stream_windows(info, channel, self.settings.window_seconds, strict=self.settings.strict_audio)
        try:
            while True:
                self.reserve(self.slots)
                if self.abandoned(ordinal):
                    self.slots.release()
                    return False
                try:
                    with DECODE_LOCK:
                        window = next(windows)
                except StopIteration:
                    self.slots.release()
                    self.post(Message("channel_end", ordinal, channel))
                    return True
                except Exception as error:  # noqa: BLE001
                    self.slots.release()
                    self.post(Message("channel_end", ordinal, channel, error))
                    return False
                self.post(Message("window", ordinal, channel, window))
                del window
        finally:
            with DECODE_LOCK:
                windows.close()

    # ---- the engine's thread

    def take(self) -> Message:
        while True:
            try:
                message = self.queue.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise RuntimeError("the decoding thread ended early") from None
                continue
            if message.kind == "window":
                self.slots.release()
            elif message.kind == "file":
                self.files.release()  # the engine is on it: the decoder may begin the next
            return message

    def next_file(self) -> "PrefetchedFile | None":
        """The next job's file, probed (None after the last); the previous one must be closed."""
        message = self.take()
        if message.kind == "exhausted":
            if isinstance(message.payload, BaseException):
                raise message.payload
            return None
        if message.kind != "file":
            raise RuntimeError(f"the decoding thread sent {message.kind} where a file should start")
        return PrefetchedFile(self, message)

    def give_up(self, ordinal: int) -> None:
        with self.lock:
            self.given_up = max(self.given_up, ordinal)

    def stop(self) -> None:
        """End the decoding thread (a daemon: even one stuck in a decode never holds up the exit)."""
        self.stopping.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=1.0)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrefetchedFile:
    """One job's file as the Prefetcher hands it over: its probe, then its channels' windows."""

    def __init__(self, source: Prefetcher, message: Message) -> None:
        self.source = source
        self.ordinal = message.ordinal
        self.key, self.job, found, self.channels = message.payload
        self.error = found if isinstance(found, BaseException) else None
        self.probed = None if self.error else found
        self.queued_channels = list(self.channels)  # still to come from the queue, in order
        self.ended = False  # its file_end was taken

    def info(self) -> audio.AudioInfo:
        """The file's probe; raises what refused the file (AudioError: no such file, not audio, ...)."""
        if self.error is not None:
            raise self.error
        return self.probed

    def windows(self, channel: int | None) -> Iterator[audio.AudioWindow]:
        """The channel's windows: decoded ahead when they are next in the queue, else (a second try
        after an out-of-memory error) decoded again here."""
        if not self.ended and self.queued_channels and self.queued_channels[0] == channel:
            self.queued_channels.pop(0)
            return self.from_queue(channel)
        self.close()
        return locked(audio.stream_windows(self.info(), channel, self.source.settings.window_seconds,
                                           strict=self.source.settings.strict_audio))

    def from_queue(self, channel: int | None) -> Iterator[audio.AudioWindow]:
        while True:
            message = self.source.take()
            if message.kind == "window":
                yield message.payload
            elif message.kind == "channel_end":
                if message.payload is not None:
                    self.queued_channels = []
                    raise message.payload
                return
            elif message.kind == "file_end":
                self.ended = True
                return
            else:
                raise RuntimeError(f"the decoding thread sent {message.kind} inside a file")
            del message

    def close(self) -> None:
        """Done with this file: whatever of it was decoded ahead is dropped, the rest not decoded."""
        if self.ended:
            return
        self.source.give_up(self.ordinal)
        self.queued_channels = []
        while not self.ended:
            message = self.source.take()
            self.ended = message.kind == "file_end" and message.ordinal == self.ordinal
            del message


# ---- transcribing -------------------------------------------------------------------------------

@dataclass
class EngineState:
    """The engine and what the out-of-memory back-off has settled on: kept from file to file."""

    load: Callable[[str | None], Engine]
    options: DecodeOptions
    engine: Engine | None = None
    compute_type: str | None = None  # None: as asked; after an out-of-memory error, a lighter one


def run_jobs(
    jobs: list[Job],
    settings: RunSettings,
    load: Callable[[str | None], Engine],
    options: DecodeOptions,
    errors=None,
    speakers=None,
    cache: ResultCache | None = None,
) -> Summary:
    """Run every job; `load` is called once, and only if at least one file needs transcribing
    (again, with a lighter compute type, when the GPU runs out of memory even at batch size 1).

    With `speakers` (a diarization.source.SpeakerSource), every transcript gets speakers. With
    `cache`, a file whose audio was transcribed with these settings before is written from there.
    The next file is probed and decoded while this one is transcribed (Prefetcher).
    """
    errors = errors or sys.stderr
    summary = Summary()
    pending = pending_jobs(jobs, settings, summary, errors)
    if not pending:
        return summary
    progress = Progress(len(pending), errors)
    state = EngineState(load, options)
    with Prefetcher(enumerate(pending, start=1), settings) as prefetched:
        for index, job in enumerate(pending, start=1):
            started = time.monotonic()
            current = prefetched.next_file()
            try:
                duration, how = transcribe_job(current, state, settings, progress, speakers, cache, errors, started)
                summary.done += 1
                progress.file_finished(index, str(job.source), duration, time.monotonic() - started, how=how)
            except FILE_ERRORS as error:
                summary.file_failed(failure_message(job, error), errors)
            current.close()  # (anything else ends the run: the decoder stops where it is, undrained)
    return summary


def transcribe_job(current: PrefetchedFile, state: EngineState, settings: RunSettings, progress, speakers,
                   cache: ResultCache | None, errors, started: float, write=None) -> tuple[float, str]:
    """One file, written: from the result cache when it holds it, else transcribed (with the
    out-of-memory back-off). (Seconds of audio, how it was done for its progress line: "" when
    transcribed.) Raises one of FILE_ERRORS when the file fails."""
    write = write or write_all
    job = current.job
    info = current.info()
    channels = current.channels
    found = cache.lookup(job.source, lambda: locked_call(audio.samples_sha256, info, seconds=START_SECONDS),
                         lambda: locked_call(audio.samples_sha256, info, channels)) if cache else None
    if found is not None and found.hit is not None:
        transcripts = [(label, hit_transcript(t, job.source, found.hit, started)) for label, t in found.hit.transcripts]
        write(job, transcripts, settings)
        return transcripts[-1][1].duration, f"from the result cache (transcribed {found.hit.created})"
    while True:
        if state.engine is None:
            state.engine = state.load(state.compute_type)
        samples = audio.SamplesDigest() if found is not None and found.start_sha256 else None
        try:
            transcripts = transcribe_channels(state.engine, info, channels, state.options, settings, progress, speakers,
                                              samples, current)
            break
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            engine = state.engine
            retry = next_retry(engine.name, engine.compute_type, state.options)
            if retry is None:
                raise RuntimeError(f"the GPU ran out of memory even at --batch_size {max(state.options.batch_size, 1)} "
                                   f"with {engine.compute_type} ({error}); use a smaller --model, or a GPU "
                                   "with more memory") from None
            print(f"whisper-hpc: {job.source}: the GPU ran out of memory; {retry.notice}", file=errors, flush=True)
            state.options = retry.options
            current.close()  # the next try decodes the file again
            if retry.compute_type:
                state.compute_type, state.engine = retry.compute_type, None
                del engine
                runtime.release_freed_memory()
    key = None
    if samples is not None:
        found.decoded_sha256 = samples.hexdigest()
        key = cache.entry_key(found.decoded_sha256)
    if key:
        transcripts = [(label, replace(t, cache={"hit": False, "key": key})) for label, t in transcripts]
    write(job, transcripts, settings)
    if key:
        cache.store(found, transcripts)
    return transcripts[-1][1].duration, ""


def transcribe_channels(engine: Engine, info: audio.AudioInfo, channels: list[int | None], options: DecodeOptions,
                        settings: RunSettings, progress: Progress, speakers=None,
                        samples: audio.SamplesDigest | None = None,
                        decoded: PrefetchedFile | None = None) -> list[tuple[str | None, Transcript]]:
    """The file's transcript, or each channel's (labelled) with --split_channels; the windows come
    from `decoded` (decoded ahead), else are decoded here."""
    file_speakers = speakers.begin(info.path) if speakers is not None else None
    transcripts = []
    for channel in channels:
        label = None if channel is None else channel_names(info.channels)[channel]
        if samples is not None:
            samples.channel(channel)
        windows = decoded.windows(channel) if decoded is not None else None
        transcripts.append((label, transcribe_file(engine, info, channel, label, options, settings, progress,
                                                   file_speakers, samples, windows)))
    return transcripts


@contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done (writing one file's transcripts: well under
    a second), then act as they would have: a run stopped meanwhile keeps that file whole, every
    format of it, and never some of its formats without the rest. Only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler in (signal.SIG_IGN, None):
            continue
        previous[number] = handler
        signal.signal(number, lambda received, frame: caught.append(received))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:  # SIG_DFL
                signal.raise_signal(caught[0])


def write_all(job: Job, transcripts: list[tuple[str | None, Transcript]], settings: RunSettings) -> None:
    """Each channel's transcripts (or the file's), every format, each file atomically; a stop
    signal waits until they are all written (signals_held)."""
    with signals_held():
        for label, transcript in transcripts:
            try:
                write_transcript(transcript, job.channel_base(label), settings.formats, settings.layout)
            except OSError as error:
                raise OSError(error.errno, f"cannot write its transcripts in {job.output_base.parent} "
                              f"({error.strerror}); free some space there or choose another --output_dir") from None


def transcribe_file(
    engine: Engine,
    info: audio.AudioInfo,
    channel: int | None,
    label: str | None,
    options: DecodeOptions,
    settings: RunSettings,
    progress: Progress,
    speakers=None,
    samples: audio.SamplesDigest | None = None,
    windows: Iterable[audio.AudioWindow] | None = None,
) -> Transcript:
    """Transcribe one file (or one channel of it) window by window, on the file's time line.

    Each window is decoded once (`windows`, else here) and handed to the engine and, when
    diarizing, to `speakers` (and with `samples`, hashed for the result cache).
    """
    started = time.monotonic()
    segments: list[Segment] = []
    language = probability = None
    decoded = 0.0
    window_options = options
    name = info.path.name if label is None else f"{info.path.name} ({label})"
    if windows is None:
        windows = locked(audio.stream_windows(info, channel, settings.window_seconds, strict=settings.strict_audio))
    for window in windows:
        if speakers is not None:
            speakers.add(window.offset, window.samples)
        if samples is not None:
            samples.add(window.samples)
        decoded = window.offset + window.duration
        clips = clips_within(options.clips, window.offset, window.duration)
        if audio.inaudible(window.samples) or clips == ():  # Whisper would only invent words ("You") for silence
            progress.within_file(name, decoded, info.duration, started)
            continue
        result = engine.transcribe(window.samples, replace(window_options, clips=clips))
        window_options = replace(window_options, prefix=None)  # the prefix starts the file, not every window
        if language is None:
            language, probability = result.language, result.language_probability
            if not options.multilingual:
                # Later windows keep the language found at the start, as one pass over the file would.
                window_options = replace(window_options, language=language)
        for segment in result.segments:
            if audio.inaudible(window.between(segment.start, segment.end)):
                continue
            placed = segment.shifted(window.offset)
            placed.id = len(segments)
            segments.append(placed)
            if settings.verbose:
                print(f"[{placed.start:8.2f} --> {placed.end:8.2f}] {shown_text(placed, settings.print_colors)}",
                      flush=True)
            progress.within_file(name, placed.end, info.duration, started)
        del window, result
        runtime.release_freed_memory()
        if options.condition_on_previous_text and segments and not options.carry_initial_prompt:
            carried = " ".join(s.text.strip() for s in segments[-10:])[-PROMPT_CARRY_CHARACTERS:]
            window_options = replace(window_options, initial_prompt=carried)
    segments = [clip(s, decoded) for s in segments]
    turns = diarization = None
    if speakers is not None:
        turns, diarization = speakers.finish()
        turns = within(turns, decoded)
        segments = assign_speakers(segments, turns)
        if diarization.get("source") == "pipeline":  # its labels are arbitrary: number them as heard
            segments, turns = number_in_transcript_order(segments, turns, settings.speaker_name)
    return Transcript(
        source=str(info.path),
        language=language,
        language_probability=probability,
        duration=round(decoded, 3),
        segments=segments,
        model=settings.model_name,
        engine=engine.name,
        versions=engine.versions(),
        device=engine.device,
        compute_type=engine.compute_type,
        channel=label,
        wall_time=round(time.monotonic() - started, 3),
        options=options_record(options),
        speaker_turns=turns,
        diarization=diarization,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def clips_within(clips, offset: float, duration: float) -> tuple[tuple[float, float], ...] | None:
    """The file's clips that fall in the window [offset, offset + duration), on the window's time line.

    None (no clips asked for) stays None; () means nothing in this window is to be transcribed.
    """
    if clips is None:
        return None
    inside = []
    for start, end in clips:
        start, end = max(start - offset, 0.0), min(end - offset, duration)
        if end > start:
            inside.append((round(start, 3), round(end, 3)))
    return tuple(inside)


CONFIDENCE_COLOURS = tuple(f"\033[38;5;{code}m" for code in (196, 202, 208, 214, 220, 226, 190, 154, 118, 82))
RESET = "\033[0m"


def shown_text(segment: Segment, colours: bool) -> str:
    """The segment's text for the terminal: each word coloured by its probability, red to green."""
    if not colours or not segment.words or not sys.stdout.isatty():
        return segment.text.strip()
    steps = len(CONFIDENCE_COLOURS)
    return "".join(
        CONFIDENCE_COLOURS[max(0, min(steps - 1, int(w.probability ** 3 * steps)))] + w.word + RESET
        for w in segment.words
    ).strip()


def clip(segment: Segment, duration: float) -> Segment:
    """Keep timestamps inside the audio (engines may round the last one past the end)."""
    if segment.end <= duration and segment.start <= duration:
        return segment
    segment.start = min(segment.start, duration)
    segment.end = min(segment.end, duration)
    for word in segment.words or []:
        word.start, word.end = min(word.start, duration), min(word.end, duration)
    return segment


def options_record(options: DecodeOptions) -> dict:
    """The decoding options as the json records them."""
    record = {k: v for k, v in vars(options).items() if v is not None and k != "vad"}
    record["temperature"] = list(options.temperature)
    if options.vad_filter:
        record["vad_parameters"] = options.vad.given()
    if options.clips is not None:
        record["clips"] = [[start, None if math.isinf(end) else end] for start, end in options.clips]
    return record

