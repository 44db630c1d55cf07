"""The engine-neutral result: what every engine returns and every writer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

FRAMES_PER_SECOND = 100  # Whisper's mel frames
# openai-whisper's segment keys, in its order; ours follow them.
OPENAI_SEGMENT_KEYS = (
    "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
    "no_speech_prob",
)


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
    text: str  # as the engine decoded it, leading space included (openai-whisper's convention)
    words: list[Word] | None = None
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    compression_ratio: float | None = None
    temperature: float | None = None
    speaker: str | None = None
    tokens: list[int] = field(default_factory=list)
    seek: int = 0  # where the engine's 30 s window began, in mel frames (100 per second)
    id: int = 0  # the segment's place in the file's transcript

    def shifted(self, offset: float) -> "Segment":
        """The same segment on the file's time line, for audio decoded in windows."""
        if not offset:
            return self
        words = [Word(w.start + offset, w.end + offset, w.word, w.probability, w.speaker) for w in self.words or []]
        return replace(
            self, start=self.start + offset, end=self.end + offset, words=words if self.words is not None else None,
            seek=self.seek + round(offset * FRAMES_PER_SECOND),
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
    created: str = ""  # when it was transcribed, ISO 8601 in UTC
    cache: dict | None = None  # where the result cache stands on it (whisper_hpc.result_cache)

    @property
    def text(self) -> str:
        """The segments' texts joined as decoded, as openai-whisper's `text` is."""
        return "".join(s.text for s in self.segments)

    @property
    def real_time_factor(self) -> float:
        return self.wall_time / self.duration if self.duration else 0.0

    def to_dict(self) -> dict:
        """openai-whisper's json (text, segments, language) first, then ours alongside."""
        data = asdict(self)
        data["segments"] = [segment_dict(s, bool(self.options.get("word_timestamps"))) for s in data["segments"]]
        data["real_time_factor"] = round(self.real_time_factor, 4)
        if self.speaker_turns is None:
            data.pop("speaker_turns")
            data.pop("diarization")
        else:
            data["speakers"] = self.speakers
        if self.cache is None:
            data.pop("cache")
        first = {"text": self.text, "segments": data.pop("segments"), "language": data.pop("language")}
        return first | data

    @property
    def speakers(self) -> list[str]:
        """Speaker labels as first heard in the transcript, then any who say no transcribed word."""
        heard = [s.speaker for s in self.segments if s.speaker]
        turns = sorted(self.speaker_turns or [], key=lambda t: (t.start, t.end))
        return list(dict.fromkeys(heard + [t.speaker for t in turns]))


def transcript_from_record(record: dict) -> Transcript:
    """A Transcript from dataclasses.asdict(transcript), as the result cache keeps it."""
    data = dict(record)
    data["segments"] = [
        Segment(**{**s, "words": None if s.get("words") is None else [Word(**w) for w in s["words"]]})
        for s in data.get("segments", [])
    ]
    if data.get("speaker_turns") is not None:
        data["speaker_turns"] = [SpeakerTurn(**t) for t in data["speaker_turns"]]
    return Transcript(**data)


def word_dict(word: dict) -> dict:
    """One word as openai-whisper writes it (word, start, end, probability), then its speaker."""
    ordered = {key: word[key] for key in ("word", "start", "end", "probability")}
    return ordered | ({"speaker": word["speaker"]} if word.get("speaker") else {})


def segment_dict(segment: dict, with_words: bool) -> dict:
    """One segment as openai-whisper writes it (its keys in its order), then ours."""
    ordered = {key: segment[key] for key in OPENAI_SEGMENT_KEYS}
    if with_words:
        ordered["words"] = [word_dict(w) for w in segment["words"] or []]
    extra = {k: v for k, v in segment.items() if k not in ordered and k != "words" and v is not None}
    return ordered | extra
