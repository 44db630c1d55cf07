"""One array task: its chunk of files through whisper-hpc with one model load, and a result file.

The chunk's paths go to whisper-hpc in a --file_list (or, for a name a line-based list cannot
carry, as an argument), and whisper-hpc is exec'd from an argument list: no shell ever sees a
file name. The manifest is checked first (Manifest.check: absolute paths, outputs inside the
batch's output folder, engine flags whisper-hpc accepts that leave the outputs to the task).
whisper-hpc writes each transcript atomically and skips finished files, so a task killed
mid-file leaves nothing half-written and a resubmission finishes what is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from whisper_hpc.batch.manifest import Manifest, Submission, TaskResult, write_result
from whisper_hpc.batch.sampler import Sampler
from whisper_hpc.batch.selection import NamingError, check_invocation, invocations, list_safe

FORWARD_GRACE_SECONDS = 2.0  # Slurm signals every process of the job; forward only if whisper-hpc missed it
CAPTURE_LIMIT = 8 << 20  # bytes of whisper-hpc's stderr kept to find per-file errors in
TERMINATED = 128 + signal.SIGTERM


def engine_command() -> list[str]:
    """How to start whisper-hpc: through the container wrapper when the module provides one
    (on PATH, or beside this whisper-batch when the job did not inherit the module's PATH)."""
    launcher = Path(sys.argv[0]).parent / "singularity_wrapper" if sys.argv and sys.argv[0] else None
    wrapper = shutil.which("singularity_wrapper") or (str(launcher) if launcher and launcher.is_file() else None)
    if wrapper:
        return [wrapper, "run"]
    beside = Path(sys.executable).parent / "whisper-hpc"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("whisper-hpc")
    return [found] if found else [sys.executable, "-m", "whisper_hpc"]


def spellings(path: str) -> list[str]:
    """How a path can appear in whisper-hpc's messages (undecodable bytes come out escaped)."""
    escaped = path.encode("utf-8", "backslashreplace").decode("utf-8")
    return [path] if escaped == path else [path, escaped]


def file_errors(paths: dict[int, str], text: str) -> dict[int, str]:
    """Per-file reasons from whisper-hpc's `error: <path>: <reason>` lines.

    Matching known paths (longest first) rather than splitting lines keeps names with newlines
    or ': ' in them attributed to the right file.
    """
    errors: dict[int, str] = {}
    claimed: set[int] = set()
    for index, path in sorted(paths.items(), key=lambda item: -len(item[1])):
        for spelling in spellings(path):
            marker = f"error: {spelling}: "
            position = text.rfind(marker)
            while position >= 0 and position in claimed:
                position = text.rfind(marker, 0, position)
            if position >= 0:
                claimed.add(position)
                errors[index] = text[position + len(marker):].split("\n", 1)[0].strip()
                break
    return errors


def usage_error(text: str) -> str | None:
    """whisper-hpc's own one-line refusal (exit 2), e.g. a model missing inside the container."""
    lines = [line for line in text.splitlines() if line.startswith("whisper-hpc: ")]
    return lines[-1][len("whisper-hpc: "):] if lines else None


class Stopper:
    """SIGTERM (scancel, time limit): stop after the current whisper-hpc run has cleaned up."""

    def __init__(self) -> None:
        self.stopping = False
        self.child: subprocess.Popen | None = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, number, frame) -> None:
        self.stopping = True
        timer = threading.Timer(FORWARD_GRACE_SECONDS, self.forward)
        timer.daemon = True
        timer.start()

    def forward(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)


def run_whisper(argv: list[str], stopper: Stopper) -> tuple[int, str]:
    """Run whisper-hpc; its stderr goes on to ours (the Slurm log) and is kept to read errors from."""
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except OSError as error:
        return 2, f"whisper-hpc: cannot start {argv[0]}: {error.strerror}\n"
    stopper.child = child
    kept = bytearray()
    sink = getattr(sys.stderr, "buffer", None)
    while True:
        block = os.read(child.stderr.fileno(), 65536)
        if not block:
            break
        if sink is not None:
            sink.write(block)
            sink.flush()
        else:
            sys.stderr.write(block.decode("utf-8", "replace"))
        kept += block
        if len(kept) > CAPTURE_LIMIT:
            del kept[: len(kept) - CAPTURE_LIMIT]
    code = child.wait()
    child.stderr.close()
    stopper.child = None
    return code, kept.decode("utf-8", "replace")


def invocation_argv(manifest: Manifest, output_dir: str, indices: Sequence[int], list_file: Path) -> list[str]:
    paths = [manifest.entries[i].path for i in indices]
    listed = [p for p in paths if list_safe(p)]
    as_arguments = [p for p in paths if not list_safe(p)]
    argv = [*engine_command(), *manifest.engine_args, "--output_dir", output_dir]
    if listed:
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("".join(p + "\n" for p in listed), encoding="utf-8")
        argv += ["--file_list", str(list_file)]
    return argv + as_arguments  # absolute paths: never mistaken for flags


def run_task(manifest: Manifest, submission_number: int | None, task: int, job_id: str | None = None) -> int:
    """Transcribe one task's chunk; write results-S-T.json; 0 all done, 1 some not, 2 set-up error.

    A manifest that is damaged or leads outside its output folder is refused (ManifestError)
    before anything is run or written.
    """
    manifest.check()
    submission = manifest.submission(submission_number)
    if not 0 <= task < len(submission.tasks):
        print(f"whisper-batch: task {task} is not in submission {submission.number} of {manifest.path} "
              f"(it has tasks 0-{len(submission.tasks) - 1})", file=sys.stderr)
        return 2
    result_path = manifest.result_path(submission.number, task)
    record = TaskResult(submission.number, task, host=socket.gethostname(), pid=os.getpid(), job_id=job_id,
                        started=time.time(), engine=engine_command())
    write_result(result_path, record)
    stopper = Stopper()
    stopper.install()
    chunk = submission.tasks[task]
    with Sampler(manifest.samples_path(submission.number, task), os.getpid()):  # stopped before the last result
        run_chunk(manifest, submission, task, record, stopper)
    record.ended = time.time()
    done = all(manifest.is_done(i) for i in chunk)
    record.state = "terminated" if stopper.stopping and not done else "finished"
    write_result(result_path, record)
    if record.state == "terminated":
        return TERMINATED
    if record.task_error:
        return 2
    return 0 if done else 1


def run_chunk(manifest: Manifest, submission: Submission, task: int, record: TaskResult, stopper: Stopper) -> None:
    """The task's whisper-hpc runs, one per output folder, noted in `record`; until `stopper` says stop."""
    for number, (output_dir, indices) in enumerate(invocations(manifest.entries, submission.tasks[task])):
        if stopper.stopping:
            break
        if all(manifest.is_done(i) for i in indices):
            continue
        try:
            check_invocation(manifest.entries, output_dir, indices)
        except NamingError as error:
            record.task_error = str(error)
            continue
        list_file = manifest.work_dir / f"list-{submission.number}-{task}-{number}.txt"
        try:
            code, text = run_whisper(invocation_argv(manifest, output_dir, indices, list_file), stopper)
        finally:
            list_file.unlink(missing_ok=True)
        record.exit_codes.append(code)
        errors = file_errors({i: manifest.entries[i].path for i in indices}, text)
        record.errors.update({str(i): reason for i, reason in errors.items()})
        if code == 2:
            record.task_error = usage_error(text) or "whisper-hpc refused to run (exit status 2); see the log"
