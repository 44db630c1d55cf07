"""The batch manifest: one JSON file that says what a batch is, written atomically.

    OUTPUT_DIR/.whisper-batch/<name>.json        the manifest (files, flags, submissions)
    OUTPUT_DIR/.whisper-batch/<name>/            per submission: the job script, task logs,
                                                 and one result file per task (results-S-T.json)

File paths live only in JSON (and in argv lists handed straight to exec): nothing of a path is
ever interpolated into a shell command line.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whisper_hpc.batch.selection import Entry, outputs_exist
from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.files import write_atomically

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

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise ManifestError(f"cannot read manifest {path}: {error.strerror}")
        except ValueError as error:
            raise ManifestError(f"{path} is not a whisper-batch manifest ({error})")
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ManifestError(f"{path} is not a whisper-batch manifest (format {FORMAT_VERSION})")
        try:
            data.pop("format")
            entries = [Entry(**e) for e in data.pop("entries")]
            submissions = [Submission(**s) for s in data.pop("submissions")]
            return cls(path=Path(path), entries=entries, submissions=submissions, **data)
        except (TypeError, KeyError) as error:
            raise ManifestError(f"{path}: damaged manifest ({error})")


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


def read_result(path: Path) -> TaskResult | None:
    """The task's result, or None when it wrote none (or a damaged one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {name: data[name] for name in TaskResult.__dataclass_fields__ if name in data}
        return TaskResult(**known)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def find_by_job(directory: Path, job_id: str) -> Path | None:
    """The manifest in `directory` with a submission whose job id is `job_id`."""
    for candidate in sorted(directory.glob("*.json")):
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and any(str(s.get("job_id")) == job_id for s in data.get("submissions", [])):
            return candidate
    return None
