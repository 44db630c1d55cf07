"""pyannote's SpeakerDiarization with 3.1-style agglomerative clustering and no PLDA to load.

pyannote.audio 4 loads a PLDA for every SpeakerDiarization pipeline, even when its clustering
(AgglomerativeClustering) never uses one, and without a local `plda:` entry it would fetch
community-1's from the hub. A pipeline whose embedding has no trained PLDA (ours: CAM++) names
this class in its config.yaml instead of shipping a placeholder.
"""

from __future__ import annotations

from whisper_hpc.diarization.torch_audio import import_pyannote

import_pyannote()

from pyannote.audio.core.plda import PLDA  # noqa: E402
from pyannote.audio.pipelines import SpeakerDiarization  # noqa: E402


class NoPLDA(PLDA):
    """Stands where pyannote expects a PLDA; agglomerative clustering never calls it."""

    def __init__(self) -> None:  # noqa: D107 - nothing to load
        pass


class AgglomerativeSpeakerDiarization(SpeakerDiarization):
    def __init__(self, clustering: str = "AgglomerativeClustering", **params) -> None:
        if clustering == "VBxClustering":
            raise ValueError("VBx clustering needs a PLDA: use pyannote.audio.pipelines.SpeakerDiarization with plda:")
        params.pop("plda", None)
        super().__init__(clustering=clustering, plda=NoPLDA(), **params)
