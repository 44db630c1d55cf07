"""Prepared clips as batches, in an order fixed by the seed.

The training clips form an endless stream: epoch e is a permutation of them drawn from
(seed, e). A global step takes the next batch_size x world x grad_accum clips of the stream;
micro-step k of rank r gets slice (k x world + r) of it, so ranks never share a clip and the
position in the stream (examples seen) is all a resumed run needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whisper_hpc.finetune.rundir import RunDir

IGNORE = -100  # cross-entropy's ignore_index: padding in the targets


@dataclass
class Batch:
    features: object  # torch.Tensor (batch, mels, frames), or None (a cached encoder)
    inputs: object  # torch.Tensor (batch, length): the decoder's input tokens
    targets: object  # torch.Tensor (batch, length): the next tokens, IGNORE where padded
    tokens: int  # target tokens that count


class TrainingStream:
    def __init__(self, run: RunDir, seed: int, split: str = "train") -> None:
        self.run = run
        self.clips = [clip for clip in run.clips() if clip["split"] == split]
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.clips))}
        return self._orders[epoch]

    def take(self, position: int, count: int) -> list[dict]:
        """`count` clips of the stream from `position` on."""
        chosen = []
        for index in range(position, position + count):
            epoch, offset = divmod(index, len(self.clips))
            chosen.append(self.clips[int(self.order(epoch)[offset])])
        return chosen


def micro_batches(global_batch: list[dict], batch_size: int, rank: int, world: int, accumulation: int) -> list[list[dict]]:
    """This rank's share of a global batch, one list per accumulation micro-step."""
    return [global_batch[(step * world + rank) * batch_size:(step * world + rank + 1) * batch_size]
            for step in range(accumulation)]


def target_tokens(clips: list[dict]) -> int:
    return sum(len(clip["tokens"]) - 1 for clip in clips)


def collate(run: RunDir, clips: list[dict], device: str, features: bool = True) -> Batch:
    import torch

    mels = torch.from_numpy(np.stack([np.load(run.features(clip["id"])) for clip in clips])).to(device) if features else None
    length = max(len(clip["tokens"]) - 1 for clip in clips)
    pad = clips[0]["tokens"][-1]  # <|endoftext|>: a padded input position is never a target
    inputs = torch.full((len(clips), length), pad, dtype=torch.long)
    targets = torch.full((len(clips), length), IGNORE, dtype=torch.long)
    for row, clip in enumerate(clips):
        tokens = torch.tensor(clip["tokens"], dtype=torch.long)
        inputs[row, :len(tokens) - 1] = tokens[:-1]
        targets[row, :len(tokens) - 1] = tokens[1:]
    return Batch(mels, inputs.to(device), targets.to(device), target_tokens(clips))
