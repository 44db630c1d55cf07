"""The site configuration: one TOML file from which every installed piece is rendered.

See site.example.toml for every key. Lookup: $WHISPER_HPC_SITE, else
/etc/whisper-hpc/site.toml, else the built-in defaults below.
"""

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
    support: str = "your HPC support team"
    module_version: str = "0.1.0"
    prefix: Path = Path("/opt/whisper-hpc")
    model_root: Path = Path("/opt/whisper-hpc/models")
    images: Path = Path("/opt/whisper-hpc/images")
    default_model: str | None = None
    data_areas: tuple[str, ...] = ("/home", "/scratch")
    scratch_variables: tuple[str, ...] = ("TMPDIR", "SLURM_TMPDIR", "SCRATCH")
    native_fallback: bool = False
    apptainer: str = "apptainer"
    partition: str = ""
    account: str = ""
    gpu_gres: str = "gpu:1"
    max_time: str = "24:00:00"
    array_throttle: int = 20
    allowed_roots: tuple[str, ...] = ("/home", "/scratch")
    source: Path | None = None
    raw: dict = field(default_factory=dict)


def site_file() -> Path | None:
    """The site file in force: $WHISPER_HPC_SITE, else /etc/whisper-hpc/site.toml, else none."""
    named = os.environ.get(SITE_FILE_VARIABLE)
    if named:
        return Path(named)
    return SYSTEM_SITE_FILE if SYSTEM_SITE_FILE.is_file() else None


class SiteError(Exception):
    """A site file that cannot be read; the message names it."""


def load_site(path: Path | None = None) -> Site:
    """Read the site file (or the built-in defaults when there is none)."""
    path = path or site_file()
    if path is None:
        return Site()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SiteError(f"site file {path}: {error.strerror} (set {SITE_FILE_VARIABLE} to a readable site.toml)")
    except tomllib.TOMLDecodeError as error:
        raise SiteError(f"site file {path} is not valid TOML: {error}")
    return site_from_dict(data, path)


def site_from_dict(data: dict, source: Path | None = None) -> Site:
    defaults = Site()
    section = lambda name: data.get(name, {})  # noqa: E731
    site, paths, wrapper, slurm = section("site"), section("paths"), section("wrapper"), section("slurm")
    return Site(
        name=site.get("name", defaults.name),
        support=site.get("support", defaults.support),
        module_version=str(site.get("module_version", defaults.module_version)),
        prefix=Path(paths.get("prefix", defaults.prefix)),
        model_root=Path(paths.get("model_root", defaults.model_root)),
        images=Path(paths.get("images", defaults.images)),
        default_model=section("models").get("default", defaults.default_model),
        data_areas=tuple(wrapper.get("data_areas", defaults.data_areas)),
        scratch_variables=tuple(wrapper.get("scratch_variables", defaults.scratch_variables)),
        native_fallback=bool(wrapper.get("native_fallback", defaults.native_fallback)),
        apptainer=wrapper.get("apptainer", defaults.apptainer),
        partition=slurm.get("partition", defaults.partition),
        account=slurm.get("account", defaults.account),
        gpu_gres=slurm.get("gpu_gres", defaults.gpu_gres),
        max_time=slurm.get("max_time", defaults.max_time),
        array_throttle=int(slurm.get("array_throttle", defaults.array_throttle)),
        allowed_roots=tuple(section("ondemand").get("allowed_roots", defaults.allowed_roots)),
        source=source,
        raw=data,
    )


def model_root(site: Site | None = None) -> Path:
    """$WHISPER_MODELS, else the site's model root."""
    named = os.environ.get("WHISPER_MODELS")
    if named:
        return Path(named)
    return (site or load_site()).model_root
