"""What every writer shares: the layout options, time stamps, one-line text and speaker paragraphs."""

from __future__ import annotations

from dataclasses import dataclass

from whisper_hpc.transcript import Segment, Transcript


@dataclass(frozen=True)
class WriterOptions:
    """How the files are laid out; the subtitle limits apply only to segments with word timings."""

    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None
    highlight_words: bool = False
    pretty_json: bool = False


DEFAULT = WriterOptions()


@dataclass(frozen=True)
class Paragraph:
    """Consecutive segments of one speaker (or one segment, when nobody is labelled)."""

    start: float
    end: float
    speaker: str | None
    text: str

    @property
    def heading(self) -> str:
        times = f"({clock(self.start)} - {clock(self.end)})"
        return f"{times} {self.speaker}" if self.speaker else times


def timestamp(seconds: float, decimal: str = ".", always_hours: bool = True) -> str:
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    hours_part = f"{hours:02d}:" if always_hours or hours else ""
    return f"{hours_part}{minutes:02d}:{secs:02d}{decimal}{milliseconds:03d}"


def clock(seconds: float) -> str:
    """hh:mm:ss, the milliseconds dropped."""
    return timestamp(seconds).rsplit(".", 1)[0]


def one_line(text: str) -> str:
    """Any line break (\\n, \\r, U+2028) would end a cue or a tsv row early."""
    return " ".join(text.split())


def labelled(segment: Segment) -> str:
    text = segment.text.strip()
    return f"[{segment.speaker}] {text}" if segment.speaker else text


def has_speakers(transcript: Transcript) -> bool:
    return any(s.speaker for s in transcript.segments)


def paragraphs(transcript: Transcript) -> list[Paragraph]:
    """Speaker turns when any segment has a speaker, else one paragraph per segment; empty ones left out."""
    runs: list[list[Segment]] = []
    together = has_speakers(transcript)
    for segment in transcript.segments:
        if together and runs and runs[-1][-1].speaker == segment.speaker:
            runs[-1].append(segment)
        else:
            runs.append([segment])
    found = [Paragraph(r[0].start, r[-1].end, r[0].speaker, one_line("".join(s.text for s in r))) for r in runs]
    return [p for p in found if p.text]
