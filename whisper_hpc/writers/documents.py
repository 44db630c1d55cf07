"""A Word document (docx) through python-docx, imported only when one is written."""

from __future__ import annotations

import io
import re
from pathlib import Path

from whisper_hpc.transcript import Transcript
from whisper_hpc.writers.common import DEFAULT, WriterOptions, clock, paragraphs

# Characters XML 1.0 cannot hold: lxml refuses them.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    return NOT_XML.sub("", text)


def render_docx(transcript: Transcript, options: WriterOptions = DEFAULT) -> bytes:
    """The file name as heading, then date, model, duration and language, then one paragraph per speaker turn."""
    import docx

    document = docx.Document()
    name = xml_text(Path(transcript.source).name + (f" ({transcript.channel})" if transcript.channel else ""))
    document.core_properties.title = name
    document.add_heading(name, level=1)
    details = {"Date": transcript.created, "Model": transcript.model, "Duration": clock(transcript.duration),
               "Language": transcript.language or ""}
    for key, value in details.items():
        if value:
            document.add_paragraph(f"{key}: {xml_text(value)}")
    for paragraph in paragraphs(transcript):
        shown = document.add_paragraph()
        heading = shown.add_run(xml_text(paragraph.heading))
        heading.bold = True
        heading.add_break()
        shown.add_run(xml_text(paragraph.text))
    stream = io.BytesIO()
    document.save(stream)
    return stream.getvalue()
