"""Which files to transcribe, and where each one's transcripts go."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MEDIA_SUFFIXES = frozenset(
    ".wav .flac .mp3 .m4a .aac .ogg .oga .opus .wma .webm .mp4 .m4v .mkv .mka .mov .avi .mpeg .mpg "
    ".3gp .amr .aif .aiff .caf .wv .ape .ts .mts .au .spx .ac3 .dts".split()
)


@dataclass(frozen=True)
class Job:
    """One input file and the path stem its transcripts are written under."""

    source: Path
    output_base: Path  # output_dir/<relative stem>; a format's file is output_base + "." + ext

    def outputs(self, formats: tuple[str, ...], channel: str | None = None) -> list[Path]:
        base = self.channel_base(channel)
        return [base.with_name(base.name + "." + fmt) for fmt in formats]

    def channel_base(self, channel: str | None) -> Path:
        return self.output_base if channel is None else self.output_base.with_name(f"{self.output_base.name}.{channel}")

    def is_done(self, formats: tuple[str, ...], split_channels: bool = False) -> bool:
        """Every requested transcript exists (for each channel, or the mix, when channels are split)."""
        if split_channels:
            left, right = self.outputs(formats, "left"), self.outputs(formats, "right")
            if all(p.exists() for p in left + right):
                return True
        return all(p.exists() for p in self.outputs(formats))


def read_file_list(path: Path) -> list[str]:
    """One path per line; blank lines and lines starting with # are ignored."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def media_in(directory: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(directory):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.extend(Path(folder) / f for f in sorted(files) if Path(f).suffix.lower() in MEDIA_SUFFIXES and not f.startswith("."))
    return found


def output_stem(path: Path) -> str:
    return path.stem if path.suffix else path.name


def collect_jobs(arguments: list[str], output_dir: Path) -> list[Job]:
    """Files as given (even missing ones: they fail later, with their name); directories walked.

    Files found inside a directory keep their relative folders under the output directory, so
    a/talk.wav and b/talk.wav do not overwrite each other.
    """
    jobs: list[Job] = []
    seen: set[Path] = set()
    for argument in arguments:
        path = Path(argument).expanduser()
        if path.is_dir():
            for found in media_in(path):
                relative = found.relative_to(path)
                add(jobs, seen, Job(found, output_dir / relative.parent / output_stem(found)))
        else:
            add(jobs, seen, Job(path, output_dir / output_stem(path)))
    return without_collisions(jobs)


def without_collisions(jobs: list[Job]) -> list[Job]:
    """Two inputs must never write the same transcript.

    talk.wav and talk.mp3 keep their extension in the output name (talk.wav.srt, talk.mp3.srt);
    files with the very same name from different folders (a/talk.wav, b/talk.wav, as a file
    list of one recording per subject often has) keep the folders that tell them apart
    (out/a/talk.srt, out/b/talk.srt).
    """
    by_base: dict[Path, list[Job]] = {}
    for job in jobs:
        by_base.setdefault(job.output_base, []).append(job)
    renamed = {}
    for base, clashing in by_base.items():
        if len(clashing) < 2:
            continue
        names = [j.source.name for j in clashing]
        if len(set(names)) == len(names):
            for job in clashing:
                renamed[id(job)] = Job(job.source, base.with_name(job.source.name))
            continue
        folders = [j.source.absolute().parent for j in clashing]
        common = Path(os.path.commonpath(folders))
        for job, folder in zip(clashing, folders):
            relative = folder.relative_to(common)
            renamed[id(job)] = Job(job.source, base.parent / relative / job.source.name)
    return [renamed.get(id(job), job) for job in jobs]


def add(jobs: list[Job], seen: set[Path], job: Job) -> None:
    key = job.source.resolve() if job.source.exists() else job.source.absolute()
    if key not in seen:
        seen.add(key)
        jobs.append(job)
