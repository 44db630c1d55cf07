"""Assemble a run from the parsed command line: check it into a typed Request, then build the jobs,
the model request, the device, the threads and the decoding options.

whisper-batch checks its command lines with the same `check_request`, so a batch refuses what
every one of its tasks would refuse, before anything is submitted.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from whisper_hpc import runtime
from whisper_hpc.errors import UsageError
from whisper_hpc.model_store import StagedModel
from whisper_hpc.site import Site
from whisper_hpc.writers import FORMATS, SPEAKER_FORMATS, WriterOptions

if TYPE_CHECKING:
    from whisper_hpc.engines import DecodeOptions, ModelRequest

# What batched inference does when no VAD and no clips are asked for (docs/benchmarks.rst):
# "vad" turns the VAD on; "clips" cuts fixed 30 s clips.
BATCHED_SEGMENTATION = "vad"


def notice(message: str) -> None:
    print(f"whisper-hpc: {message}", file=sys.stderr, flush=True)


def output_formats(value: str, speakers: bool = False) -> tuple[str, ...]:
    """The formats to write; `all` includes rttm when the run has speakers."""
    requested = [v.strip().lower() for v in value.split(",") if v.strip()]
    available = FORMATS + SPEAKER_FORMATS if speakers else FORMATS
    if "all" in requested:
        return available
    if not speakers and any(v in SPEAKER_FORMATS for v in requested):
        raise UsageError(f"--output_format {value}: rttm is the diarization; add --diarize (or --diarization_rttm FILE)")
    unknown = [v for v in requested if v not in available]
    if unknown or not requested:
        raise UsageError(f"--output_format {value}: choose from {', '.join(available)} or all")
    return tuple(dict.fromkeys(requested))


def temperatures(start: float, increment: float | None) -> tuple[float, ...]:
    """openai-whisper's fallback schedule: start, start+increment, ... up to 1.0."""
    if not increment:
        return (start,)
    steps = int(math.floor((1.0 - start) / increment + 1e-6)) if start < 1.0 else 0
    return tuple(round(start + i * increment, 4) for i in range(steps + 1))


def parse_device(value: str, index: int | tuple[int, ...]) -> tuple[str, int]:
    """(auto, cpu or cuda; the first GPU number): cuda:N names it, else --device_index (its first)."""
    device, _, suffix = value.strip().lower().partition(":")
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {value}: choose auto, cpu, cuda or cuda:N")
    if suffix:
        if not suffix.isdigit():
            raise UsageError(f"--device {value}: the GPU number after 'cuda:' must be a whole number")
        index = int(suffix)
    return device, int(index[0] if isinstance(index, tuple) else index)


def chosen_gpus(value: str, index: int | tuple[int, ...]) -> tuple[int, ...] | None:
    """The GPUs the command line names: cuda:N, a typed --device_index N or a list 0,1,2,3; None
    when it names none (the run takes the GPUs the job was given)."""
    from whisper_hpc.options import ChosenIndex

    _, _, suffix = value.strip().partition(":")
    if suffix:
        chosen = (int(suffix),)
    elif isinstance(index, tuple):
        chosen = index
    elif isinstance(index, ChosenIndex):
        chosen = (int(index),)
    else:
        return None
    if any(number < 0 for number in chosen):
        shown = ",".join(str(number) for number in chosen)
        raise UsageError(f"--device_index {shown}: GPU numbers are 0 or more (0 is the job's first GPU)")
    return tuple(chosen)


def writable_directory(path: Path, create: bool = True) -> Path:
    """`path`, created when `create`; refused when it cannot be written to."""
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"cannot create output directory {path}: {error.strerror}")
    if (create or path.exists()) and not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {path} is not writable; choose another with --output_dir")
    return path


def input_names(arguments) -> list[str]:
    """The inputs as given: positional paths, then the lines of --file_list."""
    from whisper_hpc.inputs import read_file_list

    names = list(arguments.audio)
    if arguments.file_list:
        try:
            names += read_file_list(Path(arguments.file_list))
        except OSError as error:
            raise UsageError(f"--file_list {arguments.file_list}: {error.strerror}")
    if not names:
        raise UsageError("no input files: give audio files, directories or --file_list FILE")
    return names


def staged_model(arguments, site: Site) -> tuple[Path, StagedModel]:
    """(model root, the staged model the flags name); refuses when it is not staged."""
    from whisper_hpc.model_store import resolve_model
    from whisper_hpc.site import model_root

    root = Path(arguments.model_dir) if arguments.model_dir else model_root(site)
    spec = arguments.model_directory or arguments.model or site.models.default
    if not spec:
        raise UsageError(f"no model given: pass --model NAME (see `whisper-hpc doctor` for the models staged in {root})")
    return root, resolve_model(spec, root)


def checked_language(arguments, staged) -> str | None:
    """The language code to decode in (None: detect); refuses what an English-only model cannot do."""
    from whisper_hpc.languages import language_code

    try:
        language = language_code(arguments.language)
    except ValueError as error:
        raise UsageError(f"--language: {error}") from None
    if staged.english_only and (language not in (None, "en") or arguments.task == "translate"):
        what = f"--language {arguments.language}" if language not in (None, "en") else "--task translate"
        raise UsageError(f"model {staged.name} is English-only and cannot do {what}; use a multilingual model")
    return "en" if staged.english_only else language


# Flags one engine alone implements: set on the other, they are refused with this name.
ENGINE_ONLY = {
    "faster-whisper": (
        "hotwords", "multilingual", "vad_filter", "vad_threshold", "vad_min_speech_duration_ms",
        "vad_max_speech_duration_s", "vad_min_silence_duration_ms", "vad_speech_pad_ms", "batched", "batch_size",
        "repetition_penalty", "no_repeat_ngram_size", "prompt_reset_on_temperature",
    ),
    "openai-whisper": ("carry_initial_prompt",),
}
LAYOUT_FLAGS = ("max_line_width", "max_line_count", "max_words_per_line", "highlight_words")
SPEAKER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9.-]{0,31}")


def check_engine_flags(arguments: argparse.Namespace) -> None:
    """Refuse a flag the chosen engine cannot honour, naming the engine that can."""
    from whisper_hpc.options import build_parser

    parser = build_parser()
    for backend, flags in ENGINE_ONLY.items():
        if arguments.backend == backend:
            continue
        for flag in flags:
            if getattr(arguments, flag) != parser.get_default(flag):
                raise UsageError(f"--{flag} needs --backend {backend} (this run uses {arguments.backend})")


def clip_stretches(value: str) -> tuple[tuple[float, float], ...] | None:
    """--clip_timestamps start,end,start,end,...: the stretches to transcribe (None: the whole file).

    As openai-whisper reads it, a missing last end means the end of the file.
    """
    if value.strip() in ("", "0"):
        return None
    try:
        times = [float(part) for part in value.split(",")]
    except ValueError:
        raise UsageError(f"--clip_timestamps {value}: give seconds as start,end,start,end,... (e.g. 0,30,60,90)") from None
    if len(times) % 2:
        times.append(math.inf)
    stretches = tuple(zip(times[::2], times[1::2]))
    if any(not 0 <= start < end for start, end in stretches) or \
            any(b[0] < a[1] for a, b in zip(stretches, stretches[1:])):
        raise UsageError(f"--clip_timestamps {value}: each start must come before its end, in order and not overlapping")
    return stretches


def checked_speaker_name(value: str) -> str:
    if not SPEAKER_NAME.fullmatch(value):
        raise UsageError(f"--speaker_name {value!r}: use a letter then up to 31 letters, digits, '.' or '-' "
                         "(it becomes NAME_00, NAME_01, ... in every format, RTTM included)")
    return value


@dataclass(frozen=True)
class Request:
    """A checked whisper-hpc command line: what to transcribe, into what, with which model and engine."""

    inputs: tuple[str, ...]  # as given: files, folders, the lines of --file_list
    output_dir: Path
    formats: tuple[str, ...]
    site: Site
    root: Path  # the model root
    model: StagedModel
    language: str | None  # None: detect
    backend: str
    device: str  # auto, cpu or cuda, as asked for
    device_index: int
    compute_type: str | None  # None: the engine's default for the device
    threads: int  # 0: the CPUs the job has
    speakers: bool  # transcripts carry speakers (--diarize, or a ready-made --diarization_rttm)
    diarize: bool  # the pyannote pipeline runs
    diarization_model: str | None
    split_channels: bool
    redo: bool  # --overwrite, or --skip_existing False
    clips: tuple[tuple[float, float], ...] | None  # --clip_timestamps; None: the whole file
    speaker_name: str
    gpus: tuple[int, ...] | None = None  # the GPUs the command line names; None: those the job was given
    gpu_workers: int | None = None  # --gpu_workers; None: one worker per GPU
    cpu_workers: int | None = None  # --cpu_workers; None: one process
    num_workers: int | None = None  # --num_workers; None: lanes.run_lanes chooses


def check_request(arguments: argparse.Namespace, create_output: bool = True, need_inputs: bool = True) -> Request:
    """Every check that needs no engine: formats, device, inputs, output folder, site, model, language."""
    from whisper_hpc.site import load_site

    speakers = bool(arguments.diarize or arguments.diarization_rttm)
    if not speakers and any(v is not None for v in (arguments.num_speakers, arguments.min_speakers, arguments.max_speakers)):
        raise UsageError("--num_speakers, --min_speakers and --max_speakers need --diarize")
    formats = output_formats(arguments.output_format, speakers)
    check_engine_flags(arguments)
    clips = clip_stretches(arguments.clip_timestamps)
    speaker_name = checked_speaker_name(arguments.speaker_name)
    for flag in ("batch_size", "max_line_width", "max_line_count", "max_words_per_line", "beam_size", "best_of"):
        if (getattr(arguments, flag) or 0) < 0:
            raise UsageError(f"--{flag} must not be negative")
    device, device_index = parse_device(arguments.device, arguments.device_index)
    gpus = chosen_gpus(arguments.device, arguments.device_index)
    for flag in ("gpu_workers", "cpu_workers", "num_workers"):
        if getattr(arguments, flag) is not None and getattr(arguments, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1")
    inputs = input_names(arguments) if need_inputs else []
    output_dir = writable_directory(Path(arguments.output_dir).expanduser().absolute(), create=create_output)
    site = load_site()
    root, staged = staged_model(arguments, site)
    language = checked_language(arguments, staged)
    compute_type = None if arguments.compute_type in ("default", "auto") else arguments.compute_type
    if arguments.fp16 is not None and arguments.backend == "openai-whisper":
        compute_type = "float16" if arguments.fp16 else "float32"
    return Request(
        inputs=tuple(inputs), output_dir=output_dir, formats=formats, site=site, root=root, model=staged,
        language=language, backend=arguments.backend, device=device, device_index=device_index,
        compute_type=compute_type, threads=max(0, arguments.threads or 0), speakers=speakers,
        diarize=bool(arguments.diarize) and not arguments.diarization_rttm, diarization_model=arguments.diarization_model,
        split_channels=bool(arguments.split_channels), redo=bool(arguments.overwrite or not arguments.skip_existing),
        clips=clips, speaker_name=speaker_name, gpus=gpus, gpu_workers=arguments.gpu_workers,
        cpu_workers=arguments.cpu_workers, num_workers=arguments.num_workers,
    )


def decode_options(arguments: argparse.Namespace, request: Request) -> DecodeOptions:
    """The engine's decoding options, with the companions a flag needs turned on (each with a notice)."""
    from whisper_hpc.engines import DecodeOptions, VadParameters
    from whisper_hpc.options import DEFAULT_BATCH_SIZE

    vad = VadParameters(
        threshold=arguments.vad_threshold,
        min_speech_duration_ms=arguments.vad_min_speech_duration_ms,
        max_speech_duration_s=arguments.vad_max_speech_duration_s,
        min_silence_duration_ms=arguments.vad_min_silence_duration_ms,
        speech_pad_ms=arguments.vad_speech_pad_ms,
    )
    vad_filter = bool(arguments.vad_filter)
    if vad.given() and not vad_filter:
        notice("VAD parameters given: turning on --vad_filter")
        vad_filter = True
    batch_size = arguments.batch_size or (DEFAULT_BATCH_SIZE if arguments.batched else 0)
    if batch_size > 1 and not vad_filter and request.clips is None and BATCHED_SEGMENTATION == "vad":
        notice(f"batched inference cuts the audio at silences: turning on --vad_filter (--batch_size {batch_size})")
        vad_filter = True
    wants_words = [f"--{flag}" for flag in LAYOUT_FLAGS + ("hallucination_silence_threshold",)
                   if getattr(arguments, flag) not in (None, False)]
    if arguments.print_colors:
        wants_words.append("--print_colors")
    condition = bool(arguments.condition_on_previous_text)
    if arguments.multilingual and condition:
        # the previous text's language would carry into the next window and translate the switch away
        notice("--multilingual: not conditioning on previous text, which would keep the first language")
        condition = False
    if wants_words and not arguments.word_timestamps:
        notice(f"{', '.join(wants_words)} need word timings: turning on --word_timestamps")
    return DecodeOptions(
        language=request.language,
        task=arguments.task,
        multilingual=bool(arguments.multilingual),
        beam_size=arguments.beam_size,
        best_of=arguments.best_of,
        patience=arguments.patience,
        length_penalty=arguments.length_penalty,
        repetition_penalty=arguments.repetition_penalty,
        no_repeat_ngram_size=arguments.no_repeat_ngram_size,
        temperature=temperatures(arguments.temperature, arguments.temperature_increment_on_fallback),
        compression_ratio_threshold=arguments.compression_ratio_threshold,
        logprob_threshold=arguments.logprob_threshold,
        no_speech_threshold=arguments.no_speech_threshold,
        hallucination_silence_threshold=arguments.hallucination_silence_threshold,
        condition_on_previous_text=condition,
        prompt_reset_on_temperature=arguments.prompt_reset_on_temperature,
        initial_prompt=arguments.initial_prompt,
        carry_initial_prompt=arguments.carry_initial_prompt,
        prefix=arguments.prefix,
        hotwords=arguments.hotwords,
        # speakers are assigned word by word
        word_timestamps=bool(arguments.word_timestamps or wants_words or request.speakers),
        prepend_punctuations=arguments.prepend_punctuations,
        append_punctuations=arguments.append_punctuations,
        suppress_tokens=arguments.suppress_tokens,
        suppress_blank=arguments.suppress_blank,
        vad_filter=vad_filter,
        vad=vad,
        batch_size=batch_size,
        clips=request.clips,
    )


def writer_options(arguments: argparse.Namespace) -> WriterOptions:
    if arguments.max_line_count and not arguments.max_line_width:
        notice("--max_line_count has no effect without --max_line_width")
    if arguments.max_words_per_line and arguments.max_line_width:
        notice("--max_words_per_line has no effect with --max_line_width")
    return WriterOptions(
        max_line_width=arguments.max_line_width,
        max_line_count=arguments.max_line_count,
        max_words_per_line=arguments.max_words_per_line,
        highlight_words=bool(arguments.highlight_words),
        pretty_json=bool(arguments.pretty_json),
    )


@dataclass(frozen=True)
class EngineLoader:
    """Loads the run's engine (`loader(compute_type)`); plain data, so a pool worker process gets
    it whole and loads on its own GPU (`on`)."""

    backend: str
    model: "ModelRequest"
    announce: bool = True  # say what was loaded (a pool's worker says it through its parent)

    def __call__(self, compute_type: str | None = None):
        from whisper_hpc.engines import load_engine

        engine = load_engine(self.backend, replace(self.model, compute_type=compute_type or self.model.compute_type),
                             notice)
        if self.announce:
            replicas = f", {self.model.workers} replicas" if self.model.workers > 1 else ""
            notice(f"{engine.name} {self.model.staged.name} on {engine.device} ({engine.compute_type}, "
                   f"{self.model.threads} threads{replicas})")
        return engine

    def on(self, device: str, device_index: int, threads: int) -> "EngineLoader":
        return replace(self, model=replace(self.model, device=device, device_index=device_index, threads=threads),
                       announce=False)


@dataclass(frozen=True)
class DiarizerLoader:
    """Loads the pyannote pipeline when the first file needs it; plain data, like EngineLoader."""

    directory: Path
    device: str
    device_index: int
    threads: int

    def __call__(self):
        from whisper_hpc.diarization.pipeline import SpeakerDiarizer

        diarizer = SpeakerDiarizer(self.directory, self.device, self.device_index, self.threads, notice)
        notice(f"speaker diarization: pyannote pipeline {self.directory}")
        return diarizer

    def on(self, device: str, device_index: int, threads: int) -> "DiarizerLoader":
        return replace(self, device=device, device_index=device_index, threads=threads)


def run_gpus(request: Request, device: str, backend: str) -> list[int]:
    """The GPU of each worker (one entry: no pool); the job's GPUs come from CUDA_VISIBLE_DEVICES,
    else Slurm's list (devices.job_gpus). On the CPU, --cpu_workers entries (one by default)."""
    from whisper_hpc import devices

    if device != "cuda":
        if request.gpu_workers and request.gpu_workers > 1:
            notice(f"--gpu_workers {request.gpu_workers} ignored: the run is on the CPU")
        return [request.device_index] * (request.cpu_workers or 1)
    if request.cpu_workers and request.cpu_workers > 1:
        notice(f"--cpu_workers {request.cpu_workers} ignored: the run is on CUDA (--gpu_workers sets its workers)")
    given = None if request.gpus else devices.job_gpus(engine_sees=lambda: devices.engine_cuda_status(backend)[1])
    return devices.worker_gpus(request.gpus, request.gpu_workers, given)


def build_run(arguments: argparse.Namespace) -> Callable[[], object]:
    """The run, ready to start: checked, with threads pinned and the run directory made.

    On CUDA with several GPUs (or --gpu_workers N), or on the CPU with --cpu_workers N, a pool of
    worker processes (whisper_hpc.pool) shares the files out; else the files run here: on the CPU
    with faster-whisper, several at once on one model where that pays (whisper_hpc.lanes), else
    one after the other (whisper_hpc.runner)."""
    threads = arguments.threads if (arguments.threads or 0) > 0 else runtime.available_cpus()
    runtime.pin_threads(threads)
    runtime.one_malloc_arena()
    runtime.start_run()

    from whisper_hpc.devices import resolve_device
    from whisper_hpc.engines import ModelRequest
    from whisper_hpc.inputs import collect_jobs
    from whisper_hpc.runner import RunSettings, run_jobs

    request = check_request(arguments)
    try:
        jobs = collect_jobs(list(request.inputs), request.output_dir)
    except ValueError as error:
        raise UsageError(str(error)) from None

    backend = request.backend
    if not arguments.local_files_only:
        notice("--local_files_only False ignored: whisper-hpc never downloads; models come from the model root")
    device = resolve_device(request.device, backend)
    gpus = run_gpus(request, device, backend)
    if device != "cuda":
        gpus = gpus[:max(1, len(jobs))]  # a CPU worker per file at most: each takes a share of the threads
    options = decode_options(arguments, request)
    settings = RunSettings(
        formats=request.formats,
        overwrite=arguments.overwrite,
        skip_existing=arguments.skip_existing,
        split_channels=request.split_channels,
        strict_audio=not arguments.ignore_decode_errors,
        verbose=bool(arguments.verbose or arguments.print_colors),
        print_colors=bool(arguments.print_colors),
        model_name=request.model.name,
        layout=writer_options(arguments),
        speaker_name=request.speaker_name,
    )
    load = EngineLoader(backend, ModelRequest(request.model, device, request.compute_type, threads, gpus[0]))
    speakers = speaker_source(arguments, request.root, len(jobs), device, gpus[0], threads) \
        if request.speakers else None

    cache = None if arguments.no_cache else result_cache(request, backend, device, options, settings, speakers)
    if len(gpus) > 1:
        from whisper_hpc.pool import run_pool

        return lambda: run_pool(jobs, settings, load, options, gpus, threads, speakers=speakers, cache=cache,
                                device=device)
    lanes = file_lanes(request, device, options, settings)
    if lanes != 1:
        from whisper_hpc.lanes import run_lanes

        return lambda: run_lanes(jobs, settings, load, options, threads, lanes, cache=cache)
    return lambda: run_jobs(jobs, settings, load, options, speakers=speakers, cache=cache)


def file_lanes(request: Request, device: str, options, settings) -> int | None:
    """How many files run at once in this process (lanes.py): --num_workers, else None (lanes.py
    chooses from the files) where it can pay; 1 where it cannot, with a notice for a --num_workers
    that cannot be honoured."""
    reasons = [why for why, applies in (
        ("the run is on CUDA (--gpu_workers sets its workers)", device == "cuda"),
        ("it needs --backend faster-whisper", request.backend != "faster-whisper"),
        ("batched inference already keeps the cores busy", options.batch_size > 1),
        ("--diarize runs one file at a time", request.speakers),
        ("--verbose prints one file's segments at a time", settings.verbose),
        ("--cpu_workers runs worker processes instead", (request.cpu_workers or 1) > 1),
    ) if applies]
    if not reasons:
        return request.num_workers
    if (request.num_workers or 1) > 1:
        notice(f"--num_workers {request.num_workers} ignored: {reasons[0]}")
    return 1


def result_cache(request: Request, backend: str, device: str, options, settings, speakers):
    """The site's result cache for these settings, or None (off, or with a notice why it cannot be used)."""
    from whisper_hpc.result_cache import ResultCache, cache_settings, settings_key

    configured = cache_settings(request.site)
    if not configured.directory:
        return None
    key = settings_key(model=request.model, backend=backend, device=device, compute_type=request.compute_type,
                       options=options, split_channels=settings.split_channels, strict_audio=settings.strict_audio,
                       window_seconds=settings.window_seconds, speakers=speakers)
    return ResultCache.open(configured, key, notice)


def speaker_source(arguments, root: Path, job_count: int, device: str, device_index: int, threads: int):
    """Where speakers come from: a ready-made RTTM, or the pyannote pipeline (checked now, loaded later)."""
    from whisper_hpc.diarization import require_pyannote
    from whisper_hpc.diarization.merge import DEFAULT_SPEAKER_NAME
    from whisper_hpc.diarization.pipeline import SpeakerCounts
    from whisper_hpc.diarization.source import PipelineSpeakers, RttmSpeakers
    from whisper_hpc.diarization.staged import check_pipeline, resolve_pipeline

    if arguments.split_channels:
        raise UsageError("--split_channels already gives each channel its own transcript; "
                         "use it or --diarize / --diarization_rttm, not both")
    counts = SpeakerCounts(arguments.num_speakers, arguments.min_speakers, arguments.max_speakers)
    try:
        counts.check()
    except ValueError as error:
        raise UsageError(str(error)) from None
    if arguments.diarization_rttm:
        rttm = Path(arguments.diarization_rttm).expanduser()
        if not rttm.exists():
            raise UsageError(f"--diarization_rttm {rttm}: no such file or directory")
        ignored = [flag for flag, value in (("--diarize", arguments.diarize), ("--num_speakers", counts.num_speakers),
                   ("--min_speakers", counts.min_speakers), ("--max_speakers", counts.max_speakers),
                   ("--diarization_model", arguments.diarization_model),
                   ("--speaker_name", arguments.speaker_name != DEFAULT_SPEAKER_NAME)) if value]
        if ignored:
            notice(f"{', '.join(ignored)} ignored: the speakers come from {rttm}")
        return RttmSpeakers(rttm, single_input=job_count == 1)
    require_pyannote()
    directory = resolve_pipeline(arguments.diarization_model, root)
    check_pipeline(directory)

    return PipelineSpeakers(DiarizerLoader(directory, device, device_index, threads), directory, counts)
