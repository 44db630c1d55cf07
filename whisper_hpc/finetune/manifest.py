"""The data manifest: a TSV `audio<TAB>text[<TAB>language]`, paths relative to its folder.

A header line is optional; when the first line names columns (Common Voice's `path`, `sentence`,
`locale`, or --audio_column/--text_column/--language_column), columns are taken by name in any
order. CRLF line ends are tolerated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from whisper_hpc.errors import UsageError

AUDIO_NAMES = ("audio", "path", "file", "filename")
TEXT_NAMES = ("text", "sentence", "transcript", "transcription")
LANGUAGE_NAMES = ("language", "locale", "lang")


@dataclass(frozen=True)
class Row:
    line: int
    audio: str  # as written in the manifest
    path: Path  # resolved against the manifest's folder
    text: str
    language: str | None


@dataclass(frozen=True)
class Columns:
    audio: str | None = None
    text: str | None = None
    language: str | None = None


def column_index(header: list[str], wanted: str | None, names: tuple[str, ...]) -> int | None:
    lowered = [name.strip().lower() for name in header]
    for name in ((wanted,) if wanted else names):
        if name.lower() in lowered:
            return lowered.index(name.lower())
    return None


def read_manifest(manifest: Path, columns: Columns = Columns()) -> list[Row]:
    """Every data line of the manifest (blank lines skipped)."""
    try:
        text = manifest.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise UsageError(f"{manifest}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{manifest}: not UTF-8 text") from None
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise UsageError(f"{manifest}: no lines")
    first = lines[0][1].split("\t")
    audio = column_index(first, columns.audio, AUDIO_NAMES)
    text_at = column_index(first, columns.text, TEXT_NAMES)
    if audio is not None and text_at is not None:
        language = column_index(first, columns.language, LANGUAGE_NAMES)
        lines = lines[1:]
    elif columns.audio or columns.text:
        raise UsageError(f"{manifest}: its first line has no columns named {columns.audio or 'audio'} and "
                         f"{columns.text or 'text'}")
    else:
        audio, text_at, language = 0, 1, 2
    rows = []
    for number, line in lines:
        fields = line.split("\t")
        get = lambda index: fields[index].strip() if index is not None and index < len(fields) else ""  # noqa: E731
        name = get(audio)
        rows.append(Row(number, name, (manifest.parent / name).absolute(), get(text_at), get(language) or None))
    return rows
