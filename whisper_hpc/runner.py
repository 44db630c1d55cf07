"""Transcribe a list of jobs with one model load: skip finished files, survive bad ones."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable

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


def channel_names(count: int) -> list[str]:
    return ["left", "right"] if count == 2 else [f"ch{i}" for i in range(count)]


def is_finished(job: Job, settings: RunSettings) -> bool:
    """Nothing to do for `job`: its transcripts exist, and the run keeps existing ones."""
    return settings.skip_existing and not settings.overwrite and job.is_done(settings.formats, settings.split_channels)


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
    """
    errors = errors or sys.stderr
    summary = Summary()
    pending = []
    for job in jobs:
        if is_finished(job, settings):
            summary.skipped += 1
            print(f"skip {job.source}: transcripts exist (pass --overwrite True to redo)", file=errors)
        else:
            pending.append(job)
    if not pending:
        return summary
    progress = Progress(len(pending), errors)
    engine: Engine | None = None
    compute_type: str | None = None  # None: as asked; after an out-of-memory error, a lighter one
    for index, job in enumerate(pending, start=1):
        started = time.monotonic()
        try:
            info = audio.probe(job.source)
            channels: list[int | None] = [None]
            if settings.split_channels and info.channels > 1:
                channels = list(range(info.channels))
            found = cache.lookup(job.source, lambda: audio.samples_sha256(info, seconds=START_SECONDS),
                                 lambda: audio.samples_sha256(info, channels)) if cache else None
            if found is not None and found.hit is not None:
                transcripts = [(label, hit_transcript(t, job.source, found.hit, started))
                               for label, t in found.hit.transcripts]
                write_all(job, transcripts, settings)
                summary.done += 1
                progress.file_finished(index, str(job.source), transcripts[-1][1].duration, time.monotonic() - started,
                                       how=f"from the result cache (transcribed {found.hit.created})")
                continue
            while True:
                if engine is None:
                    engine = load(compute_type)
                samples = audio.SamplesDigest() if found is not None and found.start_sha256 else None
                try:
                    transcripts = transcribe_channels(engine, info, channels, options, settings, progress, speakers,
                                                      samples)
                    break
                except RuntimeError as error:
                    if not is_out_of_memory(error):
                        raise
                    retry = next_retry(engine.name, engine.compute_type, options)
                    if retry is None:
                        raise RuntimeError(f"the GPU ran out of memory even at --batch_size {max(options.batch_size, 1)} "
                                           f"with {engine.compute_type} ({error}); use a smaller --model, or a GPU "
                                           "with more memory") from None
                    print(f"whisper-hpc: {job.source}: the GPU ran out of memory; {retry.notice}", file=errors,
                          flush=True)
                    options = retry.options
                    if retry.compute_type:
                        compute_type, engine = retry.compute_type, None
                        runtime.release_freed_memory()
            key = None
            if samples is not None:
                found.decoded_sha256 = samples.hexdigest()
                key = cache.entry_key(found.decoded_sha256)
            if key:
                transcripts = [(label, replace(t, cache={"hit": False, "key": key})) for label, t in transcripts]
            write_all(job, transcripts, settings)
            if key:
                cache.store(found, transcripts)
            summary.done += 1
            progress.file_finished(index, str(job.source), transcripts[-1][1].duration, time.monotonic() - started)
        except (audio.AudioError, OSError, ValueError, RuntimeError) as error:
            shown = str(job.source).replace("\x00", "\\x00")  # a NUL byte would cut the line short
            message = str(error) if shown in str(error) else f"{shown}: {error}"
            summary.failed.append(message)
            print(f"error: {message}", file=errors, flush=True)
    return summary


def transcribe_channels(engine: Engine, info: audio.AudioInfo, channels: list[int | None], options: DecodeOptions,
                        settings: RunSettings, progress: Progress, speakers=None,
                        samples: audio.SamplesDigest | None = None) -> list[tuple[str | None, Transcript]]:
    """The file's transcript, or each channel's (labelled) with --split_channels."""
    file_speakers = speakers.begin(info.path) if speakers is not None else None
    transcripts = []
    for channel in channels:
        label = None if channel is None else channel_names(info.channels)[channel]
        if samples is not None:
            samples.channel(channel)
        transcripts.append((label, transcribe_file(engine, info, channel, label, options, settings, progress,
                                                   file_speakers, samples)))
    return transcripts


def write_all(job: Job, transcripts: list[tuple[str | None, Transcript]], settings: RunSettings) -> None:
    """Each channel's transcripts (or the file's), every format, each file atomically."""
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
) -> Transcript:
    """Transcribe one file (or one channel of it) window by window, on the file's time line.

    Each window is decoded once and handed to the engine and, when diarizing, to `speakers`
    (and with `samples`, hashed for the result cache).
    """
    started = time.monotonic()
    segments: list[Segment] = []
    language = probability = None
    decoded = 0.0
    window_options = options
    name = info.path.name if label is None else f"{info.path.name} ({label})"
    for window in audio.stream_windows(info, channel, settings.window_seconds, strict=settings.strict_audio):
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

