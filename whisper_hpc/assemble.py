"""Assemble a run from the parsed command line: check it into a typed Request, then build the jobs,
the model request, the device, the threads and the decoding options.

whisper-batch checks its command lines with the same `check_request`, so a batch refuses what
every one of its tasks would refuse, before anything is submitted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from whisper_hpc import runtime
from whisper_hpc.errors import UsageError
from whisper_hpc.model_store import StagedModel
from whisper_hpc.site import Site
from whisper_hpc.writers import FORMATS, SPEAKER_FORMATS


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


def parse_device(value: str, index: int) -> tuple[str, int]:
    device, _, suffix = value.strip().lower().partition(":")
    if device not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {value}: choose auto, cpu, cuda or cuda:N")
    if suffix:
        if not suffix.isdigit():
            raise UsageError(f"--device {value}: the GPU number after 'cuda:' must be a whole number")
        index = int(suffix)
    return device, index


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


def check_request(arguments: argparse.Namespace, create_output: bool = True, need_inputs: bool = True) -> Request:
    """Every check that needs no engine: formats, device, inputs, output folder, site, model, language."""
    from whisper_hpc.site import load_site

    speakers = bool(arguments.diarize or arguments.diarization_rttm)
    if not speakers and any(v is not None for v in (arguments.num_speakers, arguments.min_speakers, arguments.max_speakers)):
        raise UsageError("--num_speakers, --min_speakers and --max_speakers need --diarize")
    formats = output_formats(arguments.output_format, speakers)
    device, device_index = parse_device(arguments.device, arguments.device_index)
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
        compute_type=compute_type, threads=max(0, arguments.threads), speakers=speakers,
        diarize=bool(arguments.diarize) and not arguments.diarization_rttm, diarization_model=arguments.diarization_model,
        split_channels=bool(arguments.split_channels), redo=bool(arguments.overwrite or not arguments.skip_existing),
    )


def build_run(arguments: argparse.Namespace) -> Callable[[], object]:
    """The run, ready to start: checked, with threads pinned and the run directory made."""
    threads = arguments.threads if arguments.threads > 0 else runtime.available_cpus()
    runtime.pin_threads(threads)
    runtime.start_run()

    from whisper_hpc.devices import resolve_device
    from whisper_hpc.engines import DecodeOptions, ModelRequest, load_engine
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
    if backend == "openai-whisper" and (arguments.vad_filter or arguments.batch_size > 1):
        notice("--vad_filter and --batch_size are faster-whisper options; openai-whisper ignores them")
    device = resolve_device(request.device, backend)

    options = DecodeOptions(
        language=request.language,
        task=arguments.task,
        beam_size=arguments.beam_size,
        best_of=arguments.best_of,
        patience=arguments.patience,
        length_penalty=arguments.length_penalty,
        temperature=temperatures(arguments.temperature, arguments.temperature_increment_on_fallback),
        compression_ratio_threshold=arguments.compression_ratio_threshold,
        logprob_threshold=arguments.logprob_threshold,
        no_speech_threshold=arguments.no_speech_threshold,
        condition_on_previous_text=arguments.condition_on_previous_text,
        initial_prompt=arguments.initial_prompt,
        word_timestamps=arguments.word_timestamps or request.speakers,  # speakers are assigned word by word
        suppress_tokens=arguments.suppress_tokens,
        vad_filter=arguments.vad_filter and backend == "faster-whisper",
        batch_size=arguments.batch_size if backend == "faster-whisper" else 0,
    )
    settings = RunSettings(
        formats=request.formats,
        overwrite=arguments.overwrite,
        skip_existing=arguments.skip_existing,
        split_channels=request.split_channels,
        strict_audio=not arguments.ignore_decode_errors,
        verbose=arguments.verbose,
        model_name=request.model.name,
    )
    model_request = ModelRequest(request.model, device, request.compute_type, threads, request.device_index)
    speakers = speaker_source(arguments, request.root, len(jobs), device, request.device_index, threads) \
        if request.speakers else None

    def load():
        engine = load_engine(backend, model_request, notice)
        notice(f"{engine.name} {request.model.name} on {engine.device} ({engine.compute_type}, {threads} threads)")
        return engine

    return lambda: run_jobs(jobs, settings, load, options, speakers=speakers)


def speaker_source(arguments, root: Path, job_count: int, device: str, device_index: int, threads: int):
    """Where speakers come from: a ready-made RTTM, or the pyannote pipeline (checked now, loaded later)."""
    from whisper_hpc.diarization import require_pyannote
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
                   ("--diarization_model", arguments.diarization_model)) if value]
        if ignored:
            notice(f"{', '.join(ignored)} ignored: the speakers come from {rttm}")
        return RttmSpeakers(rttm, single_input=job_count == 1)
    require_pyannote()
    directory = resolve_pipeline(arguments.diarization_model, root)
    check_pipeline(directory)

    def load():
        from whisper_hpc.diarization.pipeline import SpeakerDiarizer

        diarizer = SpeakerDiarizer(directory, device, device_index, threads)
        notice(f"speaker diarization: pyannote pipeline {directory}")
        return diarizer

    return PipelineSpeakers(load, directory, counts)
