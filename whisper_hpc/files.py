"""Writing and hashing files: one atomic writer, one SHA-256."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Callable, IO

BLOCK = 1 << 22


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: Path, content: str | bytes | Callable[[IO[bytes]], object], mode: int | None = None) -> Path:
    """Write `content` to a temporary file beside `path`, then rename it over `path`.

    Readers see the old file or the whole new one, never half of it; a failure (a full disk,
    a signal) removes the temporary file and leaves `path` as it was. `content` is text
    (UTF-8), bytes, or a function that writes into the open binary stream (torch.save). The
    file gets `mode`, else 0666 less the umask, as an ordinary new file would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(content):
                content(stream)
            else:
                stream.write(content.encode("utf-8") if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, (0o666 & ~current_umask()) if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def link_atomically(target: Path, path: Path) -> Path:
    """Make `path` a symbolic link to `target`, replacing what was there in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
    temporary.symlink_to(target)  # fails rather than follows if the name exists
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


class NotARegularFile(ValueError):
    """A FIFO, device, socket or folder where a file was expected, or a file over the size limit."""


def read_regular_file(path: Path, limit: int | None = None, follow_symlinks: bool = True) -> bytes:
    """The bytes of `path`, if it is a regular file of at most `limit` bytes.

    It is opened without blocking (a FIFO in its place cannot hang the reader) and checked by
    fstat before a byte is read; without `follow_symlinks` a symbolic link fails with ELOOP.
    Raises OSError from the open, NotARegularFile for anything else than such a file."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    descriptor = os.open(path, flags)
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile("is not a regular file")
        if limit is not None and info.st_size > limit:
            raise NotARegularFile(f"is {info.st_size} bytes, too large for a file of its kind")
        return stream.read() if limit is None else stream.read(limit + 1)[:limit]


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
