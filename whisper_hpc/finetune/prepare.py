"""`whisper-finetune prepare`: decode every clip once, log-mel features and label tokens into RUN_DIR.

Refused clips (missing or undecodable audio, over 30 s, empty text, over 448 label tokens, a
language the model lacks) are named on one line each, `skip FILE: reason`; the rest are prepared.
The eval split is chosen by a hash of each clip's path and text, so it does not depend on order."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.files import sha256_file, write_atomically
from whisper_hpc.finetune.manifest import Columns, Row, read_manifest
from whisper_hpc.finetune.rundir import RUN_FILE, FinetuneError, RunDir
from whisper_hpc.model_store import MANIFEST, StagedModel

MAX_SECONDS = 30.0
MAX_LABEL_TOKENS = 448  # the decoder's positions
MULTILINGUAL_VOCABULARY = 51865
SAMPLE_RATE = 16000


@dataclass(frozen=True)
class PrepareOptions:
    columns: Columns = Columns()
    eval_fraction: float = 0.1
    language: str | None = None  # for a multilingual model, clips without a language column
    say: Callable[[str], None] = print


class Labeller:
    """Token ids for a clip's text: <|startoftranscript|> [<|lang|> <|transcribe|>] <|notimestamps|>
    text <|endoftext|>, with the text after a space, as Whisper itself writes it."""

    def __init__(self, base: Path) -> None:
        from whisper_hpc.staging.hf_format import import_transformers, token_ids

        transformers = import_transformers()
        self.tokenizer = transformers.WhisperTokenizer.from_pretrained(base, local_files_only=True)
        self.ids = token_ids(base / "tokenizer.json")
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        self.multilingual = config["vocab_size"] >= MULTILINGUAL_VOCABULARY

    def prefix(self, language: str | None) -> list[int]:
        start, bare = self.ids["<|startoftranscript|>"], self.ids["<|notimestamps|>"]
        if not self.multilingual:
            return [start, bare]
        if not language:
            raise ValueError("no language: the model is multilingual; add a language column or --language")
        code = language.strip().lower().replace("_", "-").split("-")[0]
        token = f"<|{code}|>"
        if token not in self.ids:
            raise ValueError(f"language {language!r} is not one the model knows")
        return [start, self.ids[token], self.ids["<|transcribe|>"], bare]

    def tokens(self, text: str, language: str | None) -> list[int]:
        body = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        return self.prefix(language) + list(body) + [self.ids["<|endoftext|>"]]


def base_record(model: StagedModel) -> dict:
    """Who the base model is: its name and checksums (model.bin's from the staged manifest)."""
    manifest_path = model.path / MANIFEST
    record: dict = {"name": model.name, "path": str(model.path)}
    if manifest_path.is_file():
        record["manifest_sha256"] = sha256_file(manifest_path)
        files = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
        weights = files.get("model.bin") or files.get("openai-whisper.pt") or {}
        record["model_sha256"] = weights.get("sha256")
    if not record.get("model_sha256"):
        weights = model.path / "model.bin" if (model.path / "model.bin").is_file() else model.openai_checkpoint
        record["model_sha256"] = sha256_file(weights) if weights else None
    return record


def eval_ids(clips: list[dict], fraction: float) -> set[int]:
    """The held-out clips: the first of them in the order of a hash of path and text."""
    if fraction <= 0 or len(clips) < 2:
        return set()
    count = min(len(clips) - 1, max(1, round(len(clips) * fraction)))
    ranked = sorted(clips, key=lambda clip: hashlib.sha256(f"{clip['audio']}\t{clip['text']}".encode()).hexdigest())
    return {clip["id"] for clip in ranked[:count]}


def prepare_clip(row: Row, labeller: Labeller, extractor, language: str | None) -> tuple[np.ndarray, list[int], float]:
    """(features, tokens, seconds) of one manifest row; ValueError with the reason to refuse it."""
    from whisper_hpc import audio

    if not row.text:
        raise ValueError("empty text")
    tokens = labeller.tokens(row.text, row.language or language)
    if len(tokens) - 1 > MAX_LABEL_TOKENS:
        raise ValueError(f"{len(tokens) - 1} label tokens, over Whisper's {MAX_LABEL_TOKENS}")
    if not row.path.is_file():
        raise ValueError("no such file")
    try:
        info = audio.probe(row.path)
        if info.duration is not None and info.duration > MAX_SECONDS + 0.05:
            raise ValueError(f"{info.duration:.1f} s, over Whisper's {MAX_SECONDS:.0f} s window")
        samples = audio.decode(row.path)
    except WhisperHpcError as error:
        raise ValueError(f"cannot decode it ({error.message.splitlines()[0]})") from None
    seconds = len(samples) / SAMPLE_RATE
    if seconds > MAX_SECONDS + 0.05:
        raise ValueError(f"{seconds:.1f} s, over Whisper's {MAX_SECONDS:.0f} s window")
    if seconds < 0.1:
        raise ValueError("no audio in it")
    features = extractor(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
    return features.astype(np.float32), tokens, seconds


def prepare(manifest: Path, model: StagedModel, output: Path, options: PrepareOptions) -> dict:
    """Prepare RUN_DIR `output` from `manifest` and the staged `model`; returns run.json."""
    from whisper_hpc.staging.exchange import export_model
    from whisper_hpc.staging.hf_format import import_transformers

    run = RunDir(output.absolute())
    if run.run_file.exists():
        raise FinetuneError(f"{output} is prepared already; train it, or choose a new --output")
    rows = read_manifest(manifest, options.columns)
    run.path.mkdir(parents=True, exist_ok=True)
    for leftover in (run.base, run.data):  # an interrupted prepare starts again
        shutil.rmtree(leftover, ignore_errors=True)
    export_model(model, "transformers", run.base, say=lambda line: None)
    labeller = Labeller(run.base)
    extractor = import_transformers().WhisperFeatureExtractor.from_pretrained(run.base, local_files_only=True)
    (run.data / "features").mkdir(parents=True)
    clips, refused = [], 0
    for row in rows:
        try:
            features, tokens, seconds = prepare_clip(row, labeller, extractor, options.language)
        except ValueError as reason:
            refused += 1
            options.say(f"skip {row.audio or f'line {row.line}'}: {reason}")
            continue
        clip_id = len(clips)
        np.save(run.features(clip_id), features)
        clips.append({"id": clip_id, "audio": row.audio, "text": row.text, "language": row.language or options.language,
                      "seconds": round(seconds, 3), "tokens": tokens})
    if not clips:
        raise FinetuneError(f"{manifest}: no usable clips ({refused} refused, reasons above); nothing to train on")
    held_out = eval_ids(clips, options.eval_fraction)
    for clip in clips:
        clip["split"] = "eval" if clip["id"] in held_out else "train"
    write_atomically(run.clips_file, json.dumps({"clips": clips}) + "\n")
    hours = sum(clip["seconds"] for clip in clips) / 3600
    meta = {
        "format": 1,
        "base": base_record(model),
        "data": {"manifest": str(manifest.absolute()), "sha256": sha256_file(manifest), "clips": len(clips),
                 "refused": refused, "train": len(clips) - len(held_out), "eval": len(held_out), "hours": round(hours, 4)},
        "multilingual": labeller.multilingual,
        "prepared_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_atomically(run.path / RUN_FILE, json.dumps(meta, indent=2) + "\n")  # last: RUN_DIR is ready
    options.say(f"{len(clips)} clips, {hours:.2f} hours usable ({refused} refused); "
                f"{meta['data']['train']} to train, {len(held_out)} held out for eval, in {output}")
    return meta
