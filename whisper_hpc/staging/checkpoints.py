"""`whisper-models convert`: write openai-whisper checkpoints for staged CTranslate2 models."""

from __future__ import annotations

from typing import Callable

from whisper_hpc.model_store import OPENAI_CHECKPOINT, StagedModel
from whisper_hpc.staging.checksums import write_manifest
from whisper_hpc.staging.tree import TreeError, make_read_only, make_writable


def convert_staged(model: StagedModel, say: Callable[[str], None] = print) -> None:
    """Add openai-whisper.pt (converted from model.bin) to a staged model and update its manifest."""
    from whisper_hpc.convert import convert_ctranslate2_to_openai

    if model.ctranslate2_dir is None:
        raise TreeError(f"{model.path} has no CTranslate2 model to convert")
    if (model.path / OPENAI_CHECKPOINT).is_file():
        say(f"{model.name}: already has {OPENAI_CHECKPOINT}; nothing to do")
        return
    manifest = model.manifest()
    sources = [s for s in manifest.get("sources", []) if s.get("file") != OPENAI_CHECKPOINT]
    sources.append({"kind": "converted", "file": OPENAI_CHECKPOINT, "from": "model.bin", "by": "whisper_hpc.convert"})
    make_writable(model.path)
    try:
        convert_ctranslate2_to_openai(model.path, model.path / OPENAI_CHECKPOINT)
        write_manifest(model.path, manifest.get("origin", "converted"), sources)
    except ValueError as error:  # the converter's one-line account of a model.bin it cannot read
        raise TreeError(f"cannot convert {model.name}: {error}") from None
    finally:
        make_read_only(model.path)
    say(f"{model.name}: {model.path / OPENAI_CHECKPOINT} written")
