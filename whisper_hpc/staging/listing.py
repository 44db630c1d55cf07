"""`whisper-models list`: the catalogue, what is staged, what is half-fetched, and sizes on disk.

`list --json` is the machine-readable form; the modulefiles' model variables and the Open
OnDemand model list come from the same source (model_store.list_staged), so they always agree.
"""

from __future__ import annotations

import json
from pathlib import Path

from whisper_hpc.model_store import StagedModel, list_staged, variable_name
from whisper_hpc.staging.catalogue import Catalogue
from whisper_hpc.staging.tree import DIARIZATION, SOURCES, STAGING, tree_size


def engines(model: StagedModel) -> list[str]:
    return [e for e, ok in (("faster-whisper", model.ctranslate2_dir), ("openai-whisper", model.openai_checkpoint)) if ok]


def formats(model: StagedModel) -> list[str]:
    """The model's files by format: CTranslate2 (faster-whisper), openai-whisper checkpoint."""
    return [f for f, ok in (("ctranslate2", model.ctranslate2_dir), ("openai-whisper", model.openai_checkpoint)) if ok]


def quantization(model: StagedModel) -> str | None:
    """How the CTranslate2 weights are stored (int8, float16, float32), read from model.bin itself."""
    from whisper_hpc.convert import weight_storage

    if model.ctranslate2_dir is None:
        return None
    try:
        return weight_storage(model.path / "model.bin")
    except (OSError, ValueError):
        return "unreadable"


def staged_pipelines(root: Path) -> list[Path]:
    folder = root / DIARIZATION
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "config.yaml").is_file())


def partial(root: Path, relative: str) -> int | None:
    """Bytes already downloaded by an interrupted fetch, or None."""
    folder = root / STAGING / relative
    size = tree_size(folder) if folder.is_dir() else 0
    return size or None


def inventory(root: Path, catalogue: Catalogue | None) -> dict:
    staged = list_staged(root)
    by_name = {m.name: m for m in staged}
    models = [
        {
            "name": m.name,
            "variable": variable_name(m.name),
            "path": str(m.path),
            "size": tree_size(m.path),
            "engines": engines(m),
            "format": formats(m),
            "quantization": quantization(m),
            "english_only": m.english_only,
            "in_catalogue": bool(catalogue and catalogue.whisper_entry(m.name)),
            "origin": m.manifest().get("origin", ""),
        }
        for m in staged
    ]
    pipelines = [{"name": p.name, "path": str(p), "size": tree_size(p)} for p in staged_pipelines(root)]
    available = []
    for entry in (catalogue.whisper if catalogue else ()):
        if entry.name not in by_name:
            available.append({"name": entry.name, "kind": "whisper", "aliases": list(entry.aliases),
                              "pinned": entry.pinned, "partial_bytes": partial(root, entry.name)})
    staged_pipeline_names = {p["name"] for p in pipelines}
    for entry in (catalogue.diarization if catalogue else ()):
        if entry.name not in staged_pipeline_names:
            available.append({"name": entry.name, "kind": "diarization", "gated": entry.gated,
                              "pinned": entry.pinned, "partial_bytes": partial(root, f"{DIARIZATION}/{entry.name}")})
    return {"root": str(root), "models": models, "pipelines": pipelines, "available": available,
            "interrupted_imports": interrupted_imports(root)}


def interrupted_imports(root: Path) -> list[dict]:
    """What failed or killed imports left in ROOT/.staging/.sources: a hub download kept for the
    next import to resume, or (after a kill) its half-made folders; `remove NAME` discards them."""
    folder = root / STAGING / SOURCES
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    return [{"name": p.name, "path": str(p), "size": tree_size(p)} for p in entries]


def human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def print_inventory(root: Path, catalogue: Catalogue | None, as_json: bool = False) -> None:
    data = inventory(root, catalogue)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(f"model root: {root}")
    print("staged Whisper models:")
    for m in data["models"]:
        note = "" if m["in_catalogue"] else "  (not from the catalogue)"
        stored = f"CTranslate2 {m['quantization']}" if m["quantization"] else "no CTranslate2"
        print(f"  {m['name']:<16} {human(m['size']):>9}  {stored:<20} {', '.join(m['engines'])}{note}")
    if not data["models"]:
        print("  none")
    print("staged diarization pipelines:")
    for p in data["pipelines"]:
        print(f"  {p['name']:<16} {human(p['size']):>9}  {p['path']}")
    if not data["pipelines"]:
        print("  none")
    if data["interrupted_imports"]:
        print("left by interrupted imports (the same import resumes; `whisper-models remove NAME` discards):")
        for leftover in data["interrupted_imports"]:
            print(f"  {leftover['name']:<16} {human(leftover['size']):>9}  {leftover['path']}")
    if data["available"]:
        print("in the catalogue, not staged (`whisper-models fetch NAME`):")
        for a in data["available"]:
            notes = []
            if a.get("aliases"):
                notes.append("also called " + ", ".join(a["aliases"]))
            if a.get("gated"):
                notes.append("gated: needs a hub token")
            if a["partial_bytes"] is not None:
                notes.append(f"interrupted at {human(a['partial_bytes'])}: fetch resumes")
            print(f"  {a['name']:<16} {'; '.join(notes)}".rstrip())
