"""Which files a batch holds, where each one's transcripts go, and which are already done.

Transcript names come from whisper_hpc.inputs.collect_jobs over the user's arguments, exactly as
one `whisper-hpc ARGS --output_dir OUT` run would name them. An array task runs whisper-hpc on a
chunk of single files, so each file also records the --output_dir that chunk run must use, and
files whose names depend on each other (talk.wav beside talk.mp3, or a/talk.wav and b/talk.wav)
form a group that is always run together. `check_invocation` proves, before any job starts,
that a chunk's whisper-hpc run names every transcript where the manifest says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.inputs import Job, collect_jobs, output_stem

# Characters str.splitlines() breaks on: a path holding one cannot go into a --file_list.
LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


class NamingError(WhisperHpcError):
    """Transcript names that cannot work: two inputs sharing one, or a chunk run naming differently."""


@dataclass
class Entry:
    """One input file of the batch."""

    path: str  # absolute, spelled as the user's argument led to it
    output_dir: str  # the --output_dir the chunk's whisper-hpc run gets for this file
    output_base: str  # transcripts are output_base + "." + format
    duration: float | None = None  # seconds, from ffprobe at submission
    probe_error: str | None = None

    def job(self) -> Job:
        return Job(Path(self.path), Path(self.output_base))


def absolute(argument: str) -> Path:
    return Path(os.path.abspath(Path(argument).expanduser()))


def select(arguments: Sequence[str], output_dir: Path) -> list[Entry]:
    """Every file the arguments name (directories walked), with its transcript location."""
    absolute_arguments = [str(absolute(a)) for a in arguments]
    final = collect_jobs(absolute_arguments, output_dir)
    run_dir: dict[Path, Path] = {}
    for argument in absolute_arguments:
        # Alone, an argument's files get their names before any clash with other arguments:
        # the folder that gives is where a chunk run must write.
        for job in collect_jobs([argument], output_dir):
            run_dir.setdefault(job.source, job.output_base.parent)
    entries = [Entry(str(job.source), str(run_dir[job.source]), str(job.output_base)) for job in final]
    refuse_shared_outputs(entries)
    return entries


def refuse_shared_outputs(entries: Sequence[Entry]) -> None:
    """Two inputs whose transcripts would overwrite each other (talk.wav.flac beside a renamed talk.wav)."""
    owner: dict[str, str] = {}
    for entry in entries:
        other = owner.setdefault(entry.output_base, entry.path)
        if other != entry.path:
            raise NamingError(f"{other} and {entry.path} would both write {entry.output_base}.*; rename one of them")


def group_key(entry: Entry) -> tuple[str, str]:
    """Files with the same key would get the same transcript name in one run: they go together."""
    return entry.output_dir, output_stem(Path(entry.path))


def groups(entries: Sequence[Entry], indices: Sequence[int]) -> list[list[int]]:
    """`indices` in groups that must run together, ordered by output folder, then first appearance."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for index in indices:
        by_key.setdefault(group_key(entries[index]), []).append(index)
    ordered = sorted(by_key.values(), key=lambda members: (entries[members[0]].output_dir, members[0]))
    return ordered


def whole_groups(entries: Sequence[Entry], indices: Sequence[int]) -> list[int]:
    """`indices` plus every file that shares a group with one of them (in manifest order)."""
    wanted = {group_key(entries[i]) for i in indices}
    return [i for i, entry in enumerate(entries) if group_key(entry) in wanted]


def invocations(entries: Sequence[Entry], indices: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The whisper-hpc runs of one chunk: (output_dir, file indices), one per output folder."""
    by_dir: dict[str, list[int]] = {}
    for index in indices:
        by_dir.setdefault(entries[index].output_dir, []).append(index)
    return list(by_dir.items())


def check_invocation(entries: Sequence[Entry], output_dir: str, indices: Sequence[int]) -> None:
    for index in indices:  # an entry is one file: a folder would be walked (a damaged manifest)
        if os.path.isdir(entries[index].path):
            raise NamingError(f"{entries[index].path}: a folder, not a file; a manifest entry names one file")
    jobs = collect_jobs([entries[i].path for i in indices], Path(output_dir))
    got = {str(job.source): str(job.output_base) for job in jobs}
    for index in indices:
        entry = entries[index]
        if got.get(entry.path) != entry.output_base:
            raise NamingError(
                f"{entry.path}: a chunk run would write {got.get(entry.path)} instead of {entry.output_base}"
            )


def list_safe(path: str) -> bool:
    """Whether whisper-hpc's --file_list (one stripped UTF-8 line per path) carries `path` intact."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return path == path.strip() and not path.startswith("#") and not (LINE_BREAKS & set(path))


def outputs_exist(entry: Entry, formats: tuple[str, ...], split_channels: bool, since: float | None = None) -> bool:
    """All requested transcripts exist (and, for an --overwrite batch, were written after `since`)."""
    job = entry.job()
    if not job.is_done(formats, split_channels):
        return False
    if since is None:
        return True
    sets = [job.outputs(formats)]
    if split_channels:
        sets.append(job.outputs(formats, "left") + job.outputs(formats, "right"))
    return any(all(written_since(p, since) for p in paths) for paths in sets)


def written_since(path: Path, since: float) -> bool:
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False
