"""Encoder outputs of a frozen encoder, computed once per clip and kept in memory.

With LoRA on the decoder only, or full training with --freeze_encoder, the encoder is a fixed
function of each clip's features: running it every epoch is most of a CPU step's time. Each
clip goes through the encoder alone (batch of one), so its output does not depend on which
clips share its batch: 1 rank and N ranks, or a resumed run, see the same numbers."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from whisper_hpc.finetune.rundir import RunDir

DEFAULT_BUDGET_MB = 2048


class EncoderCache:
    def __init__(self, run: RunDir, encoder, device: str, budget_mb: int = DEFAULT_BUDGET_MB) -> None:
        self.run, self.encoder, self.device = run, encoder, device
        self.budget = budget_mb << 20
        self.used = 0
        self.states: OrderedDict[int, object] = OrderedDict()

    def one(self, clip_id: int):
        import torch

        if clip_id in self.states:
            self.states.move_to_end(clip_id)
            return self.states[clip_id]
        features = torch.from_numpy(np.load(self.run.features(clip_id)))[None].to(self.device)
        with torch.no_grad():
            state = self.encoder(features).last_hidden_state[0].float()
        size = state.numel() * state.element_size()
        while self.states and self.used + size > self.budget:
            _, dropped = self.states.popitem(last=False)
            self.used -= dropped.numel() * dropped.element_size()
        if size <= self.budget:
            self.states[clip_id] = state
            self.used += size
        return state

    def batch(self, clips: list[dict]):
        import torch

        return torch.stack([self.one(clip["id"]) for clip in clips])
