"""The model root on disk: staging area, read-only trees, atomic publish and removal, locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path
from typing import Iterator

from whisper_hpc.errors import WhisperHpcError

STAGING = ".staging"          # ROOT/.staging/<name>: downloads in progress (resumable), admin only
SOURCES = ".sources"  # ROOT/.staging/.sources/<name>: a hub download, kept until the import succeeds (resume)
DIARIZATION = "diarization"   # ROOT/diarization/<name>: pyannote pipeline directories
READ_ONLY_FILE = 0o444
READ_ONLY_DIR = 0o555


class TreeError(WhisperHpcError):
    """A model-root operation that cannot be done safely; the message says why."""

    exit_code = 1  # one model failed; the others are still done


def ensure_root(root: Path) -> Path:
    """Create the model root (and its diarization folder) readable by every user."""
    for folder in (root, root / DIARIZATION):
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
    return root


def staging_dir(root: Path, relative: str) -> Path:
    """ROOT/.staging/<relative>: where a fetch downloads before it publishes.

    .staging is 0711: users cannot list it, but looking for a file in it still answers "no such
    file" rather than "permission denied" (whisper-hpc looks at every folder of the root); each
    download folder in it is 0700, so nobody reads half-fetched, unchecked files.
    """
    area = root / STAGING
    area.mkdir(parents=True, exist_ok=True)
    area.chmod(0o711)
    path = area
    for part in Path(relative).parts:
        path = path / part
        if not path.is_dir():
            path.mkdir()
            path.chmod(0o700)
    return path


def make_read_only(directory: Path, *, include_top: bool = True) -> None:
    """Files 0444, directories 0555: readable by every user, writable by nobody."""
    for folder, subfolders, files in os.walk(directory, topdown=False):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(READ_ONLY_FILE)
        if include_top or Path(folder) != directory:
            Path(folder).chmod(READ_ONLY_DIR)


def make_writable(directory: Path) -> None:
    """Give the owner write permission back on a read-only tree (before changing or removing it)."""
    directory.chmod(stat.S_IMODE(directory.stat().st_mode) | stat.S_IRWXU)
    for folder, subfolders, files in os.walk(directory):
        for name in subfolders:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IRWXU)
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR | stat.S_IRUSR)


def publish(staged: Path, final: Path) -> None:
    """Make a finished staging tree read-only and move it into place in one rename.

    Jobs see either no model or the whole model, never a half-written one. The top directory
    stays writable until after the rename (moving a directory needs write access to it).
    """
    if final.exists() or final.is_symlink():
        raise TreeError(f"{final} already exists; `whisper-models remove {final.name}` first")
    final.parent.mkdir(parents=True, exist_ok=True)
    make_read_only(staged, include_top=False)
    os.rename(staged, final)
    final.chmod(READ_ONLY_DIR)


def inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def remove_tree(path: Path, root: Path) -> None:
    """Remove a staged tree that lies directly inside the model root: moved aside first, then deleted."""
    if path.is_symlink() or not path.is_dir():
        raise TreeError(f"{path} is not a staged model directory")
    if not inside(path, root) or path.resolve() == root.resolve():
        raise TreeError(f"{path} is not inside the model root {root}; refusing to remove it")
    graveyard = staging_dir(root, ".removing")
    target = graveyard / f"{path.name}.{os.getpid()}"
    path.chmod(stat.S_IMODE(path.stat().st_mode) | stat.S_IRWXU)
    os.rename(path, target)
    make_writable(target)
    shutil.rmtree(target)


def discard(path: Path) -> None:
    """Delete a staging leftover, read-only or not."""
    if path.is_dir() and not path.is_symlink():
        make_writable(path)
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@contextlib.contextmanager
def exclusive(root: Path, name: str) -> Iterator[None]:
    """Only one whisper-models may stage a given name at a time."""
    lock_path = staging_dir(root, ".locks") / f"{name.replace('/', '--')}.lock"
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise TreeError(f"another whisper-models is staging {name} in {root} right now; wait for it")
            raise
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
