"""The site configuration: one TOML file from which every installed piece is rendered."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SITE_FILE_VARIABLE = "WHISPER_HPC_SITE"
SYSTEM_SITE_FILE = Path("/etc/whisper-hpc/site.toml")


@dataclass(frozen=True)
class Site:
    """What a site decides once: where models live, what the wrapper binds, how jobs run."""

    name: str = "generic"
    model_root: Path = Path("/opt/whisper-hpc/models")
    default_model: str | None = None
    data_areas: tuple[str, ...] = ("/home", "/scratch")
    native_fallback: bool = False
    source: Path | None = None
    extra: dict = field(default_factory=dict)


def site_file() -> Path | None:
    """The site file in force: $WHISPER_HPC_SITE, else /etc/whisper-hpc/site.toml, else none."""
    named = os.environ.get(SITE_FILE_VARIABLE)
    if named:
        return Path(named)
    return SYSTEM_SITE_FILE if SYSTEM_SITE_FILE.is_file() else None


def load_site(path: Path | None = None) -> Site:
    """Read the site file (or the built-in defaults when there is none)."""
    path = path or site_file()
    if path is None:
        return Site()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"whisper-hpc: site file {path} does not exist (set {SITE_FILE_VARIABLE} to a readable site.toml)")
    except tomllib.TOMLDecodeError as error:
        raise SystemExit(f"whisper-hpc: site file {path} is not valid TOML: {error}")
    site = data.get("site", {})
    paths = data.get("paths", {})
    wrapper = data.get("wrapper", {})
    return Site(
        name=site.get("name", Site.name),
        model_root=Path(paths.get("model_root", Site.model_root)),
        default_model=data.get("models", {}).get("default"),
        data_areas=tuple(wrapper.get("data_areas", Site.data_areas)),
        native_fallback=bool(wrapper.get("native_fallback", Site.native_fallback)),
        source=path,
        extra=data,
    )


def model_root(site: Site | None = None) -> Path:
    """$WHISPER_MODELS, else the site's model root."""
    named = os.environ.get("WHISPER_MODELS")
    if named:
        return Path(named)
    return (site or load_site()).model_root
