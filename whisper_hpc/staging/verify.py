"""`whisper-models verify [NAME...]`: re-check every staged file against its manifest.

A model root on a shared machine may have been changed by an accident or an attacker, so every
model is checked on its own: each problem is one line naming the model and the file, a model
that cannot be read is one line too, and the other models are still verified. Nothing outside
a model's folder is ever opened (see checksums.check_tree): not a manifest entry that points
elsewhere, not the target of a symbolic link, not a FIFO.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from whisper_hpc.model_store import CTRANSLATE2_FILES, MANIFEST, OPENAI_CHECKPOINT
from whisper_hpc.staging.listing import human
from whisper_hpc.staging.checksums import ChecksumError, check_tree, listed_size, read_manifest, shown
from whisper_hpc.staging.tree import DIARIZATION

PIPELINE_CONFIG = "config.yaml"


def plain_name(name: str) -> bool:
    """A single folder name: nothing that could lead out of the model root."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def staged_path(root: Path, name: str) -> Path | None:
    """ROOT/<name> for a Whisper model, ROOT/diarization/<name> for a pipeline (never a link)."""
    if not plain_name(name) or name == DIARIZATION:
        return None
    for candidate in (root / name, root / DIARIZATION / name):
        try:
            if stat.S_ISDIR(os.lstat(candidate).st_mode):
                return candidate
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class Target:
    """A folder to verify, or (refusal set) why it cannot be."""

    name: str
    path: Path
    refusal: str | None = None


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def link_refusal(path: Path) -> str:
    try:
        target = f" to {shown(os.readlink(path))}"
    except OSError:
        target = ""
    return f"{shown(str(path))} is a symbolic link{target}, not a staged folder (not followed): remove the link and stage the model"


def looks_staged(path: Path, markers: tuple[str, ...]) -> bool | str:
    """True when the folder holds a manifest or one of `markers`; the reason when it cannot be read."""
    try:
        names = set(os.listdir(path))
    except OSError as error:
        return error.strerror or str(error)
    return MANIFEST in names or any(m in names for m in markers)


def candidates(folder: Path, markers: tuple[str, ...], skip: tuple[str, ...] = ()) -> tuple[list[Target], str | None]:
    """The staged folders directly inside `folder` (dot-folders are not models), and why the
    folder itself cannot be listed, if it cannot."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return [], None
    except OSError as error:
        return [], error.strerror or str(error)
    found = []
    for name in names:
        if name.startswith(".") or name in skip:
            continue
        path = folder / name
        info = lstat_or_none(path)
        if info is None:
            continue
        label = shown(name)
        if stat.S_ISLNK(info.st_mode):
            if os.path.isdir(path):  # list_staged (and so every job) would follow it
                found.append(Target(label, path, link_refusal(path)))
            continue
        if not stat.S_ISDIR(info.st_mode):
            continue
        staged = looks_staged(path, markers)
        if isinstance(staged, str):
            found.append(Target(label, path, f"{shown(str(path))} cannot be read ({staged}): staged folders are 0555, "
                                             "readable by every user"))
        elif staged:
            found.append(Target(label, path))
    return found, None


def everything(root: Path, warn: Callable[[str], None]) -> tuple[list[Target], bool]:
    """Every staged model and pipeline; (targets, whether a folder could not be listed)."""
    models, why = candidates(root, (*CTRANSLATE2_FILES, OPENAI_CHECKPOINT), skip=(DIARIZATION,))
    if why:
        warn(f"{root}: cannot be read ({why}); run verify as a user who can read the model root")
        return [], True
    failed = False
    pipelines: list[Target] = []
    info = lstat_or_none(root / DIARIZATION)
    if info is not None and stat.S_ISLNK(info.st_mode):
        warn(f"{DIARIZATION}: {root / DIARIZATION} is a symbolic link (not staged by whisper-models); not followed")
        failed = True
    elif info is not None and stat.S_ISDIR(info.st_mode):
        pipelines, why = candidates(root / DIARIZATION, (PIPELINE_CONFIG,))
        if why:
            warn(f"{DIARIZATION}: {root / DIARIZATION} cannot be read ({why}): it must be readable by every user")
            failed = True
    return models + pipelines, failed


def named(root: Path, name: str) -> Target:
    label = shown(name)
    path = staged_path(root, name)
    if path is not None:
        return Target(label, path)
    for candidate in (root / name, root / DIARIZATION / name) if plain_name(name) else ():
        info = lstat_or_none(candidate)
        if info is not None and stat.S_ISLNK(info.st_mode):
            return Target(label, candidate, link_refusal(candidate))
    return Target(label, root / name, f"not staged in {shown(str(root))}")


def verify(root: Path, names: list[str], *, hashes: bool = True, say: Callable[[str], None] = print,
           warn: Callable[[str], None] = print) -> int:
    """0 when every named (default: every staged) model matches its manifest, else 1."""
    failed = False
    if names:
        targets = [named(root, name) for name in names]
    else:
        targets, failed = everything(root, warn)
        if not targets and not failed:
            say(f"nothing is staged in {root}")
    for target in targets:
        if not verify_one(target, hashes, say, warn):
            failed = True
    return 1 if failed else 0


def verify_one(target: Target, hashes: bool, say: Callable[[str], None], warn: Callable[[str], None]) -> bool:
    """Check one model; its problems are printed one a line, each naming the model and the file."""
    name, path = target.name, target.path
    if target.refusal:
        warn(f"{name}: {target.refusal}")
        return False
    try:
        manifest = read_manifest(path)
        problems = check_tree(path, manifest, hashes=hashes)
    except ChecksumError as error:
        warn(f"{name}: {error}")
        return False
    except OSError as error:  # the folder vanished or changed under us
        warn(f"{name}: {shown(str(path))} cannot be checked: {error.strerror or error}")
        return False
    if problems:
        for problem in problems:
            warn(f"{name}: {problem}")
        warn(f"{name}: {len(problems)} problem(s) in {shown(str(path))}; `whisper-models remove {name}` then "
             f"`whisper-models fetch {name}` stages it again")
        return False
    checked = "sizes and SHA-256" if hashes else "sizes"
    say(f"{name}: ok ({len(manifest['files'])} files, {human(listed_size(manifest))}, {checked} match the manifest)")
    return True
