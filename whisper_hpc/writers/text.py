"""Plain text and tables: txt, tsv and csv."""

from __future__ import annotations

import csv
import io

from whisper_hpc.transcript import Transcript
from whisper_hpc.writers.common import DEFAULT, WriterOptions, has_speakers, labelled, one_line, paragraphs


def render_txt(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    """One line per segment; with speakers, one paragraph per speaker turn under its times and name."""
    if not has_speakers(transcript):
        return "".join(labelled(s) + "\n" for s in transcript.segments)
    return "\n".join(f"{p.heading}\n{p.text}\n" for p in paragraphs(transcript))


def render_tsv(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    """openai-whisper's tsv: integer milliseconds, so it survives spreadsheets."""
    speaker = has_speakers(transcript)
    header = "start\tend\tspeaker\ttext\n" if speaker else "start\tend\ttext\n"
    rows = []
    for s in transcript.segments:
        cells = [str(round(s.start * 1000)), str(round(s.end * 1000))] + ([s.speaker or ""] if speaker else [])
        rows.append("\t".join(cells + [one_line(s.text)]) + "\n")
    return header + "".join(rows)


def render_csv(transcript: Transcript, options: WriterOptions = DEFAULT) -> str:
    """start,end,speaker,text: seconds to the millisecond, one row per segment."""
    stream = io.StringIO()
    table = csv.writer(stream, lineterminator="\n")
    table.writerow(["start", "end", "speaker", "text"])
    for s in transcript.segments:
        table.writerow([f"{s.start:.3f}", f"{s.end:.3f}", s.speaker or "", one_line(s.text)])
    return stream.getvalue()
