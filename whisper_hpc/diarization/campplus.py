"""CAM++ speaker embedding (3D-Speaker, Apache-2.0) as a pyannote.audio embedding model.

The network is CAM++ as published by 3D-Speaker (a 2-D convolutional front end, then densely
connected TDNN blocks with context-aware masking, statistics pooling and a 192-d embedding);
the layer names match 3D-Speaker's state dicts, so their released weights load unchanged.

`CAMPPlusEmbedding` wraps it the way pyannote's pipelines call an embedding model:
`model(waveforms (batch, 1, samples), weights=(batch, frames))` returns one embedding per
item, computed from the frames where `weights` says the speaker is active. Items with no
active frame give NaN, which pyannote's clustering skips.
"""

from __future__ import annotations

from collections import OrderedDict

from whisper_hpc.diarization.torch_audio import import_pyannote, import_torchaudio

import_pyannote()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pyannote.audio.core.model import Model  # noqa: E402
from pyannote.audio.core.task import Problem, Resolution, Specifications  # noqa: E402
from torch import nn  # noqa: E402

MIN_FRAMES = 30  # 0.3 s of 10 ms frames: the shortest stretch an embedding is computed from
FRAMES_PER_PASS = 4000  # at most 40 s of features per forward pass: the front end's activations
# (32 channels x 80 bins per frame) stay near 40 MB whatever pyannote's embedding batch size


class ResidualBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class FrontEnd(nn.Module):
    """2-D convolutions over (frequency, time); frequency is reduced 8x, time is kept."""

    def __init__(self, feat_dim: int = 80, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(ResidualBlock(channels, channels, 2), ResidualBlock(channels, channels, 1))
        self.layer2 = nn.Sequential(ResidualBlock(channels, channels, 2), ResidualBlock(channels, channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (batch, feat, time)
        x = F.relu(self.bn1(self.conv1(features.unsqueeze(1))))
        x = F.relu(self.bn2(self.conv2(self.layer2(self.layer1(x)))))
        return x.flatten(1, 2)  # (batch, channels * feat / 8, time)


def batchnorm_relu(channels: int) -> nn.Sequential:
    layers = nn.Sequential()
    layers.add_module("batchnorm", nn.BatchNorm1d(channels))
    layers.add_module("relu", nn.ReLU(inplace=True))
    return layers


class TDNN(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(channels_in, channels_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.nonlinear = batchnorm_relu(channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class ContextAwareMasking(nn.Module):
    """A TDNN layer whose output is gated by utterance-level and segment-level context."""

    SEGMENT = 100  # frames pooled for the segment-level context

    def __init__(self, channels_in: int, channels_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        padding = (kernel - 1) // 2 * dilation
        self.linear_local = nn.Conv1d(channels_in, channels_out, kernel, padding=padding, dilation=dilation, bias=False)
        self.linear1 = nn.Conv1d(channels_in, channels_in // 2, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(channels_in // 2, channels_out, 1)

    def segment_context(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool1d(x, kernel_size=self.SEGMENT, stride=self.SEGMENT, ceil_mode=True)
        return pooled.repeat_interleave(self.SEGMENT, dim=-1)[..., : x.shape[-1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = x.mean(-1, keepdim=True) + self.segment_context(x)
        gate = torch.sigmoid(self.linear2(self.relu(self.linear1(context))))
        return self.linear_local(x) * gate


class DenseLayer(nn.Module):
    def __init__(self, channels_in: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = batchnorm_relu(channels_in)
        self.linear1 = nn.Conv1d(channels_in, bottleneck, 1, bias=False)
        self.nonlinear2 = batchnorm_relu(bottleneck)
        self.cam_layer = ContextAwareMasking(bottleneck, growth, kernel, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))


class DenseBlock(nn.ModuleList):
    def __init__(self, layers: int, channels_in: int, growth: int, bottleneck: int, kernel: int, dilation: int) -> None:
        super().__init__()
        for i in range(layers):
            self.add_module(f"tdnnd{i + 1}", DenseLayer(channels_in + i * growth, growth, bottleneck, kernel, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.nonlinear = batchnorm_relu(channels_in)
        self.linear = nn.Conv1d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatisticsPooling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(-1), x.std(-1, correction=1)], dim=-1)


class Embedding(nn.Module):
    """Linear projection of the statistics, then a batch norm without scale or shift (no ReLU)."""

    def __init__(self, channels_in: int, size: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(channels_in, size, 1, bias=False)
        self.nonlinear = nn.Sequential()
        self.nonlinear.add_module("batchnorm", nn.BatchNorm1d(size, affine=False))

    def forward(self, statistics: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(statistics.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation)

    def __init__(self, feat_dim: int = 80, embedding_size: int = 192, growth: int = 32, initial: int = 128) -> None:
        super().__init__()
        self.head = FrontEnd(feat_dim)
        layers = OrderedDict(tdnn=TDNN(self.head.out_channels, initial, kernel=5, stride=2))
        channels = initial
        for index, (count, kernel, dilation) in enumerate(self.BLOCKS, start=1):
            layers[f"block{index}"] = DenseBlock(count, channels, growth, 4 * growth, kernel, dilation)
            channels += count * growth
            layers[f"transit{index}"] = Transition(channels, channels // 2)
            channels //= 2
        layers["out_nonlinear"] = batchnorm_relu(channels)
        layers["stats"] = StatisticsPooling()
        layers["dense"] = Embedding(channels * 2, embedding_size)
        self.xvector = nn.Sequential(layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (batch, time, feat)
        return self.xvector(self.head(features.transpose(1, 2)))


class CAMPPlusEmbedding(Model):
    """pyannote.audio embedding model: 80-bin kaldi fbank, mean-normalised, then CAM++."""

    def __init__(self, sample_rate: int = 16000, num_channels: int = 1, num_mel_bins: int = 80,
                 embedding_size: int = 192, task=None) -> None:
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        self.save_hyperparameters("sample_rate", "num_channels", "num_mel_bins", "embedding_size")
        self.campplus = CAMPPlus(num_mel_bins, embedding_size)
        self.specifications = Specifications(
            problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK, duration=10.0
        )

    @property
    def dimension(self) -> int:
        return self.hparams.embedding_size

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        kaldi = import_torchaudio().compliance.kaldi
        return kaldi.fbank(waveform, num_mel_bins=self.hparams.num_mel_bins, dither=0.0,
                           sample_frequency=self.hparams.sample_rate)

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, 1, samples) [+ (batch, frames) activity] -> (batch, embedding_size)."""
        embeddings = torch.full((waveforms.shape[0], self.dimension), float("nan"), device=waveforms.device)
        selected: dict[int, torch.Tensor] = {}
        for item, waveform in enumerate(waveforms):
            features = self.fbank(waveform[:1])
            if len(features) < MIN_FRAMES:
                raise ValueError(f"{len(features)} frames is too short for a speaker embedding")
            if weights is not None:
                features = active_frames(features, weights[item])
                if features is None:
                    continue
            selected[item] = features - features.mean(dim=0, keepdim=True)
        for items, batch in length_buckets(selected):
            embeddings[items] = self.campplus(batch)
        return embeddings


def length_buckets(selected: dict[int, torch.Tensor], step: int = 100):
    """Batches of similar length, each item tiled (repeated) up to its batch's length.

    One batched forward pass instead of one per item: many small operations per item are slow
    on shared CPUs. Repeating a speaker's own frames leaves the pooled statistics (mean and
    standard deviation over time) nearly unchanged, where padding with silence would not.
    """
    buckets: dict[int, list[int]] = {}
    for item, features in selected.items():
        buckets.setdefault(-(-len(features) // step) * step, []).append(item)
    for length, items in sorted(buckets.items()):
        per_pass = max(1, FRAMES_PER_PASS // length)
        for first in range(0, len(items), per_pass):
            group = items[first:first + per_pass]
            tiled = [selected[i].repeat(-(-length // len(selected[i])), 1)[:length] for i in group]
            yield group, torch.stack(tiled)


def active_frames(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
    """The feature frames where the speaker is active; None if they are not active at all.

    A stretch shorter than MIN_FRAMES is widened around its centre, so a short interjection
    still gets an embedding of its own voice and some context.
    """
    active = F.interpolate(weights.float()[None, None], size=len(features), mode="nearest")[0, 0] > 0.5
    where = torch.nonzero(active).flatten()
    if len(where) == 0:
        return None
    if len(where) >= MIN_FRAMES:
        return features[where]
    centre = int(where.float().mean())
    start = max(0, min(centre - MIN_FRAMES // 2, len(features) - MIN_FRAMES))
    return features[start:start + MIN_FRAMES]
