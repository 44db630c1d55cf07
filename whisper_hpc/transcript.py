"""The engine-neutral result: what every engine returns and every writer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None


@dataclass(frozen=True)
class SpeakerTurn:
    """One stretch of one speaker's speech, in seconds from the start of the file."""

    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Segment:
    start: float
    end: float
    text: str
    words: list[Word] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    temperature: float | None = None
    speaker: str | None = None

    def shifted(self, offset: float) -> "Segment":
        """The same segment on the file's time line, for audio decoded in windows."""
        if not offset:
            return self
        words = [Word(w.start + offset, w.end + offset, w.word, w.probability, w.speaker) for w in self.words or []]
        return Segment(
            self.start + offset, self.end + offset, self.text, words if self.words is not None else None,
            self.avg_logprob, self.no_speech_prob, self.compression_ratio, self.temperature, self.speaker,
        )


@dataclass
class Transcript:
    source: str
    language: str | None
    language_probability: float | None
    duration: float
    segments: list[Segment] = field(default_factory=list)
    model: str = ""
    engine: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    device: str = ""
    compute_type: str = ""
    channel: str | None = None
    wall_time: float = 0.0
    options: dict = field(default_factory=dict)
    speaker_turns: list[SpeakerTurn] | None = None  # the diarization, when the run diarized
    diarization: dict | None = None  # where the speaker turns came from

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def real_time_factor(self) -> float:
        return self.wall_time / self.duration if self.duration else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["text"] = self.text
        data["real_time_factor"] = round(self.real_time_factor, 4)
        if not self.options.get("word_timestamps"):
            for segment in data["segments"]:
                segment.pop("words", None)
        if self.speaker_turns is None:
            data.pop("speaker_turns")
            data.pop("diarization")
        else:
            data["speakers"] = self.speakers
        return data

    @property
    def speakers(self) -> list[str]:
        """Speaker labels as first heard in the transcript, then any who say no transcribed word."""
        heard = [s.speaker for s in self.segments if s.speaker]
        turns = sorted(self.speaker_turns or [], key=lambda t: (t.start, t.end))
        return list(dict.fromkeys(heard + [t.speaker for t in turns]))
