"""The result cache: the same audio with the same settings is transcribed once.

    ROOT/entries/<2 hex>/<key>.json    one result: the transcripts of one file (one per channel)
    ROOT/by-file/<2 hex>/<alias>       the key of the entry for these file bytes: a lookup that
                                       needs no decoding
    ROOT/by-start/<2 hex>/<alias>      an entry whose audio starts with these samples: only then
                                       is a file not known by its bytes decoded whole to look it up

ROOT is the site's [cache] directory when its group shares it (`shared = true`), else
DIRECTORY/<user>, which must be the user's own (mode 0700). The key is a SHA-256 of the decoded
samples (so a lossless re-encode under another name is a hit) and of every setting that changes
the text (`settings_key`: model and its manifest, engine and versions, device, compute type,
decoding options, channels, diarization). Formats and subtitle layout are not in it: a hit is
rendered again by the writers, in whatever formats the run asks for.

Entries are written atomically (concurrent writers of one key leave one whole entry), carry a
checksum (a damaged entry is removed and recomputed), and their modification time is their last
use: beyond the size limit the least recently used go first, down to 90 % of the limit. No path
of the audio is stored, only its transcripts.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import stat
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Mapping

from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.files import read_regular_file, sha256_file, write_atomically
from whisper_hpc.transcript import Transcript, transcript_from_record

FORMAT = 1
# How the site's [cache] reaches whisper-hpc inside the container (the wrapper sets them).
DIRECTORY_VARIABLE = "WHISPER_HPC_RESULT_CACHE"
SHARED_VARIABLE = "WHISPER_HPC_RESULT_CACHE_SHARED"
MAX_SIZE_VARIABLE = "WHISPER_HPC_RESULT_CACHE_MAX_SIZE"
VARIABLES = (DIRECTORY_VARIABLE, SHARED_VARIABLE, MAX_SIZE_VARIABLE)
EVICT_TO = 0.9  # of the size limit, so that a full cache is not scanned for every new entry
START_SECONDS = 30.0  # decoded for a first look: no entry starts like this file, no full decode
ENTRY_LIMIT = 256 << 20  # bytes; a larger "entry" is not one we wrote
KEY = re.compile(r"\A[0-9a-f]{64}\Z")
PACKAGES = {"faster-whisper": ("faster-whisper", "ctranslate2"), "openai-whisper": ("openai-whisper", "torch")}


class CacheUnusable(WhisperHpcError):
    """A cache directory that must not be used; the run goes on without it."""


@dataclass(frozen=True)
class CacheSettings:
    directory: str  # empty: no result cache
    shared: bool
    max_bytes: int


def cache_settings(site, environ: Mapping[str, str] = os.environ) -> CacheSettings:
    """The wrapper's variables when it set them (the site file is outside the container), else the site's [cache]."""
    from whisper_hpc.site import CacheTable
    from whisper_hpc.sizing import parse_memory

    table = site.cache
    if DIRECTORY_VARIABLE in environ:
        directory = environ[DIRECTORY_VARIABLE]
        shared = environ.get(SHARED_VARIABLE, "0") == "1"
        size = environ.get(MAX_SIZE_VARIABLE) or table.max_size
    else:
        directory, shared, size = table.directory, table.shared, table.max_size
    try:
        megabytes = parse_memory(size)
    except ValueError:
        megabytes = parse_memory(CacheTable.max_size)
    return CacheSettings(directory, shared, megabytes << 20)


def digest(value: object) -> str:
    """SHA-256 of a JSON value, independent of key order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def installed_versions(names) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = ""
    return versions


def folder_identity(path: Path) -> object:
    """A staged folder by its manifest (its files' SHA-256); without one, by its files' sizes and times."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        return sha256_file(manifest)
    if path.is_file():
        return [str(path), path.stat().st_size, path.stat().st_mtime_ns]
    return sorted([str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in path.rglob("*") if p.is_file())


def settings_key(*, model, backend: str, device: str, compute_type: str | None, options, split_channels: bool,
                 strict_audio: bool, window_seconds: float, speakers=None) -> dict | None:
    """Everything besides the audio that changes the transcripts; None: results not to be cached
    (speakers from an RTTM file, which names its recordings)."""
    from whisper_hpc import __version__
    from whisper_hpc.diarization.source import PipelineSpeakers

    diarization = None
    if speakers is not None:
        if not isinstance(speakers, PipelineSpeakers):
            return None
        diarization = {"pipeline": folder_identity(speakers.directory), "counts": asdict(speakers.counts),
                       "versions": installed_versions(("pyannote.audio", "torch"))}
    return {
        "format": FORMAT,
        "whisper_hpc": __version__,
        "model": {"name": model.name, "identity": folder_identity(model.path)},
        "backend": backend,
        "versions": installed_versions(PACKAGES.get(backend, (backend,))),
        "device": device,
        "compute_type": compute_type,
        "options": asdict(options),
        "split_channels": split_channels,
        "strict_audio": strict_audio,
        "window_seconds": window_seconds,
        "diarization": diarization,
    }


def user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def prepared_root(settings: CacheSettings) -> Path:
    """The folder this user's results go in, checked (CacheUnusable says why not)."""
    top = Path(settings.directory)
    if settings.shared:
        try:
            info = os.stat(top)
        except OSError as error:
            raise CacheUnusable(f"{top}: {error.strerror}; the administrator creates a shared cache "
                                "(group-owned, mode 2770)") from None
        if not stat.S_ISDIR(info.st_mode):
            raise CacheUnusable(f"{top} is not a directory")
        if info.st_mode & stat.S_IWOTH:
            raise CacheUnusable(f"{top} is writable by every user, who could plant transcripts in it; "
                                "make it group-owned with mode 2770")
        if not os.access(top, os.W_OK | os.X_OK):
            raise CacheUnusable(f"{top} is not writable for you (is it your group's?)")
        return top
    root = top / user_name()
    try:
        top.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(root)
    except OSError as error:
        raise CacheUnusable(f"cannot create {root}: {error.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise CacheUnusable(f"{root} is not a directory")
    if info.st_uid != os.geteuid():
        raise CacheUnusable(f"{root} belongs to another user, who could read and plant transcripts; "
                            "ask your administrator to remove it")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(root, 0o700)
    return root


@dataclass
class Hit:
    key: str
    created: str  # when it was transcribed
    transcripts: list[tuple[str | None, Transcript]]  # (channel label, transcript), in channel order


@dataclass
class Lookup:
    """What one file's lookup found, and what a later `store` needs."""

    file_sha256: str
    start_sha256: str | None = None  # of the first START_SECONDS of its samples
    decoded_sha256: str | None = None  # of all its samples
    hit: Hit | None = None


class ResultCache:
    def __init__(self, root: Path, shared: bool, max_bytes: int, settings: dict, notice: Callable[[str], None]) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.settings = digest(settings)
        self.file_mode = 0o660 if shared else 0o600
        self.folder_mode = 0o2770 if shared else 0o700
        self.notice = notice
        self.size: int | None = None  # bytes held, once counted

    @classmethod
    def open(cls, settings: CacheSettings, key: dict | None, notice: Callable[[str], None]) -> "ResultCache | None":
        """The cache, or None (with a notice when it is configured but cannot be used)."""
        if not settings.directory or key is None:
            return None
        try:
            root = prepared_root(settings)
        except CacheUnusable as error:
            notice(f"result cache off: {error}")
            return None
        return cls(root, settings.shared, settings.max_bytes, key, notice)

    # ---- where things are

    def entry_key(self, decoded_sha256: str) -> str:
        return digest({"audio": decoded_sha256, "settings": self.settings})

    def entry_path(self, key: str) -> Path:
        return self.root / "entries" / key[:2] / f"{key}.json"

    def alias_path(self, kind: str, sha256: str) -> Path:
        """ROOT/by-file/ (the file's bytes) or ROOT/by-start/ (its first samples) for these settings."""
        alias = digest({kind: sha256, "settings": self.settings})
        return self.root / kind / alias[:2] / alias

    # ---- reading

    def lookup(self, source: Path, start_sha256: Callable[[], str | None],
               samples_sha256: Callable[[], str | None]) -> Lookup:
        """By the file's bytes; else, when some entry begins with the same samples, by all its samples.

        A miss costs a hash of the file and a decode of its first START_SECONDS; the samples of a
        file transcribed anyway are hashed while it is (`Lookup.decoded_sha256`, set by the caller).
        """
        found = Lookup(sha256_file(source))
        key = self.read_alias(self.alias_path("by-file", found.file_sha256))
        found.hit = self.read(key) if key else None
        if found.hit:
            return found
        found.start_sha256 = start_sha256()
        if found.start_sha256 is None or not self.read_alias(self.alias_path("by-start", found.start_sha256)):
            return found
        decoded = samples_sha256()
        found.hit = self.read(self.entry_key(decoded)) if decoded else None
        if found.hit:
            self.write(self.alias_path("by-file", found.file_sha256), found.hit.key)
        return found

    def read_alias(self, path: Path) -> str | None:
        try:
            key = read_regular_file(path, limit=128).decode().strip()
        except (OSError, ValueError):
            return None
        return key if KEY.match(key) else None

    def read(self, key: str) -> Hit | None:
        path = self.entry_path(key)
        try:
            data = read_regular_file(path, limit=ENTRY_LIMIT)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            self.discard(path, f"cannot be read ({getattr(error, 'strerror', None) or error})")
            return None
        try:
            record = json.loads(data)
            if record["format"] != FORMAT or record["key"] != key or record["checksum"] != digest(record["transcripts"]):
                raise ValueError("its checksum does not match")
            transcripts = [(item["channel"], transcript_from_record(item["transcript"])) for item in record["transcripts"]]
            hit = Hit(key, transcripts[0][1].created or str(record["created"]), transcripts)
        except (ValueError, KeyError, TypeError) as error:
            self.discard(path, f"is damaged ({error})")
            return None
        try:
            os.utime(path)  # its last use, for the eviction
        except OSError:
            pass
        return hit

    def discard(self, path: Path, why: str) -> None:
        self.notice(f"result cache: {path} {why}; removed, the file is transcribed again")
        try:
            path.unlink()
        except OSError:
            pass

    # ---- writing

    def write(self, path: Path, content: str) -> int:
        for folder in (path.parent.parent, path.parent):  # ROOT/entries/ab/, ROOT/by-file/ab/
            try:
                folder.mkdir(mode=self.folder_mode)
                os.chmod(folder, self.folder_mode)  # the umask would take the group's bits
            except FileExistsError:
                pass
        write_atomically(path, content, mode=self.file_mode)
        return len(content.encode())

    def store(self, found: Lookup, transcripts: list[tuple[str | None, Transcript]]) -> str | None:
        """Keep the transcripts under the file's decoded samples; the key, or None (said) when it cannot."""
        if found.decoded_sha256 is None or found.start_sha256 is None:
            return None
        key = self.entry_key(found.decoded_sha256)
        kept = [{"channel": label, "transcript": asdict(replace(t, source="", cache=None))} for label, t in transcripts]
        record = {"format": FORMAT, "key": key, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "checksum": digest(kept), "transcripts": kept}
        try:
            written = self.write(self.entry_path(key), json.dumps(record))
            self.write(self.alias_path("by-file", found.file_sha256), key)
            self.write(self.alias_path("by-start", found.start_sha256), key)
        except OSError as error:
            self.notice(f"result cache: cannot keep this result in {self.root} ({error.strerror})")
            return None
        if self.size is not None:
            self.size += written
        if self.size is None or self.size > self.max_bytes:
            self.evict(keep=self.entry_path(key))
        return key

    def evict(self, keep: Path) -> None:
        """Remove the least recently used entries (never `keep`) until they fit in EVICT_TO of the limit."""
        entries = []
        for path in (self.root / "entries").glob("*/*.json"):
            try:
                info = path.stat()
            except OSError:
                continue
            entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        if total > self.max_bytes:
            removed = False
            for _, size, path in sorted(entries):
                if total <= self.max_bytes * EVICT_TO:
                    break
                if path == keep:
                    continue
                try:
                    path.unlink()
                except OSError:
                    continue
                total -= size
                removed = True
            if removed:
                self.forget_dangling_aliases()
        self.size = total

    def forget_dangling_aliases(self) -> None:
        for alias in [*(self.root / "by-file").glob("*/*"), *(self.root / "by-start").glob("*/*")]:
            try:
                key = alias.read_text().strip()
            except OSError:
                continue
            if not KEY.match(key) or not self.entry_path(key).exists():
                alias.unlink(missing_ok=True)


def hit_transcript(transcript: Transcript, source: Path, hit: Hit, started: float) -> Transcript:
    """A cached transcript as this run writes it: this file's name, and where it came from."""
    return replace(transcript, source=str(source), wall_time=round(time.monotonic() - started, 3),
                   cache={"hit": True, "key": hit.key, "computed": hit.created})
