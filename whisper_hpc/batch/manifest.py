"""The batch manifest: one JSON file that says what a batch is, written atomically.

    OUTPUT_DIR/.whisper-batch/<name>.json        the manifest (files, flags, submissions)
    OUTPUT_DIR/.whisper-batch/<name>/            per submission: the job script, task logs,
                                                 one result file per task (results-S-T.json)
                                                 and its resource samples (samples-S-T.tsv)

File paths live only in JSON (and in argv lists handed straight to exec): nothing of a path is
ever interpolated into a shell command line.

A manifest is data that anyone able to write OUTPUT_DIR could have edited, so `Manifest.load`
(and `Manifest.check`, which `run_task` calls on any manifest it is given) refuses one that is
damaged or hostile with one ManifestError line naming the manifest and the key, before anything
runs or is written. What is checked:

* the file: a regular file (a FIFO or a device is not opened for reading), JSON, format 1, no
  unknown keys (top level, entries, submissions);
* types: name, output_dir and model are strings, engine_args and formats lists of strings,
  split_channels and overwrite booleans, created a number; every entry's path, output_dir and
  output_base are strings, duration a number or null, probe_error a string or null; every
  submission's number a positive integer (unique), kind "array" or "run", tasks lists of valid
  file indices, resources an object whose settings are batch options that `whisper-batch` itself
  would accept, job_id digits or null. No string holds a NUL;
* where things go: the manifest lies in OUTPUT_DIR/.whisper-batch/ and output_dir is that
  OUTPUT_DIR (compared after resolving symbolic links); name is a plain file name, so the
  batch's folder (logs, results, file lists) is OUTPUT_DIR/.whisper-batch/<name>/; every entry's
  path is absolute (never mistaken for a flag), its output_dir lies inside OUTPUT_DIR, and its
  output_base inside that output_dir, both after resolving symbolic links and neither in the
  .whisper-batch folder; no two entries share an output_base; formats are whisper-hpc's;
* engine_args: whisper-hpc accepts them (`whisper_hpc.options.parse`), and they hold no input
  and none of the flags each task sets itself (--output_dir, -o, --file_list). Their values
  (a prompt, a language) reach whisper-hpc as single argv elements, never through a shell.

Not checked: that entry paths exist or are audio (a task reports those per file), and what a
--model, --model_dir or --diarization_model path in engine_args holds: whisper-hpc loads the
model it names, as it would from the user's own command line.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from whisper_hpc.batch.selection import Entry, NamingError, outputs_exist, refuse_shared_outputs
from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.files import NotARegularFile, read_regular_file, write_atomically

STATE_DIR = ".whisper-batch"
FORMAT_VERSION = 1


class ManifestError(WhisperHpcError):
    """A manifest that cannot be read; the message names it."""


@dataclass
class Submission:
    """One sbatch (or one `run` inside an allocation) over some of the manifest's files."""

    number: int
    kind: str  # "array": sbatch --array; "run": inside the current allocation
    tasks: list[list[int]]  # file indices per array task
    resources: dict = field(default_factory=dict)
    job_id: str | None = None
    submitted: float = field(default_factory=time.time)

    def task_of(self, index: int) -> int | None:
        for task, files in enumerate(self.tasks):
            if index in files:
                return task
        return None


@dataclass
class Manifest:
    path: Path
    name: str
    output_dir: str
    engine_args: list[str]  # whisper-hpc flags, without inputs and --output_dir
    formats: list[str]
    split_channels: bool
    overwrite: bool
    model: str
    entries: list[Entry]
    submissions: list[Submission] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    @property
    def state_dir(self) -> Path:
        return self.path.parent

    @property
    def work_dir(self) -> Path:
        return self.state_dir / self.name

    @property
    def since(self) -> float | None:
        """For an --overwrite batch, transcripts older than the batch do not count as done."""
        return self.created if self.overwrite else None

    def is_done(self, index: int) -> bool:
        return outputs_exist(self.entries[index], tuple(self.formats), self.split_channels, self.since)

    def unfinished(self) -> list[int]:
        """The indices of the files whose transcripts are not all written yet."""
        return [i for i in range(len(self.entries)) if not self.is_done(i)]

    def result_path(self, submission: int, task: int) -> Path:
        return self.work_dir / f"results-{submission}-{task}.json"

    def samples_path(self, submission: int, task: int) -> Path:
        """The task's CPU, memory and GPU time series (whisper_hpc.batch.sampler)."""
        return self.work_dir / f"samples-{submission}-{task}.tsv"

    def log_path(self, submission: int, task: int | str) -> Path:
        return self.work_dir / f"task-{submission}-{task}.log"

    def script_path(self, submission: int) -> Path:
        return self.work_dir / f"submit-{submission}.sbatch"

    def submission(self, number: int | None = None) -> Submission:
        if not self.submissions:
            raise ManifestError(f"{self.path}: nothing was submitted from this manifest yet")
        if number is None:
            return self.submissions[-1]
        for submission in self.submissions:
            if submission.number == number:
                return submission
        raise ManifestError(f"{self.path}: has no submission {number}")

    def add_submission(self, kind: str, tasks: list[list[int]], resources: dict) -> Submission:
        number = max((s.number for s in self.submissions), default=0) + 1
        submission = Submission(number=number, kind=kind, tasks=tasks, resources=resources)
        self.submissions.append(submission)
        return submission

    def to_dict(self) -> dict:
        record = asdict(self)
        record.pop("path")
        return {"format": FORMAT_VERSION, **record}

    def save(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        # ASCII JSON: file names that are not valid UTF-8 survive as \udcXX escapes.
        write_atomically(self.path, json.dumps(self.to_dict(), indent=1) + "\n")

    def check(self) -> None:
        """Refuse (ManifestError) a manifest that is damaged or leads outside its output folder."""
        check_record(self.to_dict(), Path(self.path))

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ManifestError(f"{path} is not a whisper-batch manifest (format {FORMAT_VERSION})")
        check_record(data, path)
        data = dict(data)
        data.pop("format")
        entries = [Entry(**e) for e in data.pop("entries")]
        submissions = [Submission(**s) for s in data.pop("submissions", [])]
        return cls(path=path, entries=entries, submissions=submissions, **data)


def read_json(path: Path) -> object:
    """The parsed file; a FIFO or device in its place is refused, not opened for reading."""
    try:
        return json.loads(read_regular_file(path).decode("utf-8"))
    except NotARegularFile:
        raise ManifestError(f"{path} is not a whisper-batch manifest (not a regular file)") from None
    except OSError as error:
        raise ManifestError(f"cannot read manifest {path}: {error.strerror}") from None
    except ValueError as error:
        raise ManifestError(f"{path} is not a whisper-batch manifest ({error})") from None


# ---- what a manifest may hold (see the module's docstring) -----------------------------------------

REMEDY = "the manifest was edited or damaged; start the batch again with `whisper-batch submit`"
JOB_ID = re.compile(r"[0-9]+")
TASK_FLAGS = ("--output_dir", "-o", "--file_list")  # each task sets these itself
WHOLE_SETTINGS = ("chunk_size", "throttle", "gpus", "cpus")  # the batch options that are numbers


def shown(value: object) -> str:
    """A value on one line, escaped and cut short, for a message."""
    text = json.dumps(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.real: dict[str, str] = {}

    def refuse(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.path}: {key}: {problem} ({REMEDY})")

    def keys(self, record: object, key: str, known: set[str], required: set[str]) -> dict:
        if not isinstance(record, dict):
            raise self.refuse(key, f"is {type_name(record)}, not an object")
        unknown = sorted(set(record) - known)
        if unknown:
            raise self.refuse(f"{key}.{unknown[0]}" if key else unknown[0], "is not a manifest key")
        missing = sorted(required - set(record))
        if missing:
            raise self.refuse(f"{key}.{missing[0]}" if key else missing[0], "is missing")
        return record

    def string(self, value: object, key: str, *, absolute: bool = False) -> str:
        if not isinstance(value, str):
            raise self.refuse(key, f"is {type_name(value)}, not a string")
        if "\0" in value:
            raise self.refuse(key, f"{shown(value)} holds a NUL character")
        if absolute and not value.startswith("/"):
            raise self.refuse(key, f"{shown(value)} is not an absolute path")
        return value

    def strings(self, value: object, key: str) -> list[str]:
        if not isinstance(value, list):
            raise self.refuse(key, f"is {type_name(value)}, not a list of strings")
        return [self.string(item, f"{key}[{i}]") for i, item in enumerate(value)]

    def boolean(self, value: object, key: str) -> None:
        if not isinstance(value, bool):
            raise self.refuse(key, f"is {type_name(value)}, not true or false")

    def number(self, value: object, key: str, *, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self.refuse(key, f"is {shown(value)}, not a number of seconds")

    def integer(self, value: object, key: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value >= high):
            limits = f"from {low} to {high - 1}" if high is not None else f"of at least {low}"
            raise self.refuse(key, f"is {shown(value)}, not a whole number {limits}")
        return value

    def resolved(self, folder: str) -> str:
        """The folder with symbolic links resolved (cached: entries share few folders)."""
        if folder not in self.real:
            self.real[folder] = os.path.realpath(folder)
        return self.real[folder]

    def inside(self, key: str, value: str, real: str, folder: str, *, strictly: bool, what: str) -> None:
        """Refuse `value` (`real` once resolved) unless it lies inside `folder` (resolved)."""
        if real.startswith(folder.rstrip("/") + "/") or (real == folder and not strictly):
            return
        that = "" if real == value else f" (that is {shown(real)})"
        raise self.refuse(key, f"{shown(value)}{that} is outside {what} {shown(folder)}")


def type_name(value: object) -> str:
    return {type(None): "null", bool: "true or false", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def field_names(kind) -> tuple[set[str], set[str]]:
    """(every field, the fields without a default) of a dataclass."""
    known = {f.name for f in fields(kind)}
    required = {f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING}
    return known, required


def check_record(data: dict, path: Path) -> None:
    """Refuse, with one line naming the manifest and the key, anything the docstring rules out."""
    check = Checker(path)
    known, required = field_names(Manifest)
    known, required = (known - {"path"}) | {"format"}, (required - {"path"}) | {"format"}
    check.keys(data, "", known, required)
    name = check.string(data["name"], "name")
    if name in ("", ".", "..") or "/" in name:
        raise check.refuse("name", f"{shown(name)} is not a plain file name")
    output_dir = check.string(data["output_dir"], "output_dir", absolute=True)
    check.string(data["model"], "model")
    check.boolean(data["split_channels"], "split_channels")
    check.boolean(data["overwrite"], "overwrite")
    if "created" in data:
        check.number(data["created"], "created")
    check_formats(check, data["formats"])
    check_engine_args(check, data["engine_args"])

    state = os.path.realpath(path.parent)
    output = check.resolved(output_dir)
    if os.path.basename(state) != STATE_DIR or os.path.dirname(state) != output:
        raise check.refuse("output_dir", f"{shown(output_dir)} is not the folder this manifest lies in "
                                         f"(a manifest lives in OUTPUT_DIR/{STATE_DIR}/)")
    entries = data["entries"]
    if not isinstance(entries, list):
        raise check.refuse("entries", f"is {type_name(entries)}, not a list")
    entry_known, entry_required = field_names(Entry)
    for index, entry in enumerate(entries):
        key = f"entries[{index}]"
        check.keys(entry, key, entry_known, entry_required)
        check.string(entry["path"], f"{key}.path", absolute=True)
        folder = check.string(entry["output_dir"], f"{key}.output_dir", absolute=True)
        base = check.string(entry["output_base"], f"{key}.output_base", absolute=True)
        if os.path.basename(base) in ("", ".", ".."):
            raise check.refuse(f"{key}.output_base", f"{shown(base)} does not end in a file name")
        real_folder = check.resolved(folder)  # whisper-hpc writes into it: every link on the way counts
        real_base = os.path.join(check.resolved(os.path.dirname(base)), os.path.basename(base))
        check.inside(f"{key}.output_dir", folder, real_folder, output, strictly=False, what="the batch's output folder")
        check.inside(f"{key}.output_base", base, real_base, real_folder, strictly=True, what="the entry's output_dir")
        for part, value, real in (("output_dir", folder, real_folder), ("output_base", base, real_base)):
            if real == state or real.startswith(state + "/"):
                raise check.refuse(f"{key}.{part}", f"{shown(value)} is inside the batch's own {STATE_DIR} folder")
        check.number(entry.get("duration"), f"{key}.duration", optional=True)
        if entry.get("probe_error") is not None:
            check.string(entry["probe_error"], f"{key}.probe_error")
    try:
        refuse_shared_outputs([Entry(**e) for e in entries])
    except NamingError as error:
        raise check.refuse("entries", str(error)) from None
    check_submissions(check, data.get("submissions", []), len(entries))


def check_formats(check: Checker, value: object) -> None:
    from whisper_hpc.writers import FORMATS, SPEAKER_FORMATS

    formats = check.strings(value, "formats")
    if not formats:
        raise check.refuse("formats", "is empty")
    for position, fmt in enumerate(formats):
        if fmt not in FORMATS + SPEAKER_FORMATS:
            known = ", ".join(FORMATS + SPEAKER_FORMATS)
            raise check.refuse(f"formats[{position}]", f"{shown(fmt)} is not one of {known}")


def check_engine_args(check: Checker, value: object) -> None:
    from whisper_hpc.options import parse, split_inputs

    arguments = check.strings(value, "engine_args")
    flags, inputs = split_inputs(arguments)
    if inputs:
        raise check.refuse("engine_args", f"holds the input {shown(inputs[0])}; a batch's inputs are its entries")
    for flag, _value in flags:
        if flag in TASK_FLAGS:
            raise check.refuse("engine_args", f"holds {flag}, which each task sets itself")
    try:
        namespace = parse(arguments)
    except WhisperHpcError as error:
        raise check.refuse("engine_args", f"whisper-hpc refuses them: {error}") from None
    if namespace.audio or namespace.file_list is not None or namespace.output_dir != ".":
        raise check.refuse("engine_args", "name inputs or an output folder, which each task sets itself")


def check_submissions(check: Checker, value: object, files: int) -> None:
    if not isinstance(value, list):
        raise check.refuse("submissions", f"is {type_name(value)}, not a list")
    known, required = field_names(Submission)
    numbers: set[int] = set()
    for position, submission in enumerate(value):
        key = f"submissions[{position}]"
        check.keys(submission, key, known, required)
        number = check.integer(submission["number"], f"{key}.number", 1)
        if number in numbers:
            raise check.refuse(f"{key}.number", f"{number} is used twice")
        numbers.add(number)
        if submission["kind"] not in ("array", "run"):
            raise check.refuse(f"{key}.kind", f"is {shown(submission['kind'])}, not \"array\" or \"run\"")
        tasks = submission["tasks"]
        if not isinstance(tasks, list):
            raise check.refuse(f"{key}.tasks", f"is {type_name(tasks)}, not a list")
        for task, indices in enumerate(tasks):
            if not isinstance(indices, list):
                raise check.refuse(f"{key}.tasks[{task}]", f"is {type_name(indices)}, not a list of file indices")
            for slot, index in enumerate(indices):
                check.integer(index, f"{key}.tasks[{task}][{slot}]", 0, files)
        job_id = submission.get("job_id")
        if job_id is not None and not (isinstance(job_id, str) and JOB_ID.fullmatch(job_id)):
            raise check.refuse(f"{key}.job_id", f"is {shown(job_id)}, not a Slurm job id")
        if "submitted" in submission:
            check.number(submission["submitted"], f"{key}.submitted")
        check_resources(check, submission.get("resources", {}), f"{key}.resources")


def check_resources(check: Checker, resources: object, key: str) -> None:
    import argparse

    from whisper_hpc.batch.request import SETTINGS, explicit_settings

    if not isinstance(resources, dict):
        raise check.refuse(key, f"is {type_name(resources)}, not an object")
    settings = resources.get("settings", {})
    if not isinstance(settings, dict):
        raise check.refuse(f"{key}.settings", f"is {type_name(settings)}, not an object")
    for name, setting in settings.items():
        if name not in SETTINGS:
            raise check.refuse(f"{key}.settings.{name}", "is not a batch option")
        if name in WHOLE_SETTINGS:
            if isinstance(setting, bool) or not isinstance(setting, int):
                raise check.refuse(f"{key}.settings.{name}", f"is {shown(setting)}, not a whole number")
        else:
            check.string(setting, f"{key}.settings.{name}")
    try:
        explicit_settings(argparse.Namespace(**{name: settings.get(name) for name in SETTINGS}))
    except WhisperHpcError as error:
        raise check.refuse(f"{key}.settings", str(error)) from None


def new_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def manifest_path(output_dir: Path, name: str) -> Path:
    return output_dir / STATE_DIR / f"{name}.json"


@dataclass
class TaskResult:
    """What one array task (or one chunk of a `run`) did: results-S-T.json, written by the task."""

    submission: int
    task: int
    state: str = "running"  # running, finished, terminated
    host: str = ""
    pid: int | None = None
    job_id: str | None = None
    started: float | None = None
    ended: float | None = None
    exit_codes: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # file index (as text) -> whisper-hpc's reason
    task_error: str | None = None  # why the whole task could not run
    engine: list[str] = field(default_factory=list)  # how whisper-hpc was started

    @property
    def finished(self) -> bool:
        return self.state == "finished"


def write_result(path: Path, result: TaskResult) -> None:
    write_atomically(path, json.dumps(asdict(result), indent=1) + "\n")


RESULT_TYPES = {
    "submission": (int,), "task": (int,), "state": (str,), "host": (str,), "pid": (int, type(None)),
    "job_id": (str, type(None)), "started": (int, float, type(None)), "ended": (int, float, type(None)),
    "exit_codes": (list,), "errors": (dict,), "task_error": (str, type(None)), "engine": (list,),
}


def read_result(path: Path) -> TaskResult | None:
    """The task's result, or None when it wrote none (or a damaged one, or one of the wrong types)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {name: data[name] for name in TaskResult.__dataclass_fields__ if name in data}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    for name, value in known.items():
        if isinstance(value, bool) or not isinstance(value, RESULT_TYPES[name]):
            return None
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in known.get("exit_codes", [])):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in known.get("errors", {}).items()):
        return None
    try:
        return TaskResult(**known)
    except TypeError:
        return None


def find_by_job(directory: Path, job_id: str) -> Path | None:
    """The manifest in `directory` with a submission whose job id is `job_id`."""
    for candidate in sorted(directory.glob("*.json")):
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        submissions = data.get("submissions") if isinstance(data, dict) else None
        if isinstance(submissions, list) and any(isinstance(s, dict) and str(s.get("job_id")) == job_id
                                                 for s in submissions):
            return candidate
    return None
