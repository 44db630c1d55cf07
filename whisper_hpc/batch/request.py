"""A whisper-batch command line, checked: inputs, output folder, model, batch options, engine flags.

Everything that would make every task fail is refused here, before anything is submitted.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from whisper_hpc.batch import plan
from whisper_hpc.batch.selection import absolute

MAIL_TYPES = frozenset(
    "NONE BEGIN END FAIL REQUEUE ALL INVALID_DEPEND STAGE_OUT TIME_LIMIT TIME_LIMIT_90 TIME_LIMIT_80 "
    "TIME_LIMIT_50 ARRAY_TASKS".split()
)
ENGINE_ONLY = {"help", "audio", "file_list", "output_dir"}
PATH_FLAGS = {"model_dir", "model_directory", "diarization_rttm"}  # made absolute: tasks run elsewhere
MAYBE_PATH_FLAGS = {"model", "diarization_model"}  # names, or paths
SETTINGS = ("chunk_size", "mem", "time", "throttle", "partition", "account", "gpus", "cpus", "mail_user", "mail_type")


class Refusal(Exception):
    """Nothing can be submitted or read; the message is one line saying why and what to do."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise Refusal(f"{message} (whisper-batch --help)")


def batch_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="whisper-batch", add_help=False, allow_abbrev=False)
    parser.add_argument("--chunk_size", type=int)
    parser.add_argument("--mem")
    parser.add_argument("--time")
    parser.add_argument("--throttle", type=int)
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--gpus", type=int)
    parser.add_argument("--cpus", type=int)
    parser.add_argument("--mail_user")
    parser.add_argument("--mail_type")
    parser.add_argument("--dry_run", action="store_true")
    return parser


def explicit_settings(namespace: argparse.Namespace) -> dict:
    """The batch options the user gave (resume keeps them unless given again)."""
    given = {name: getattr(namespace, name) for name in SETTINGS if getattr(namespace, name) is not None}
    for name in ("chunk_size", "throttle", "cpus"):
        if name in given and given[name] < 1:
            raise Refusal(f"--{name} must be at least 1")
    if given.get("gpus", 0) < 0:
        raise Refusal("--gpus must be 0 or more")
    for name, check in (("mem", plan.parse_memory), ("time", plan.parse_time)):
        try:
            if name in given and check(given[name]) is None:
                raise ValueError(f"'{given[name]}' is no limit; give HH:MM:SS")
        except ValueError as error:
            raise Refusal(f"--{name}: {error}")
    if "mail_type" in given:
        unknown = [t for t in given["mail_type"].upper().split(",") if t not in MAIL_TYPES]
        if unknown:
            raise Refusal(f"--mail_type {given['mail_type']}: unknown type {unknown[0]}; use e.g. END,FAIL")
        given["mail_type"] = given["mail_type"].upper()
    return given


def engine_arguments(namespace: argparse.Namespace, model: str) -> list[str]:
    """The whisper-hpc flags that differ from its defaults, as an argument list (inputs excluded)."""
    from whisper_hpc.model_store import looks_like_path
    from whisper_hpc.options import build_parser

    argv: list[str] = []
    has_model = False
    for action in build_parser()._actions:
        if not action.option_strings or action.dest in ENGINE_ONLY:
            continue
        value = getattr(namespace, action.dest, action.default)
        if value == action.default:
            continue
        if action.dest in PATH_FLAGS or (action.dest in MAYBE_PATH_FLAGS and looks_like_path(str(value))):
            value = str(absolute(str(value)))
        has_model = has_model or action.dest in ("model", "model_directory")
        flag = max(action.option_strings, key=len)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]  # True/False/None read back as whisper-hpc expects
    if not has_model:
        argv = ["--model", model, *argv]  # the site default, pinned: every task uses the same model
    return argv


@dataclass
class Request:
    """A checked submit/run command line."""

    paths: list[str]
    output_dir: Path
    namespace: argparse.Namespace  # whisper-hpc's
    settings: dict  # batch options given
    dry_run: bool
    model: object  # StagedModel
    formats: tuple[str, ...]
    site: object  # Site


def parse_request(argv: Sequence[str]) -> Request:
    from whisper_hpc import setup
    from whisper_hpc.options import UsageError, parse

    batch, rest = batch_parser().parse_known_args(list(argv))
    settings = explicit_settings(batch)
    try:
        namespace = parse(rest)
        formats = setup.output_formats(namespace.output_format, speakers(namespace))
        setup.parse_device(namespace.device, namespace.device_index)
        paths = setup.input_names(namespace)
        site = setup.checked_site()
        root, model = setup.staged_model(namespace, site)
        setup.checked_language(namespace, model)
    except UsageError as error:
        raise Refusal(str(error))
    check_diarization(namespace, root)
    output_dir = absolute(namespace.output_dir)
    if not batch.dry_run:
        try:
            setup.writable_directory(output_dir)
        except UsageError as error:
            raise Refusal(str(error))
    elif output_dir.exists() and not os.access(output_dir, os.W_OK | os.X_OK):
        raise Refusal(f"output directory {output_dir} is not writable; choose another with --output_dir")
    return Request(paths, output_dir, namespace, settings, batch.dry_run, model, formats, site)


def speakers(namespace: argparse.Namespace) -> bool:
    """Transcripts with speakers (and so an .rttm among `all` formats)."""
    return bool(getattr(namespace, "diarize", False) or getattr(namespace, "diarization_rttm", None))


def runs_pipeline(namespace: argparse.Namespace) -> bool:
    """The pyannote pipeline runs (a ready-made --diarization_rttm costs nothing)."""
    return bool(getattr(namespace, "diarize", False)) and not getattr(namespace, "diarization_rttm", None)


def check_diarization(namespace: argparse.Namespace, root: Path) -> None:
    """--diarize needs a staged pipeline: refuse now, not in every task."""
    if not runs_pipeline(namespace):
        return
    try:
        from whisper_hpc.diarization import DiarizationError
        from whisper_hpc.diarization.staged import check_pipeline, resolve_pipeline
    except ImportError:  # an install without the diarization tier: the tasks will say so
        return
    try:
        check_pipeline(resolve_pipeline(namespace.diarization_model, root))
    except DiarizationError as error:
        raise Refusal(str(error))
    except ImportError:  # PyYAML absent here: resolve only
        pass
