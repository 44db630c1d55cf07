"""Files for programs: the json (openai-whisper's, with our metadata) and the diarization as rttm."""

from __future__ import annotations

import json
from pathlib import Path

from whisper_hpc.transcript import Transcript
from whisper_hpc.writers.common import DEFAULT, WriterOptions


def render_json(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    """One line, as openai-whisper writes it, or indented by 2 with `pretty_json`."""
    return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2 if options.pretty_json else None) + "\n"


def render_rttm(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    from whisper_hpc.diarization.rttm import render_rttm as rttm_lines

    stem = Path(transcript.source).stem + (f".{transcript.channel}" if transcript.channel else "")
    return rttm_lines(transcript.speaker_turns or [], stem)
