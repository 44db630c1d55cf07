"""Calls to Slurm's commands (sbatch, squeue, sacct) and the parsing of their answers.

Every command is run from an argument list, never through a shell.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError

QUEUED = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
                    "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING"})
RUNNING = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT"})
LIVE = QUEUED | RUNNING
FIELD_SEPARATOR = "\x1f"  # never in a state; stands between sacct fields


class SlurmError(WhisperHpcError):
    """A Slurm command that is missing or failed; the message is one line."""


def available(command: str = "sbatch") -> bool:
    return shutil.which(command) is not None


def run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if not available(command[0]):
        raise SlurmError(f"{command[0]} not found: run this on a node with the Slurm client commands")
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{command[0]} did not answer within {timeout:.0f} s")


def escape_filename_pattern(path: str) -> str:
    """sbatch --output expands %-patterns: a literal % in a folder name must be doubled."""
    return path.replace("%", "%%")


@dataclass(frozen=True)
class ArrayRequest:
    """What `sbatch --array` is asked for."""

    tasks: int
    throttle: int
    memory: str
    time: str
    cpus: int
    job_name: str = "whisper-batch"
    partition: str = ""
    account: str = ""
    gres: str = ""
    mail_user: str = ""
    mail_type: str = ""

    def options(self, log_dir: str, log_name: str, work_dir: str) -> list[str]:
        """sbatch's options; `log_name` may hold %-patterns (%a: the task), `log_dir` is literal."""
        options = [
            "--parsable",
            f"--job-name={self.job_name}",
            f"--array=0-{self.tasks - 1}%{self.throttle}",
            f"--mem={self.memory}",
            f"--time={self.time}",
            f"--cpus-per-task={self.cpus}",
            "--ntasks=1",
            f"--output={escape_filename_pattern(log_dir)}/{log_name}",
            f"--chdir={work_dir}",
        ]
        if self.partition:
            options.append(f"--partition={self.partition}")
        if self.account:
            options.append(f"--account={self.account}")
        if self.gres:
            options.append(f"--gres={self.gres}")
        if self.mail_user:
            options.append(f"--mail-user={self.mail_user}")
            options.append(f"--mail-type={self.mail_type or 'END,FAIL'}")
        return options


def submit(options: list[str], script: Path) -> str:
    """sbatch; the job id."""
    result = run(["sbatch", *options, str(script)])
    if result.returncode != 0:
        message = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
        raise SlurmError(f"sbatch refused the job: {message or 'exit status ' + str(result.returncode)}")
    job_id = result.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise SlurmError(f"sbatch answered '{result.stdout.strip()}' instead of a job id")
    return job_id


def expand_indices(text: str) -> list[int]:
    """An array index expression as squeue and sacct print it: 3, [3-9%2], [1,4,7-9]."""
    body = text.strip().strip("[]").split("%", 1)[0]
    indices: list[int] = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first, last = part.split("-", 1)
            indices.extend(range(int(first), int(last) + 1))
        else:
            indices.append(int(part))
    return indices


def parse_states(text: str, job_id: str, separator: str = "|") -> dict[str, str]:
    """JobID and State columns -> {"" (the job itself) or task index: state}."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        if separator not in line:
            continue
        job, state = (field.strip() for field in line.split(separator)[:2])
        state = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        if job == job_id:
            states[""] = state
            continue
        prefix = f"{job_id}_"
        if not job.startswith(prefix):
            continue
        try:
            for index in expand_indices(job[len(prefix):]):
                states[str(index)] = state
        except ValueError:
            continue
    return states


def job_states(job_id: str) -> dict[str, str]:
    """State of the job and of each of its array tasks: the queue first, then accounting.

    Keys: "" for a job that is not an array, else the task index as a string. Empty when
    Slurm has forgotten the job and there is no accounting.
    """
    states: dict[str, str] = {}
    if available("sacct"):
        result = run(["sacct", "-n", "-X", "-P", f"--delimiter={FIELD_SEPARATOR}", "-j", job_id, "-o", "JobID,State"])
        if result.returncode == 0:
            states.update(parse_states(result.stdout, job_id, FIELD_SEPARATOR))
    if available("squeue"):
        result = run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T"])
        if result.returncode == 0:
            states.update(parse_states(result.stdout, job_id))  # the queue knows best while a job lives
    return states


def job_work_dir(job_id: str) -> Path | None:
    """The working directory a job was submitted with (sacct, else squeue)."""
    if available("sacct"):
        result = run(["sacct", "-n", "-X", "-P", f"--delimiter={FIELD_SEPARATOR}", "-j", job_id, "-o", "JobID,WorkDir"])
        for line in result.stdout.splitlines() if result.returncode == 0 else []:
            job, _, directory = line.partition(FIELD_SEPARATOR)
            if (job == job_id or job.startswith(f"{job_id}_")) and directory:
                return Path(directory)
    if available("squeue"):
        result = run(["squeue", "-h", "-j", job_id, "-o", "%Z"])
        lines = result.stdout.splitlines() if result.returncode == 0 else []
        if lines and lines[0].strip():
            return Path(lines[0])
    return None


# ---- accounting (sacct) for `whisper-batch report` ------------------------------------------------

ACCOUNTING_FIELDS = ("JobID", "State", "Start", "End", "Elapsed", "AllocCPUS", "TotalCPU", "MaxRSS", "ReqMem",
                     "NodeList")
MEMORY_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
MEMORY_VALUE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]?)([nc]?)", re.IGNORECASE)
DURATION = re.compile(r"(?:([0-9]+)-)?([0-9]+(?::[0-9]+){0,2}(?:\.[0-9]+)?)")
STEP_SUFFIX = re.compile(r"\.[A-Za-z0-9_+-]+\Z")  # .batch, .extern, .0


@dataclass(frozen=True)
class TaskAccounting:
    """What sacct knows of one array task (or of a job that is not an array: task None)."""

    job_id: str
    task: int | None
    state: str
    start: float | None = None  # seconds since the epoch; None before it started
    end: float | None = None
    elapsed_seconds: float = 0.0
    alloc_cpus: int = 0
    total_cpu_seconds: float = 0.0
    max_rss_bytes: int | None = None  # the largest over the task's steps
    requested_memory_bytes: int | None = None
    nodes: str = ""

    @property
    def allocated_cpu_seconds(self) -> float:
        return self.elapsed_seconds * self.alloc_cpus


def parse_duration(text: str) -> float | None:
    """sacct's [DD-][HH:]MM:SS[.mmm] (Elapsed, TotalCPU) in seconds; None for "", "Unknown", "INVALID"."""
    match = DURATION.fullmatch(text.strip())
    if not match:
        return None
    days, clock = match.groups()
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds + int(days or 0) * 86400


def parse_accounted_memory(text: str, cpus: int = 1) -> int | None:
    """sacct's memory (MaxRSS 221380K, ReqMem 4G, 4000M, older 4Gn per node or 4Gc per CPU) in bytes."""
    match = MEMORY_VALUE.fullmatch(text.strip())
    if not match:
        return None
    number, unit, per = match.groups()
    value = float(number) * MEMORY_UNITS[unit.upper()]
    if per.lower() == "c":
        value *= max(cpus, 1)
    return int(value)


def parse_timestamp(text: str) -> float | None:
    """sacct's Start/End (2025-03-01T10:15:00, local time) in seconds since the epoch; None for Unknown/None."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        return None


def split_job_id(text: str, job_id: str) -> tuple[list[int | None], bool] | None:
    """A sacct JobID of job `job_id` -> (its task indices, [None] when not an array; whether it is a step)."""
    step = bool(STEP_SUFFIX.search(text))
    base = STEP_SUFFIX.sub("", text) if step else text
    if base == job_id:
        return [None], step
    if not base.startswith(f"{job_id}_"):
        return None
    try:
        return list(expand_indices(base[len(job_id) + 1:])), step
    except ValueError:
        return None


def accounting_record(row: dict[str, str]) -> dict:
    """The fields of one sacct line that TaskAccounting keeps (all but the memory peak)."""
    cpus = int(row["AllocCPUS"]) if row["AllocCPUS"].isdigit() else 0
    return {
        "state": (row["State"].split() or ["UNKNOWN"])[0],  # "CANCELLED by 0" -> CANCELLED
        "start": parse_timestamp(row["Start"]),
        "end": parse_timestamp(row["End"]),
        "elapsed_seconds": parse_duration(row["Elapsed"]) or 0.0,
        "alloc_cpus": cpus,
        "total_cpu_seconds": parse_duration(row["TotalCPU"]) or 0.0,
        "requested_memory_bytes": parse_accounted_memory(row["ReqMem"], cpus) if row["ReqMem"] else None,
        "nodes": "" if row["NodeList"].startswith("None") else row["NodeList"],
    }


def parse_accounting(text: str, job_id: str, separator: str = FIELD_SEPARATOR) -> list[TaskAccounting]:
    """sacct -P lines (ACCOUNTING_FIELDS, steps included) -> one TaskAccounting per task, by index.

    The task's own line gives its state, times, CPUs and request; its steps (.batch, .extern,
    .0) hold the memory peaks, of which the largest counts (a task known only from its steps
    takes the first step's line). Lines of other jobs, and lines cut short, are left out.
    """
    own: dict[int | None, dict] = {}
    from_steps: dict[int | None, dict] = {}
    peaks: dict[int | None, int] = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(separator)]
        if len(fields) < len(ACCOUNTING_FIELDS):
            continue
        row = dict(zip(ACCOUNTING_FIELDS, fields))
        parsed = split_job_id(row["JobID"], job_id)
        if parsed is None:
            continue
        indices, step = parsed
        rss = parse_accounted_memory(row["MaxRSS"]) if row["MaxRSS"] else None
        for index in indices:
            if rss is not None:
                peaks[index] = max(peaks.get(index, 0), rss)
            (from_steps if step else own).setdefault(index, accounting_record(row))
    records = {**from_steps, **own}
    found = [TaskAccounting(job_id=job_id, task=index, max_rss_bytes=peaks.get(index), **record)
             for index, record in records.items()]
    return sorted(found, key=lambda t: -1 if t.task is None else t.task)


def job_accounting(job_id: str) -> list[TaskAccounting]:
    """sacct's accounting of every task of the job; empty when sacct is missing, fails or forgot it."""
    if not available("sacct"):
        return []
    command = ["sacct", "-n", "-P", f"--delimiter={FIELD_SEPARATOR}", "-j", job_id, "-o", ",".join(ACCOUNTING_FIELDS)]
    try:
        result = run(command)
    except (SlurmError, OSError):
        return []
    if result.returncode != 0:
        return []
    return parse_accounting(result.stdout, job_id)
