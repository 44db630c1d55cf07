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
