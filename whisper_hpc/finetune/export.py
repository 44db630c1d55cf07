"""`whisper-finetune export`: the trained model, LoRA merged, staged as ROOT/NAME for both engines.

The weights go out as a transformers folder (with the base's tokenizer, feature extractor and
generation config) and are staged by `whisper-models import` (exchange.import_model: CTranslate2
files, quantized, and openai-whisper.pt), whose manifest records one more source entry, kind
"finetune": the base model, the data manifest's SHA-256, steps and the final eval WER."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Callable

from whisper_hpc.finetune import checkpoint
from whisper_hpc.finetune.model import ModelSettings, build, load_weights, merged
from whisper_hpc.finetune.rundir import FinetuneError, RunDir

COPIED = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json")


def settings_of(state: dict) -> ModelSettings:
    recorded = dict(state["model"])
    recorded["lora_targets"] = tuple(recorded["lora_targets"])
    return ModelSettings(**recorded)


def provenance(run: RunDir, meta: dict, state: dict, folder: Path) -> dict:
    return {"kind": "finetune", "base_model": meta["base"], "data_manifest": meta["data"]["manifest"],
            "data_manifest_sha256": meta["data"]["sha256"], "clips": meta["data"]["train"],
            "hours": meta["data"]["hours"], "steps": state["step"], "examples_seen": state["examples_seen"],
            "method": state["model"]["method"], "final_loss": state.get("loss"), "eval_wer": state.get("eval_wer"),
            "checkpoint": str(folder), "run_dir": str(run.path)}


def write_transformers(run: RunDir, folder: Path, output: Path) -> dict:
    """The checkpoint in `folder`, merged, as a transformers folder `output`; returns its state."""
    state = checkpoint.read_state(folder)
    settings = settings_of(state)
    model = build(run.base, settings, state.get("seed", 0))
    load_weights(model, folder, settings)
    model = merged(model, settings)
    model.save_pretrained(str(output), safe_serialization=True)
    for name in COPIED:
        if (run.base / name).is_file():
            shutil.copyfile(run.base / name, output / name)
    return state


def export(run_dir: Path, name: str, root: Path, quantization: str = "int8", chosen: Path | None = None,
           overwrite: bool = False, say: Callable[[str], None] = print) -> Path:
    """Stage RUN_DIR's newest complete checkpoint (or `chosen`) as ROOT/NAME; returns its folder."""
    from whisper_hpc.staging.exchange import ImportOptions, import_model

    run = RunDir(Path(run_dir).absolute())
    meta = run.meta()
    folder = Path(chosen).absolute() if chosen else checkpoint.latest(run.path)
    if folder is None:
        raise FinetuneError(f"{run.path} has no complete checkpoint; run `whisper-finetune train {run_dir}` first")
    if not checkpoint.complete(folder):
        raise FinetuneError(f"{folder} is not a complete checkpoint (no {checkpoint.COMPLETE} marker)")
    output = run.path / "exports" / f".{name}-{secrets.token_hex(4)}"
    output.mkdir(parents=True)
    try:
        state = write_transformers(run, folder, output)
        say(f"{folder.name} ({state['model']['method']}, step {state['step']}) merged into a transformers folder")
        entry = provenance(run, meta, state, folder)
        lineage = (f"fine-tuned from {meta['base']['name']} ({entry['method']}, {entry['steps']} steps)", entry)
        staged = import_model(str(output), name, root, ImportOptions(quantization=quantization, overwrite=overwrite,
                                                                     say=say, lineage=lineage))
    finally:
        shutil.rmtree(output, ignore_errors=True)
        if output.parent.is_dir() and not any(output.parent.iterdir()):
            output.parent.rmdir()
    wer = state.get("eval_wer")
    say(f"{name}: fine-tuned from {meta['base']['name']}, {state['step']} steps"
        + (f", eval wer {wer:.3f}" if wer is not None else "") + f"; run it with --model {name}")
    return staged
