"""Transcript files, each written atomically: txt, vtt, srt, tsv, json, csv and docx (and the diarization as rttm).

Only the standard library and whisper_hpc are imported here (`--help` reads FORMATS); python-docx
is imported when a docx is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from whisper_hpc.files import write_atomically
from whisper_hpc.transcript import Transcript
from whisper_hpc.writers.common import DEFAULT, WriterOptions, timestamp
from whisper_hpc.writers.data import render_json, render_rttm
from whisper_hpc.writers.documents import render_docx
from whisper_hpc.writers.subtitles import render_srt, render_vtt
from whisper_hpc.writers.text import render_csv, render_tsv, render_txt

__all__ = [
    "FORMATS", "RENDERERS", "SPEAKER_FORMATS", "SPEAKER_RENDERERS", "Renderer", "WriterOptions", "render_csv",
    "render_docx", "render_json", "render_rttm", "render_srt", "render_tsv", "render_txt", "render_vtt", "timestamp",
    "write_atomically", "write_transcript",
]

Renderer = Callable[[Transcript, WriterOptions], str | bytes]

RENDERERS: dict[str, Renderer] = {
    "txt": render_txt,
    "vtt": render_vtt,
    "srt": render_srt,
    "tsv": render_tsv,
    "json": render_json,
    "csv": render_csv,
    "docx": render_docx,
}
# The diarization itself, not the transcript: written beside it when the run has speakers.
SPEAKER_RENDERERS: dict[str, Renderer] = {"rttm": render_rttm}
FORMATS = tuple(RENDERERS)
SPEAKER_FORMATS = tuple(SPEAKER_RENDERERS)


def write_transcript(
    transcript: Transcript, base: Path, formats: tuple[str, ...], options: WriterOptions = DEFAULT
) -> list[Path]:
    """Write `base`.<ext> for each format; json last, since it marks the file as done."""
    written = []
    for fmt in sorted(formats, key=lambda f: f == "json"):
        target = base.with_name(f"{base.name}.{fmt}")
        write_atomically(target, (RENDERERS.get(fmt) or SPEAKER_RENDERERS[fmt])(transcript, options))
        written.append(target)
    return written
