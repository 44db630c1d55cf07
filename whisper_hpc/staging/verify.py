"""`whisper-models verify [NAME...]`: re-check every staged file against its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from whisper_hpc.model_store import list_staged
from whisper_hpc.staging.listing import human, staged_pipelines
from whisper_hpc.staging.checksums import ChecksumError, check_tree, read_manifest
from whisper_hpc.staging.tree import DIARIZATION


def staged_path(root: Path, name: str) -> Path | None:
    """ROOT/<name> for a Whisper model, ROOT/diarization/<name> for a pipeline."""
    for candidate in (root / name, root / DIARIZATION / name):
        if name != DIARIZATION and candidate.is_dir() and not candidate.is_symlink():
            return candidate
    return None


def verify(root: Path, names: list[str], *, hashes: bool = True, say: Callable[[str], None] = print,
           warn: Callable[[str], None] = print) -> int:
    """0 when every named (default: every staged) model matches its manifest, else 1."""
    if names:
        targets = []
        for name in names:
            path = staged_path(root, name)
            if path is None:
                warn(f"{name}: not staged in {root}")
                targets.append(None)
            else:
                targets.append(path)
    else:
        targets = [m.path for m in list_staged(root)] + staged_pipelines(root)
        if not targets:
            say(f"nothing is staged in {root}")
    failed = any(t is None for t in targets)
    for path in filter(None, targets):
        try:
            manifest = read_manifest(path)
        except ChecksumError as error:
            warn(f"{path.name}: {error}")
            failed = True
            continue
        problems = check_tree(path, manifest, hashes=hashes)
        size = sum(f.get("size", 0) for f in manifest["files"].values())
        if problems:
            failed = True
            warn(f"{path.name}: {len(problems)} problem(s) in {path}")
            for problem in problems:
                warn(f"  {problem}")
            warn(f"  `whisper-models remove {path.name}` then `whisper-models fetch {path.name}` stages it again")
        else:
            checked = "sizes and SHA-256" if hashes else "sizes"
            say(f"{path.name}: ok ({len(manifest['files'])} files, {human(size)}, {checked} match the manifest)")
    return 1 if failed else 0
