"""Where each file of a batch stands: done, failed, running or pending.

done     every requested transcript exists (whisper_hpc.inputs.Job.is_done)
failed   its task finished, and whisper-hpc reported an error for it (the reason is shown)
running  its task is running now
pending  queued, or not done because its task was stopped (scancel, time limit, node failure,
         never submitted): `whisper-batch resume` redoes it
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from typing import Callable

from whisper_hpc.batch import slurm
from whisper_hpc.batch.manifest import Manifest, Submission, TaskResult, read_result

STATES = ("done", "failed", "running", "pending")


@dataclass
class FileStatus:
    index: int
    path: str
    state: str
    detail: str = ""
    live: bool = False  # queued or running in a job that is still alive: resume must leave it alone


def pid_alive_here(record: TaskResult) -> bool:
    if record.host != socket.gethostname():
        return False
    try:
        os.kill(int(record.pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def task_key(submission: Submission, task: int) -> str:
    return str(task) if submission.kind == "array" else ""


def file_statuses(
    manifest: Manifest, states_of: Callable[[str], dict[str, str]] = slurm.job_states
) -> list[FileStatus]:
    cache: dict[str, dict[str, str]] = {}

    def states(job_id: str | None) -> dict[str, str]:
        if not job_id:
            return {}
        if job_id not in cache:
            try:
                cache[job_id] = states_of(job_id)
            except slurm.SlurmError:
                cache[job_id] = {}
        return cache[job_id]

    latest: dict[int, tuple[Submission, int]] = {}
    for submission in manifest.submissions:
        for task, indices in enumerate(submission.tasks):
            for index in indices:
                latest[index] = (submission, task)

    statuses = []
    for index, entry in enumerate(manifest.entries):
        if manifest.is_done(index):
            statuses.append(FileStatus(index, entry.path, "done"))
            continue
        if index not in latest:
            statuses.append(FileStatus(index, entry.path, "pending", "not submitted"))
            continue
        submission, task = latest[index]
        record = read_result(manifest.result_path(submission.number, task))
        state = states(submission.job_id).get(task_key(submission, task))
        statuses.append(unfinished_status(manifest, index, submission, task, record, state))
    return statuses


def unfinished_status(manifest: Manifest, index: int, submission: Submission, task: int, record: TaskResult | None,
                      state: str | None) -> FileStatus:
    """Where a file without all its transcripts stands: pending, running or failed, and why."""
    path = manifest.entries[index].path
    where = f"task {task} of job {submission.job_id}" if submission.kind == "array" else f"run {submission.number}"
    finished = record is not None and record.finished
    if state in slurm.QUEUED and not finished:
        return FileStatus(index, path, "pending", f"queued ({where})", live=True)
    # Without a job id (a `run` outside Slurm) only the process itself can say it still runs.
    alive_here = state is None and not submission.job_id and record is not None \
        and record.state == "running" and pid_alive_here(record)
    if (state in slurm.RUNNING or alive_here) and not finished:
        return FileStatus(index, path, "running", where, live=True)
    if finished:
        reason = record.errors.get(str(index)) or record.task_error or \
            f"whisper-hpc wrote no transcripts for it; see {manifest.log_path(submission.number, task)}"
        return FileStatus(index, path, "failed", reason)
    if state == "OUT_OF_MEMORY":
        return FileStatus(index, path, "pending", f"{where} ran out of memory; resume with a larger --mem")
    if state == "TIMEOUT":
        return FileStatus(index, path, "pending", f"{where} hit its time limit; resume (perhaps with a longer --time)")
    if state or (record and record.state == "terminated"):
        how = state or "stopped"
        return FileStatus(index, path, "pending", f"{where} ended ({how}) before this file; resume redoes it")
    return FileStatus(index, path, "pending", f"{where} left no record (never started, or Slurm forgot it)")


def counts(statuses: list[FileStatus]) -> dict[str, int]:
    return {state: sum(1 for s in statuses if s.state == state) for state in STATES}


def printable(path: str) -> str:
    """A path on one line: control characters shown as escapes, everything else verbatim."""
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in path)


def report(manifest: Manifest, statuses: list[FileStatus], unfinished_only: bool = False) -> str:
    lines = []
    for status in statuses:
        if unfinished_only and status.state == "done":
            continue
        detail = f"  ({status.detail})" if status.detail and status.state != "done" else ""
        lines.append(f"{status.state:<8} {printable(status.path)}{detail}")
    total = counts(statuses)
    summary = ", ".join(f"{total[state]} {state}" for state in STATES)
    lines.append(f"{summary} of {len(statuses)} files; manifest {manifest.path}")
    return "\n".join(lines) + "\n"


def as_json(manifest: Manifest, statuses: list[FileStatus]) -> str:
    return json.dumps({
        "manifest": str(manifest.path),
        "counts": counts(statuses),
        "jobs": [s.job_id for s in manifest.submissions if s.job_id],
        "files": [asdict(s) for s in statuses],
    }, indent=1) + "\n"
