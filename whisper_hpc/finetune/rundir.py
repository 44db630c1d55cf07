"""A run directory: its layout, run.json, and the lock one trainer holds on it.

    RUN_DIR/run.json        base model, data manifest checksum, clip counts, labels' prefix
    RUN_DIR/base/           the base model as a transformers folder (weights, tokenizer, features)
    RUN_DIR/data/clips.json every usable clip: text, tokens, seconds, split (train or eval)
    RUN_DIR/data/features/  one log-mel array (.npy, float32, mels x 3000) per clip
    RUN_DIR/checkpoints/    step-XXXXXX/ folders, the newest two complete ones kept
    RUN_DIR/train.lock      held (flock) by the trainer while it runs
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from whisper_hpc.errors import WhisperHpcError

RUN_FILE = "run.json"
LOCK_FILE = "train.lock"


class FinetuneError(WhisperHpcError):
    """A fine-tuning step that cannot go on; the message says what to do."""

    exit_code = 1


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def base(self) -> Path:
        return self.path / "base"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def clips_file(self) -> Path:
        return self.data / "clips.json"

    def features(self, clip_id: int) -> Path:
        return self.data / "features" / f"{clip_id:07d}.npy"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def meta(self) -> dict:
        """run.json, or a one-line error when RUN_DIR was not prepared."""
        try:
            return json.loads(self.run_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FinetuneError(f"{self.path} is not a prepared run directory (no {RUN_FILE}); "
                                "run `whisper-finetune prepare MANIFEST --model NAME --output RUN_DIR` first") from None
        except (OSError, ValueError) as error:
            raise FinetuneError(f"{self.run_file} cannot be read ({error})") from None

    def clips(self) -> list[dict]:
        return json.loads(self.clips_file.read_text(encoding="utf-8"))["clips"]


def same_base(a: dict, b: dict) -> bool:
    """Two base-model records name the same weights (by checksum, else by name)."""
    if a.get("model_sha256") and b.get("model_sha256"):
        return a["model_sha256"] == b["model_sha256"]
    return a.get("name") == b.get("name")


@contextmanager
def exclusive(run: RunDir) -> Iterator[None]:
    """Hold RUN_DIR/train.lock for the duration; a second trainer is refused at once."""
    path = run.path / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise FinetuneError(f"{run.path} is being trained by another job ({holder}); "
                                "wait for it or use another RUN_DIR") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)
