"""A staged model's manifest.json: every file with its size and SHA-256, and where it came from."""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc import __version__
from whisper_hpc.files import BLOCK, NotARegularFile, read_regular_file, sha256_file, write_atomically
from whisper_hpc.model_store import MANIFEST



def git_blob_sha1(path: Path) -> str:
    """The git object id of a file: what the hub lists for files not stored in LFS."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_files(directory: Path) -> list[str]:
    """Every regular file below `directory` (relative, '/'-separated, sorted), the manifest excepted."""
    found = []
    for folder, subfolders, files in os.walk(directory):
        subfolders.sort()
        for name in files:
            relative = (Path(folder) / name).relative_to(directory).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def write_manifest(directory: Path, origin: str, sources: list[dict] | None = None) -> dict:
    """Hash every file and write manifest.json atomically; returns the manifest."""
    manifest = {
        "name": directory.name,
        "origin": origin,
        "sources": sources or [],
        "staged_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "staged_by": f"whisper-models {__version__}",
        "files": {
            relative: {"size": (directory / relative).stat().st_size, "sha256": sha256_file(directory / relative)}
            for relative in tree_files(directory)
        },
    }
    write_atomically(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


class ChecksumError(WhisperHpcError):
    """A manifest that is missing or unreadable."""

    exit_code = 1  # one model failed; the others are still done


def shown(text: str) -> str:
    """A file name on one printable line: control characters and undecodable bytes escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)


MANIFEST_LIMIT = 16 << 20  # bytes: a manifest lists a few dozen files; anything larger is not one


def read_manifest(directory: Path) -> dict:
    """The folder's manifest.json, read without following a symbolic link and without blocking
    on a FIFO or device put in its place."""
    path = directory / MANIFEST
    where = shown(str(path))
    try:
        manifest = json.loads(read_regular_file(path, MANIFEST_LIMIT, follow_symlinks=False).decode("utf-8"))
    except FileNotFoundError:
        raise ChecksumError(f"{where} is missing (not staged by whisper-models?)") from None
    except NotARegularFile as error:
        raise ChecksumError(f"{where} {error}; not read") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ChecksumError(f"{where} is a symbolic link (not staged by whisper-models); not followed") from None
        raise ChecksumError(f"{where} cannot be read: {error.strerror}") from None
    except ValueError as error:
        raise ChecksumError(f"{where} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ChecksumError(f"{where} lists no files")
    return manifest


@dataclass(frozen=True)
class Problem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{shown(self.path)}: {self.what}"


def expected_entry(entry: object) -> tuple[int, str] | None:
    """(size, sha256) of a well-formed manifest entry, else None."""
    if not isinstance(entry, dict):
        return None
    size, digest = entry.get("size"), entry.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(digest, str):
        return None
    return size, digest


def listed_size(manifest: dict) -> int:
    """The total size the manifest's well-formed entries give."""
    return sum(e[0] for e in map(expected_entry, manifest.get("files", {}).values()) if e)


def unsafe_entry(relative: str) -> str | None:
    """Why a manifest entry does not name a file strictly inside the model folder (None: it does)."""
    if not relative or "\0" in relative:
        return "not a file name; not read"
    if relative.startswith("/"):
        return "an absolute path, outside the model folder; not read (damaged or forged manifest)"
    parts = relative.split("/")
    if ".." in parts:
        return "leads outside the model folder (..); not read (damaged or forged manifest)"
    if "" in parts or "." in parts:
        return "not a plain relative path; not read (damaged or forged manifest)"
    return None


@dataclass
class Tree:
    """What a staged folder holds, seen with lstat only: nothing is followed, nothing is opened."""

    entries: dict[str, os.stat_result]  # every entry below the folder ('/'-separated), folders included
    unreadable: dict[str, str]  # folders that could not be listed -> why ("" is the folder itself)


def scan(directory: Path) -> Tree:
    tree = Tree({}, {})
    pending = [""]
    while pending:
        relative = pending.pop()
        try:
            with os.scandir(directory / relative if relative else directory) as listing:
                children = sorted(listing, key=lambda e: e.name)
        except OSError as error:
            tree.unreadable[relative] = error.strerror or str(error)
            continue
        for child in children:
            name = f"{relative}/{child.name}" if relative else child.name
            try:
                info = child.stat(follow_symlinks=False)
            except OSError as error:
                tree.unreadable[name] = error.strerror or str(error)
                continue
            tree.entries[name] = info
            if stat.S_ISDIR(info.st_mode):
                pending.append(name)
    return tree


def kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def permission_problem(info: os.stat_result) -> str | None:
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "writable by group or others"
    wanted = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(info.st_mode) else 0)
    if mode & wanted != wanted:
        staged = "0555" if stat.S_ISDIR(info.st_mode) else "0444"
        return f"not readable by every user (mode {mode:04o}; staged ones are {staged}): other users' jobs cannot load it"
    return None


def hash_in_place(directory: Path, relative: str, seen: os.stat_result) -> str:
    """The SHA-256 of the very file the scan saw inside the folder.

    The file is opened without following a symbolic link or blocking on a FIFO, and must be the
    same regular file (device and inode) that the scan found, so one swapped in meanwhile (or a
    folder on the way replaced by a link) is refused rather than read.
    """
    descriptor = os.open(directory / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != (seen.st_dev, seen.st_ino):
            raise ChecksumError("replaced while it was being checked")
        handle = Path(f"/proc/self/fd/{descriptor}")
        return sha256_file(handle if handle.exists() else directory / relative)
    finally:
        os.close(descriptor)


def check_tree(directory: Path, manifest: dict, *, hashes: bool = True) -> list[Problem]:
    """Compare a staged tree with its manifest: missing, resized, changed, unexpected, linked,
    special, unreadable or writable files.

    Only what lies strictly inside `directory` is ever opened: a manifest entry that is absolute,
    holds `..`, or is reached through a symbolic link is reported and never read; the tree is
    seen with lstat, links are reported and never followed, FIFOs and devices are never opened,
    and a folder or file that cannot be read is one problem, not the end of the check.
    """
    problems: list[Problem] = []
    tree = scan(directory)
    for relative, why in sorted(tree.unreadable.items()):
        if relative in tree.entries and permission_problem(tree.entries[relative]):
            continue  # its mode is reported below, once
        problems.append(Problem(relative or ".", f"cannot be read ({why}): staged folders are 0555, readable by every user"))
    listed = manifest["files"]

    def below_unreadable(relative: str) -> bool:
        return any(f == "" or relative.startswith(f + "/") or relative == f for f in tree.unreadable)

    for relative, entry in sorted(listed.items()):
        refusal = unsafe_entry(relative)
        if refusal:
            problems.append(Problem(relative, f"listed in the manifest, {refusal}"))
            continue
        expected = expected_entry(entry)
        if expected is None:
            problems.append(Problem(relative, "the manifest gives no valid size and sha256 for it (damaged manifest)"))
            continue
        parts = relative.split("/")
        link = next((p for p in ("/".join(parts[:n]) for n in range(1, len(parts)))
                     if p in tree.entries and not stat.S_ISDIR(tree.entries[p].st_mode)), None)
        if link is not None:
            problems.append(Problem(relative, f"reached through {shown(link)}, which is not a folder; not read"))
            continue
        info = tree.entries.get(relative)
        if info is None:
            if not below_unreadable(relative):
                problems.append(Problem(relative, "missing"))
            continue
        if stat.S_ISDIR(info.st_mode):
            problems.append(Problem(relative, "a folder where the manifest lists a file (replaced)"))
            continue
        if not stat.S_ISREG(info.st_mode):
            continue  # a link or a special file: reported below, never opened
        if info.st_size != expected[0]:
            problems.append(Problem(relative, f"size {info.st_size} bytes, the manifest says {expected[0]} (truncated or replaced)"))
            continue
        if not hashes:
            continue
        try:
            digest = hash_in_place(directory, relative, info)
        except ChecksumError as error:
            problems.append(Problem(relative, f"{error}; not read"))
            continue
        except OSError as error:
            if not (isinstance(error, PermissionError) and permission_problem(info)):  # else its mode says it, below
                problems.append(Problem(relative, f"cannot be read ({error.strerror or error}): "
                                                  "staged files are 0444, readable by every user"))
            continue
        if digest != expected[1]:
            problems.append(Problem(relative, "SHA-256 differs from the manifest (corrupt or modified)"))
    for relative, info in [("", os.lstat(directory)), *sorted(tree.entries.items())]:
        mode = info.st_mode
        if stat.S_ISLNK(mode):
            problems.append(Problem(relative, "a symbolic link (not staged by whisper-models); not followed"))
            continue
        if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
            problems.append(Problem(relative, f"{kind(mode)} (not staged by whisper-models); not opened"))
            continue
        if stat.S_ISREG(mode) and relative != MANIFEST and relative not in listed:
            problems.append(Problem(relative, "not in the manifest (added after staging)"))
        complaint = permission_problem(info)
        if complaint:
            problems.append(Problem(relative or ".", complaint))
    return problems
