"""A staged model's manifest.json: every file with its size and SHA-256, and where it came from."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc import __version__
from whisper_hpc.files import BLOCK, sha256_file, write_atomically
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


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ChecksumError(f"{path} is missing (not staged by whisper-models?)")
    except (OSError, ValueError) as error:
        raise ChecksumError(f"{path} cannot be read: {error}")
    if not isinstance(manifest.get("files"), dict):
        raise ChecksumError(f"{path} lists no files")
    return manifest


@dataclass(frozen=True)
class Problem:
    path: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what}"


def check_tree(directory: Path, manifest: dict, *, hashes: bool = True) -> list[Problem]:
    """Compare a staged tree with its manifest: missing, resized, changed, unexpected or writable files."""
    problems = []
    for relative, expected in sorted(manifest["files"].items()):
        path = directory / relative
        if not path.is_file():
            problems.append(Problem(relative, "missing"))
            continue
        size = path.stat().st_size
        if size != expected.get("size"):
            problems.append(Problem(relative, f"size {size} bytes, the manifest says {expected.get('size')} (truncated or replaced)"))
        elif hashes and sha256_file(path) != expected.get("sha256"):
            problems.append(Problem(relative, "SHA-256 differs from the manifest (corrupt or modified)"))
    for relative in tree_files(directory):
        if relative not in manifest["files"]:
            problems.append(Problem(relative, "not in the manifest (added after staging)"))
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            problems.append(Problem(path.relative_to(directory).as_posix(), "a symbolic link (not staged by whisper-models)"))
        elif path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(Problem(path.relative_to(directory).as_posix() or ".", "writable by group or others"))
    return problems
