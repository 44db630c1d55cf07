"""Speaker diarization: who spoke when, merged into the transcript.

Light to import: pyannote.audio and torch are imported only by `pipeline` and `campplus`,
when a run actually diarizes. Merging a ready-made RTTM (`rttm`, `merge`) needs neither.
"""

from __future__ import annotations

import importlib.util

from whisper_hpc.errors import WhisperHpcError

MODULE_HINT = "module load whisper-diarization"


class DiarizationError(WhisperHpcError):
    """A diarization set-up problem; the message says what is missing and what to do."""


def pyannote_installed() -> bool:
    """pyannote.audio is importable (the whisper-diarization image), without importing it."""
    try:
        return importlib.util.find_spec("pyannote.audio") is not None
    except ModuleNotFoundError:
        return False


def require_pyannote() -> None:
    if not pyannote_installed():
        raise DiarizationError(
            f"--diarize needs pyannote.audio, which this installation does not have; "
            f"`{MODULE_HINT}` (or use the whisper-diarization image), or merge a ready-made "
            "diarization with --diarization_rttm FILE"
        )
