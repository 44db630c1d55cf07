"""Transcript files: txt, vtt, srt, tsv and json (and the diarization as rttm), each written atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from whisper_hpc.files import write_atomically
from whisper_hpc.transcript import Segment, Transcript

FORMATS = ("txt", "vtt", "srt", "tsv", "json")
SPEAKER_FORMATS = ("rttm",)  # written only when the run diarizes


def timestamp(seconds: float, decimal: str = ".", always_hours: bool = True) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    hours_part = f"{hours:02d}:" if always_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal}{milliseconds:03d}"


def labelled(segment: Segment) -> str:
    text = segment.text.strip()
    return f"[{segment.speaker}] {text}" if segment.speaker else text


def one_line(text: str) -> str:
    """Any line break (\\n, \\r, U+2028) would end a cue or a tsv row early."""
    return " ".join(text.split())


def cue_text(segment: Segment) -> str:
    # An arrow inside a cue's text would read as a new cue timing line.
    return re.sub(r"-{2,}>", "->", one_line(labelled(segment)))


def render_txt(transcript: Transcript) -> str:
    return "".join(labelled(s) + "\n" for s in transcript.segments)


def render_srt(transcript: Transcript) -> str:
    cues = [
        f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{cue_text(s)}\n"
        for i, s in enumerate(transcript.segments, start=1)
    ]
    return "\n".join(cues)


def render_vtt(transcript: Transcript) -> str:
    cues = [f"{timestamp(s.start)} --> {timestamp(s.end)}\n{cue_text(s)}\n" for s in transcript.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def render_tsv(transcript: Transcript) -> str:
    """openai-whisper's tsv: integer milliseconds, so it survives spreadsheets."""
    speaker = any(s.speaker for s in transcript.segments)
    header = "start\tend\tspeaker\ttext\n" if speaker else "start\tend\ttext\n"
    rows = []
    for s in transcript.segments:
        text = one_line(s.text)
        cells = [str(round(s.start * 1000)), str(round(s.end * 1000))] + ([s.speaker or ""] if speaker else []) + [text]
        rows.append("\t".join(cells) + "\n")
    return header + "".join(rows)


def render_json(transcript: Transcript) -> str:
    return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=2) + "\n"


def render_rttm(transcript: Transcript) -> str:
    from whisper_hpc.diarization.rttm import render_rttm as rttm_lines

    stem = Path(transcript.source).stem + (f".{transcript.channel}" if transcript.channel else "")
    return rttm_lines(transcript.speaker_turns or [], stem)


RENDERERS: dict[str, Callable[[Transcript], str]] = {
    "txt": render_txt,
    "vtt": render_vtt,
    "srt": render_srt,
    "tsv": render_tsv,
    "json": render_json,
}
# The diarization itself, not the transcript: written beside it when the run has speakers.
SPEAKER_RENDERERS: dict[str, Callable[[Transcript], str]] = {"rttm": render_rttm}


def write_transcript(transcript: Transcript, base: Path, formats: tuple[str, ...]) -> list[Path]:
    """Write `base`.<ext> for each format; json last, since it marks the file as done."""
    written = []
    for fmt in sorted(formats, key=lambda f: f == "json"):
        target = base.with_name(base.name + "." + fmt)
        write_atomically(target, (RENDERERS.get(fmt) or SPEAKER_RENDERERS[fmt])(transcript))
        written.append(target)
    return written
