"""Atomic checkpoints: RUN_DIR/checkpoints/step-XXXXXX/ with the weights (safetensors),
optimizer.pt, state.json and a COMPLETE marker.

Rank 0 writes everything into .tmp-step-XXXXXX-<random>/, the marker last, then renames the
folder; a killed save leaves only a .tmp folder, which the next run removes. Resume takes the
newest folder with its marker. The newest two complete ones are kept.

Test hook: WHISPER_HPC_FINETUNE_KILL_IN_SAVE=N kills the process (SIGKILL) in the save of step N,
after the weights are in the temporary folder and before the marker."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
from pathlib import Path

from whisper_hpc.files import write_atomically
from whisper_hpc.finetune.rundir import RunDir

COMPLETE = "COMPLETE"
STATE = "state.json"
OPTIMIZER = "optimizer.pt"
KEEP = 2
KILL_HOOK = "WHISPER_HPC_FINETUNE_KILL_IN_SAVE"
NAME = re.compile(r"^step-(\d{6,})$")


def folder_name(step: int) -> str:
    return f"step-{step:06d}"


def complete(folder: Path) -> bool:
    return folder.is_dir() and NAME.match(folder.name) is not None and (folder / COMPLETE).is_file()


def all_complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if complete(path)]
    return sorted(found, key=lambda path: int(NAME.match(path.name).group(1)))


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of RUN_DIR, or None."""
    found = all_complete(run_dir)
    return found[-1] if found else None


def read_state(folder: Path) -> dict:
    return json.loads((folder / STATE).read_text(encoding="utf-8"))


def remove_incomplete(run: RunDir) -> list[Path]:
    """Remove what killed saves left (.tmp folders, step folders without their marker)."""
    removed = []
    if run.checkpoints.is_dir():
        for path in run.checkpoints.iterdir():
            if path.name.startswith(".tmp-") or (path.is_dir() and NAME.match(path.name) and not complete(path)):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def prune(run: RunDir, keep: int = KEEP) -> None:
    for old in all_complete(run.path)[:-keep]:
        (old / COMPLETE).unlink()  # no longer complete first: a kill mid-removal leaves no half checkpoint
        shutil.rmtree(old, ignore_errors=True)


def save(run: RunDir, step: int, write_weights, optimizer_state: dict, state: dict) -> Path:
    """Write checkpoint `step` (rank 0 only); `write_weights(folder)` puts the weights in."""
    import torch

    run.checkpoints.mkdir(exist_ok=True)
    final = run.checkpoints / folder_name(step)
    temporary = run.checkpoints / f".tmp-{folder_name(step)}-{secrets.token_hex(4)}"
    temporary.mkdir()
    try:
        write_weights(temporary)
        if os.environ.get(KILL_HOOK) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        write_atomically(temporary / OPTIMIZER, lambda stream: torch.save(optimizer_state, stream))
        write_atomically(temporary / STATE, json.dumps(state, indent=2) + "\n")
        write_atomically(temporary / COMPLETE, f"step {step}\n")
        sync_folder(temporary)
        if final.exists():  # a step saved before, by a run that died before it pruned: replace it
            shutil.rmtree(final)
        os.rename(temporary, final)
        sync_folder(run.checkpoints)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    prune(run)
    return final


def sync_folder(folder: Path) -> None:
    """Flush the folder's files and its entries to disk."""
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as stream:
                os.fsync(stream.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
