"""The site configuration: one typed schema for the one TOML file every installed piece is rendered from.

Each table of site.toml is a dataclass below; each key has its type, default and one-line
meaning. A file with an unknown key, a value of the wrong type, a relative path, a path that
apptainer's bind syntax cannot carry, or a data area that would hide a system folder is
refused with the file, the key, what was expected and what was found. Lookup:
$WHISPER_HPC_SITE, else /etc/whisper-hpc/site.toml, else the defaults below.

The container wrapper (stdlib only, installed apart from this package) validates the keys it
reads with the same rules; tests/test_site.py keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError

SITE_FILE_VARIABLE = "WHISPER_HPC_SITE"
SYSTEM_SITE_FILE = Path("/etc/whisper-hpc/site.toml")
# A bind of one of these (or of a folder inside one) would hide the container's own (the image
# lives in /opt/whisper-hpc). The model root alone may lie inside one: it is bound at /models
# and at its own path, which the image does not use.
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/proc", "/run",
                  "/sbin", "/sys", "/usr")
BIND_SEPARATORS = ",:"  # apptainer --bind src:dst:opts,src2:...
SLURM_NAME = re.compile(r"\A[A-Za-z0-9_.+-]{0,64}\Z")
GRES = re.compile(r"\A[A-Za-z0-9_.:,-]{1,64}\Z")
CLUSTER = re.compile(r"\A[A-Za-z0-9_.*-]{1,64}\Z")
VERSION = re.compile(r"\A[A-Za-z0-9_.+-]{1,64}\Z")
VARIABLE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")

# Value kinds beyond str, int and bool; each names the rule its values obey.
AbsolutePath = typing.NewType("AbsolutePath", str)       # absolute, no ',' or ':', not a system folder itself
DataArea = typing.NewType("DataArea", str)               # nor inside one: it is bound as it is
ModelRoot = typing.NewType("ModelRoot", str)             # bound too, but it may lie inside /opt
RULES = {AbsolutePath: "path", DataArea: "data area", ModelRoot: "model root"}
MODEL_ROOT_MAY_BE_INSIDE = ("/opt",)  # it is bound at /models and at its own path, which the image leaves free
Paths = tuple[AbsolutePath, ...]
DataAreas = tuple[DataArea, ...]
Names = tuple[str, ...]


class SiteError(WhisperHpcError):
    """A site file that cannot be used; the message names the file and the key."""


def key(default, meaning: str, check=None):
    """A site key: its default, its one-line meaning, and an optional extra check (value -> problem or None)."""
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata={"meaning": meaning, "check": check})


def pattern_check(pattern: re.Pattern, what: str):
    return lambda value: None if pattern.match(value) else f"{what}"


def slurm_time_check(value: str) -> str | None:
    from whisper_hpc.sizing import parse_time

    try:
        parse_time(value)
    except ValueError:
        return "a Slurm time such as 24:00:00, 1-12 or UNLIMITED"
    return None


def size_check(value: str) -> str | None:
    from whisper_hpc.sizing import parse_memory

    try:
        parse_memory(value)
    except ValueError:
        return "a size such as 20G or 500M"
    return None


def optional_data_area_check(value: str) -> str | None:
    return path_problem(value, "data area") if value else None


def range_check(lowest: int, highest: int):
    return lambda value: None if lowest <= value <= highest else f"a whole number from {lowest} to {highest}"


@dataclass(frozen=True)
class SiteInfo:
    """[site]: who runs this installation."""

    name: str = key("generic", "the site's name, shown in module help and job scripts")
    support: str = key("your HPC support team", "where users get help; shown in help texts and error hints")
    module_version: str = key("0.1.0", "the modules' version: whisper/<version>, whisper-diarization/<version>",
                              pattern_check(VERSION, "a plain version such as 0.1.0"))


@dataclass(frozen=True)
class PathsTable:
    """[paths]: where things live on the cluster."""

    prefix: AbsolutePath = key("/opt/whisper-hpc", "the installation folder (make install's PREFIX default)")
    model_root: ModelRoot = key("/opt/whisper-hpc/models", "staged models, bound read-only at /models")
    images: AbsolutePath = key("/opt/whisper-hpc/images", "whisper.sif and whisper-diarization.sif")


@dataclass(frozen=True)
class ModelsTable:
    """[models]: what users get without asking."""

    default: str = key("", "the model used when a user gives no --model (empty: --model is required)")


@dataclass(frozen=True)
class WrapperTable:
    """[wrapper]: what singularity_wrapper binds and runs."""

    data_areas: DataAreas = key(["/home", "/scratch"], "folders bound into the container when they exist")
    scratch_variables: Names = key(["TMPDIR", "SLURM_TMPDIR", "SCRATCH"],
                                   "where the per-job temporary folder goes: the first variable set to a folder",
                                   lambda names: next((f"variable names, not '{n}'" for n in names
                                                       if not VARIABLE.match(n)), None))
    native_fallback: bool = key(False, "true: run whisper-hpc natively when apptainer is absent")
    native_command: str = key("whisper-hpc", "what `run` executes in that fallback")
    apptainer: str = key("apptainer", "the container runtime: apptainer, singularity, or an absolute path",
                         lambda value: None if value and (value.startswith("/") or "/" not in value)
                         and not any(c.isspace() for c in value) else "a program name or an absolute path")


@dataclass(frozen=True)
class SlurmTable:
    """[slurm]: how jobs are requested."""

    partition: str = key("", "the partition jobs go to (empty: the cluster default)",
                         pattern_check(SLURM_NAME, "a plain Slurm name"))
    account: str = key("", "the account jobs are charged to (empty: the user's default)",
                       pattern_check(SLURM_NAME, "a plain Slurm name"))
    gpu_gres: str = key("gpu:1", "the --gres of a one-GPU job", pattern_check(GRES, "a gres such as gpu:1 or gpu:a100:1"))
    max_time: str = key("24:00:00", "the longest --time a job may ask for", slurm_time_check)
    array_throttle: int = key(20, "at most this many array tasks run at once (%N)", range_check(1, 100000))
    cpus_per_task: int = key(4, "CPU cores the example job scripts request", range_check(1, 1024))


@dataclass(frozen=True)
class OnDemandTable:
    """[ondemand]: the Open OnDemand app."""

    allowed_roots: Paths = key(["/home", "/scratch"], "form paths must be inside one of these",
                               lambda roots: None if roots else "at least one folder")
    cluster: str = key("*", "the OnDemand cluster id(s) the app submits to", pattern_check(CLUSTER, "a cluster id or glob"))
    ood_version: str = key("3.1", "the OnDemand version: 3.1+ path_selector, 3.0+ auto_accounts/auto_queues",
                           pattern_check(re.compile(r"\A\d+(\.\d+)*\Z"), "a version number such as 3.1"))
    cpus_per_task: int = key(4, "CPU cores per OnDemand job", range_check(1, 256))
    lmod_init: AbsolutePath = key("/usr/share/lmod/lmod/init/bash", "sourced in the job when `module` is missing")


@dataclass(frozen=True)
class CacheTable:
    """[cache]: the result cache (whisper_hpc.result_cache): transcripts kept by audio content and settings."""

    directory: str = key("", "where results are kept (bound into the container); empty: no result cache",
                         optional_data_area_check)
    shared: bool = key(False, "true: one cache for the directory's group (members read each other's "
                              "transcripts); false: DIRECTORY/<user>, private to each user")
    max_size: str = key("20G", "the cache's size limit; the least recently used results go first", size_check)


TABLES = {"site": SiteInfo, "paths": PathsTable, "models": ModelsTable, "wrapper": WrapperTable,
          "slurm": SlurmTable, "ondemand": OnDemandTable, "cache": CacheTable}


@dataclass(frozen=True)
class Site:
    """What a site decides once: where models live, what the wrapper binds, how jobs run."""

    site: SiteInfo = field(default_factory=SiteInfo)
    paths: PathsTable = field(default_factory=PathsTable)
    models: ModelsTable = field(default_factory=ModelsTable)
    wrapper: WrapperTable = field(default_factory=WrapperTable)
    slurm: SlurmTable = field(default_factory=SlurmTable)
    ondemand: OnDemandTable = field(default_factory=OnDemandTable)
    cache: CacheTable = field(default_factory=CacheTable)
    source: Path | None = None  # the file it was read from; None: the defaults

    @property
    def model_root(self) -> Path:
        return Path(self.paths.model_root)

    def described_source(self) -> str:
        return str(self.source) if self.source else "none (built-in defaults)"

    def as_tables(self) -> dict[str, dict]:
        """The configuration as TOML tables (lists for tuples), every key present."""
        return {name: {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in TABLES}


# ----- the rules -------------------------------------------------------------------------------

def system_folder(path: str, inside: bool = True, may_be_inside: tuple[str, ...] = ()) -> str | None:
    """The system folder a bind of `path` would hide (`/` too), or None; with `inside`, a folder
    inside one counts as well. `path` is normalised here, not resolved."""
    normal = os.path.normpath(path)
    if normal == "/" or normal.startswith("//"):
        return "/"
    return next((f for f in SYSTEM_FOLDERS
                 if normal == f or (inside and f not in may_be_inside and normal.startswith(f + "/"))), None)


def path_problem(value: str, rule: str = "path") -> str | None:
    """Why `value` cannot be a site path (None when it can). No path may be `/` or a system
    folder; a "data area" may not lie inside one either, nor a "model root" outside /opt."""
    if not value.startswith("/"):
        return "an absolute path"
    if any(c in value for c in BIND_SEPARATORS) or any(ord(c) < 32 for c in value):
        return "an absolute path without ',', ':' or control characters (apptainer's bind syntax)"
    may_be_inside = MODEL_ROOT_MAY_BE_INSIDE if rule == "model root" else ()
    hidden = system_folder(value, inside=rule != "path", may_be_inside=may_be_inside)
    if hidden:
        where = f"other than {hidden}" if os.path.normpath(value) == hidden else f"outside {hidden}"
        return f"a data folder {where} (binding it would hide the container's own)"
    return None


def kind_of(annotation) -> str:
    return {str: "a string", int: "a whole number", bool: "true or false", AbsolutePath: "an absolute path",
            DataArea: "an absolute path", ModelRoot: "an absolute path", Paths: "a list of absolute paths", DataAreas: "a list of absolute paths",
            Names: "a list of strings"}[annotation]


def found_text(value) -> str:
    kinds = {str: "the string", bool: "the boolean", int: "the number", float: "the number", list: "the list",
             dict: "the table"}
    shown = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{kinds.get(type(value), type(value).__name__)} {shown[:80]}"


def converted(annotation, value, where: str):
    """The value as the schema types it, or SiteError."""
    expected = kind_of(annotation)
    wrong = SiteError(f"{where} must be {expected}, not {found_text(value)}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if annotation is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong
        return value
    if annotation in (str, *RULES):
        if not isinstance(value, str):
            raise wrong
        if annotation is not str:
            problem = path_problem(value, RULES[annotation])
            if problem:
                raise SiteError(f"{where} must be {problem}, not {value!r}")
        return value
    item = typing.get_args(annotation)[0]
    if not isinstance(value, list):
        raise wrong
    return tuple(converted(item, entry, f"{where} entry {number + 1}") for number, entry in enumerate(value))


def table_from(table_class, values: dict, name: str, where: str):
    if not isinstance(values, dict):
        raise SiteError(f"{where}: [{name}] must be a table, not {found_text(values)}")
    fields = {f.name: f for f in dataclasses.fields(table_class)}
    hints = typing.get_type_hints(table_class)
    for given in values:
        if given not in fields:
            near = get_close_matches(given, fields, n=1)
            hint = f"; did you mean {near[0]}?" if near else f" (known: {', '.join(fields)})"
            raise SiteError(f"{where}: unknown key [{name}] {given}{hint}")
    typed = {}
    for key_name, value in values.items():
        label = f"{where}: [{name}] {key_name}"
        typed[key_name] = converted(hints[key_name], value, label)
        check = fields[key_name].metadata.get("check")
        problem = check(typed[key_name]) if check else None
        if problem:
            raise SiteError(f"{label} must be {problem}, not {value!r}")
    return table_class(**typed)


def site_from_dict(data: dict, source: Path | None = None) -> Site:
    """A Site from parsed TOML, every key checked against the schema."""
    where = f"site file {source}" if source else "site configuration"
    for name in data:
        if name not in TABLES:
            near = get_close_matches(name, TABLES, n=1)
            hint = f"; did you mean [{near[0]}]?" if near else f" (known: {', '.join(TABLES)})"
            raise SiteError(f"{where}: unknown table [{name}]{hint}")
    tables = {name: table_from(table_class, data.get(name, {}), name, where) for name, table_class in TABLES.items()}
    return Site(**tables, source=source)


# ----- finding and reading the file ------------------------------------------------------------

def site_file() -> Path | None:
    """The site file in force: $WHISPER_HPC_SITE, else /etc/whisper-hpc/site.toml, else none."""
    named = os.environ.get(SITE_FILE_VARIABLE)
    if named:
        return Path(named)
    return SYSTEM_SITE_FILE if SYSTEM_SITE_FILE.is_file() else None


def load_site(path: Path | None = None) -> Site:
    """Read and check the site file (or the built-in defaults when there is none)."""
    path = path or site_file()
    if path is None:
        return Site()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SiteError(f"site file {path}: {error.strerror} (set {SITE_FILE_VARIABLE} to a readable site.toml)")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SiteError(f"site file {path} is not valid TOML: {error}")
    return site_from_dict(data, Path(path))


def model_root(site: Site | None = None) -> Path:
    """$WHISPER_MODELS, else the site's model root."""
    named = os.environ.get("WHISPER_MODELS")
    if named:
        return Path(named)
    return (site or load_site()).model_root


# ----- writing it back -------------------------------------------------------------------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return toml_string(str(value))


def toml_string(text: str) -> str:
    """A TOML basic string: quote and backslash escaped, control characters (DEL too) as \\uXXXX."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c for c in escaped) + '"'


def site_toml(site: Site, header: str) -> str:
    """The whole configuration as a site file, each key with its meaning as a comment."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, table_class in TABLES.items():
        lines += ["", f"[{name}]"]
        for f in dataclasses.fields(table_class):
            assignment = f"{f.name} = {toml_value(getattr(getattr(site, name), f.name))}"
            lines.append(f"{assignment:<44} # {f.metadata['meaning']}")
    return "\n".join(lines) + "\n"


def schema() -> dict[str, dict[str, str]]:
    """{table: {key: kind}}: what the wrapper's own reader is tested against."""
    return {name: {f.name: kind_of(typing.get_type_hints(t)[f.name]) for f in dataclasses.fields(t)}
            for name, t in TABLES.items()}
