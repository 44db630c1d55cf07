"""A whisper-batch command line, checked: inputs, output folder, model, batch options, engine flags.

Everything that would make every task fail is refused here, before anything is submitted.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Sequence

from whisper_hpc import sizing
from whisper_hpc.assemble import Request as TranscriptionRequest
from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.batch.selection import absolute

MAIL_TYPES = frozenset(
    "NONE BEGIN END FAIL REQUEUE ALL INVALID_DEPEND STAGE_OUT TIME_LIMIT TIME_LIMIT_90 TIME_LIMIT_80 "
    "TIME_LIMIT_50 ARRAY_TASKS".split()
)
BATCH_OWNED = {"--output_dir", "-o", "--file_list"}  # the batch decides these per task
PATH_FLAGS = {"--model_dir", "--model_directory", "--diarization_rttm"}  # made absolute: tasks run elsewhere
MAYBE_PATH_FLAGS = {"--model", "-m", "--diarization_model"}  # names, or paths
SETTINGS = ("chunk_size", "mem", "time", "throttle", "partition", "account", "gpus", "cpus", "mail_user", "mail_type")


class Refusal(WhisperHpcError):
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
    for name, check in (("mem", sizing.parse_memory), ("time", sizing.parse_time)):
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


NEGATIVE_NUMBER = re.compile(r"-\d+|-\d*\.\d+")  # what argparse reads as a value, not a flag


def engine_arguments(argv: Sequence[str], model: str) -> list[str]:
    """The user's own whisper-hpc flags, for every task: inputs, --output_dir and --file_list left
    out (each task has its own), paths made absolute, and the model pinned when none is named."""
    from whisper_hpc.model_store import looks_like_path
    from whisper_hpc.options import split_inputs

    recorded: list[str] = []
    flags, _inputs = split_inputs(argv)
    for flag, value in flags:
        if flag in BATCH_OWNED:
            continue
        if value is not None and (flag in PATH_FLAGS or (flag in MAYBE_PATH_FLAGS and looks_like_path(value))):
            value = str(absolute(value))
        if value is None:
            recorded.append(flag)
        elif value.startswith("-") and not NEGATIVE_NUMBER.fullmatch(value):
            # as two words it would read back as a flag of its own
            recorded.append(f"{flag}={value}")
        else:
            recorded += [flag, value]
    if not any(flag in ("--model", "-m", "--model_directory") for flag, _ in flags):
        recorded = ["--model", model, *recorded]  # the site default, pinned: every task uses the same model
    return recorded


@dataclass(frozen=True)
class Request:
    """A checked submit/run command line."""

    transcription: TranscriptionRequest  # whisper-hpc's flags, checked
    engine_args: list[str]  # as the user typed them, for each task (engine_arguments)
    settings: dict  # batch options given
    dry_run: bool


def parse_request(argv: Sequence[str]) -> Request:
    from whisper_hpc.assemble import check_request
    from whisper_hpc.options import parse

    batch, rest = batch_parser().parse_known_args(list(argv))
    settings = explicit_settings(batch)
    transcription = check_request(parse(rest), create_output=not batch.dry_run)
    check_diarization(transcription)
    return Request(transcription, engine_arguments(rest, transcription.model.name), settings, batch.dry_run)


def check_diarization(request: TranscriptionRequest) -> None:
    """--diarize needs a staged pipeline: refuse now, not in every task."""
    if not request.diarize:
        return
    from whisper_hpc.diarization.staged import check_pipeline, resolve_pipeline

    check_pipeline(resolve_pipeline(request.diarization_model, request.root))
