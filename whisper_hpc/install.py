"""`make install PREFIX=... SITE=site.toml`: lay out one site's installation.

    PREFIX/bin/singularity_wrapper              the container wrapper (stdlib Python)
    PREFIX/bin/whisper-batch                    the batch tool (and whisper-hpc in native mode)
    PREFIX/etc/site.toml                        the site file, with this PREFIX written in
    PREFIX/images/whisper.sif, whisper-diarization.sif   when built (make images)
    PREFIX/modulefiles/whisper/<version>.lua, whisper-diarization/<version>.lua
    PREFIX/slurm/whisper-cpu.sbatch, whisper-gpu.sbatch, whisper-array.sbatch
    PREFIX/ondemand/...                         the Open OnDemand app (whisper_hpc.ondemand)

Everything is rendered from the one site file and from the models actually staged under its
model root. The batch tool and the native whisper-hpc are links into a Python environment built
from the project's locks (`make venv`; --venv to name another): one environment, not a second
copy of torch per installation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from whisper_hpc.batch import plan
from whisper_hpc.model_store import list_staged, variable_name
from whisper_hpc.render import TEMPLATE_ROOT, render, site_context
from whisper_hpc.site import Site, SiteError, load_site

WRAPPER_SOURCE = TEMPLATE_ROOT / "wrapper" / "singularity_wrapper"
MODULES = {
    # module name: (template, image file, what it adds)
    "whisper": ("modulefiles/whisper.lua.j2", "whisper.sif"),
    "whisper-diarization": ("modulefiles/whisper-diarization.lua.j2", "whisper-diarization.sif"),
}
JOB_SCRIPTS = ("whisper-cpu.sbatch", "whisper-gpu.sbatch", "whisper-array.sbatch")
ENTRY_POINTS = ("whisper-batch",)            # always: they run on the login node
NATIVE_ENTRY_POINTS = ("whisper-hpc",)       # only when the site runs natively without a container
SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_NAMES = {
    "PATH", "HOME", "USER", "SHELL", "TMPDIR", "LANG", "PWD", "TERM", "MODULEPATH", "LD_LIBRARY_PATH",
    "model_names", "CONTAINER_IMAGE", "CONTAINER_FLAGS", "WHISPER_MODELS", "WHISPER_HPC_SITE",
}

# The sizes the module help advises on; memory comes from the batch planner's one table
# (whisper_hpc.batch.plan), measured for tiny and base and extrapolated for the rest.
MODEL_SIZES = ("tiny", "base", "small", "medium", "large", "turbo")
MEASURED_SIZES = ("tiny", "base")
REQUEST_STEPS_GB = (2, 4, 8, 16, 32, 64)
DEFAULT_JOB_SECONDS = 4 * 3600
DEFAULT_JOB_CPUS = 4
DEFAULT_LMOD_INIT = "/usr/share/lmod/lmod/init/bash"
HEADROOM = 1.5


class InstallError(Exception):
    """Something that stops the installation; the message says what to do."""


# ----- memory advice --------------------------------------------------------------------------

def model_size(name: str) -> str | None:
    """tiny.en -> tiny, large-v3 -> large, large-v3-turbo / turbo -> turbo, distil-* -> None."""
    lowered = name.lower()
    if "turbo" in lowered:
        return "turbo"
    if lowered.startswith("distil"):
        return None
    head = re.split(r"[._-]", lowered)[0]
    return head if head in MODEL_SIZES else None


def estimated_mib(size: str) -> tuple[int, int, bool]:
    """(faster-whisper MiB, openai-whisper MiB, measured?) for a model size."""
    parameters = plan.MODEL_PARAMETERS_M[size]
    fast = plan.Workload(parameters).peak_mb()
    openai = plan.Workload(parameters, backend="openai-whisper").peak_mb()
    return round(fast), round(openai), size in MEASURED_SIZES


def memory_request(mib: float) -> str:
    """The --mem to ask for: peak x 1.5, rounded up to 2, 4, 8, 16... GB."""
    wanted = mib * HEADROOM / 1024
    for step in REQUEST_STEPS_GB:
        if wanted <= step:
            return f"{step}G"
    return f"{math.ceil(wanted)}G"


def memory_table() -> list[dict]:
    rows = []
    for size in MODEL_SIZES:
        params = plan.MODEL_PARAMETERS_M[size]
        fast, openai, measured = estimated_mib(size)
        rows.append({
            "size": size, "parameters": f"{params} M", "faster_whisper": f"{fast / 1024:.1f} GB",
            "openai_whisper": f"{openai / 1024:.1f} GB", "how": "measured" if measured else "estimated",
            "request": memory_request(fast), "request_openai": memory_request(openai),
        })
    return rows


def slurm_seconds(text: str) -> int | None:
    """Seconds in a Slurm time ([D-]HH:MM:SS, MM:SS, MM); None for UNLIMITED or empty."""
    text = (text or "").strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, (minutes, seconds) = 0, parts
    else:
        hours, minutes, seconds = parts[-3:]
    return ((int(days) if days else 0) * 24 + hours) * 3600 + minutes * 60 + seconds


def job_time(max_time: str) -> str:
    """The example jobs' --time: four hours, or the site's limit when that is shorter."""
    try:
        limit = slurm_seconds(max_time)
    except ValueError:
        raise InstallError(f"[slurm] max_time '{max_time}' is not a Slurm time such as 24:00:00")
    seconds = DEFAULT_JOB_SECONDS if limit is None else min(limit, DEFAULT_JOB_SECONDS)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def job_cpus(site: Site) -> int:
    """CPU cores per example job: [slurm] cpus_per_task, else 4."""
    value = site.raw.get("slurm", {}).get("cpus_per_task", DEFAULT_JOB_CPUS)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
        raise InstallError(f"[slurm] cpus_per_task must be a whole number of cores, not {value!r}")
    return value


# ----- the rendering context ------------------------------------------------------------------

def installed_site(site: Site, prefix: Path) -> Site:
    """The site as installed: its prefix is PREFIX, and images live under PREFIX/images unless
    the site file names another folder."""
    from dataclasses import replace

    images = prefix / "images" if site.images == site.prefix / "images" else site.images
    return replace(site, prefix=prefix, images=images)


def usable_models(site: Site, warn) -> list:
    """The staged models whose names make usable shell variables."""
    models = []
    for model in list_staged(site.model_root):
        variable = variable_name(model.name)
        if not SHELL_NAME.match(variable) or variable in RESERVED_NAMES:
            warn(f"model {model.name} is staged but ${variable} cannot be a module variable; rename its folder")
            continue
        models.append(model)
    return models


def pick_examples(models: list[dict], default: str | None) -> tuple[dict | None, dict | None]:
    """(CPU example model, GPU example model): the site default (else the largest up to medium)
    for CPU, the largest staged model for GPU."""
    if not models:
        return None, None
    order = list(MODEL_SIZES)
    rank = lambda m: order.index(model_size(m["name"])) if model_size(m["name"]) else -1  # noqa: E731
    ranked = sorted(models, key=lambda m: (rank(m), m["name"]))
    by_name = {m["name"]: m for m in models}
    cpu_candidates = [m for m in ranked if rank(m) <= order.index("medium")]
    cpu = by_name.get(default or "") or (cpu_candidates[-1] if cpu_candidates else ranked[0])
    return cpu, ranked[-1]


def install_context(site: Site, prefix: Path, warn=lambda message: None) -> dict:
    context = site_context(site, usable_models(site, warn))
    table = {row["size"]: row for row in memory_table()}
    for model in context["models"]:
        size = model_size(model["name"])
        model["size"] = size or "unknown"
        model["request"] = table[size]["request"] if size else "4G"
        model["request_openai"] = table[size]["request_openai"] if size else "8G"
    cpu, gpu = pick_examples(context["models"], site.default_model)
    context["install"] = {
        "prefix": str(prefix),
        "bin": str(prefix / "bin"),
        "site_file": str(prefix / "etc" / "site.toml"),
        "modulefiles": str(prefix / "modulefiles"),
        "slurm": str(prefix / "slurm"),
        "images": str(site.images),
        "version": site.module_version,
        "date": datetime.date.today().isoformat(),
        "source": str(site.source) if site.source else "built-in defaults",
        "memory": memory_table(),
        "cpu_model": cpu,
        "gpu_model": gpu,
        "gpu_gres": site.gpu_gres or "gpu:1",
        "ondemand": False,
        "job_time": job_time(site.max_time),
        "cpus": job_cpus(site),
        "gpu_cpus": min(2, job_cpus(site)),
        "lmod_init": site.raw.get("ondemand", {}).get("lmod_init", DEFAULT_LMOD_INIT),
    }
    return context


# ----- files ----------------------------------------------------------------------------------

def write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.chmod(mode)
    os.replace(partial, path)


def link(target: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    partial.symlink_to(target)
    os.replace(partial, path)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


def toml_text(data: dict, header: str) -> str:
    """The site file back as TOML (tables of scalars and lists, as site.example.toml has)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in data.items():
        if not isinstance(values, dict):
            lines.insert(len(header.splitlines()), f"{toml_key(section)} = {toml_value(values)}")
            continue
        lines += ["", f"[{toml_key(section)}]"]
        for key, value in values.items():
            if isinstance(value, dict):
                raise InstallError(f"site file: nested table [{section}.{key}] is not supported")
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def installed_site_text(site: Site) -> str:
    data = {name: dict(values) if isinstance(values, dict) else values for name, values in site.raw.items()}
    paths = data.setdefault("paths", {})
    paths["prefix"] = str(site.prefix)
    paths["images"] = str(site.images)
    paths["model_root"] = str(site.model_root)
    header = (f"The site configuration of this installation, written by `make install` from {site.source or 'defaults'}.\n"
              "The wrapper, the modules and the batch tool read it (the modules set WHISPER_HPC_SITE).")
    return toml_text(data, header)


def host_python() -> str:
    """A Python >= 3.11 for the wrapper (it needs tomllib): the system one if new enough."""
    for candidate in ("/usr/bin/python3", getattr(sys, "_base_executable", sys.executable)):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                               capture_output=True, text=True)
        if probe.stdout.strip() == "True":
            return candidate
    raise InstallError("the wrapper needs Python 3.11 or newer; none found at /usr/bin/python3")


def install_wrapper(prefix: Path) -> Path:
    """The wrapper with its interpreter fixed (-I: no PYTHONPATH or user site can break it)."""
    text = WRAPPER_SOURCE.read_text(encoding="utf-8")
    body = text.split("\n", 1)[1] if text.startswith("#!") else text
    target = prefix / "bin" / "singularity_wrapper"
    write_atomically(target, f"#!{host_python()} -I\n{body}", mode=0o755)
    return target


def install_images(site: Site, source: Path, link_images: bool, say) -> list[Path]:
    """Images from `source` (build/images) into the site's image folder: a hard link when the
    file systems allow, else a copy (or a symbolic link with link_images)."""
    placed = []
    for _, image in MODULES.values():
        built = source / image
        target = site.images / image
        if not built.is_file():
            if not target.exists():
                say(f"image {image} not built (make images); the module will point at {target}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and not target.is_symlink() and os.path.samefile(built, target):
            placed.append(target)
            continue
        if link_images:
            link(built.resolve(), target)
        else:
            partial = target.with_name(f".{target.name}.partial")
            partial.unlink(missing_ok=True)
            try:
                os.link(built, partial)
            except OSError:
                shutil.copy2(built, partial)
            os.replace(partial, target)
        placed.append(target)
    return placed


def install_entry_points(prefix: Path, venv: Path, native: bool, say) -> None:
    names = ENTRY_POINTS + (NATIVE_ENTRY_POINTS if native else ())
    for name in names:
        program = venv / "bin" / name
        if not program.exists():
            say(f"{name} is not in {venv}/bin (make venv); PREFIX/bin/{name} not installed")
            continue
        link(program.absolute(), prefix / "bin" / name)


def install_ondemand(site: Site, prefix: Path, models: list[dict], say) -> bool:
    """The Open OnDemand app via whisper_hpc.ondemand.install, when this checkout has it."""
    try:
        from whisper_hpc import ondemand
    except ImportError:
        say("the Open OnDemand app is not part of this checkout; skipped")
        return False
    try:
        ondemand.install(site, prefix, models)
    except getattr(ondemand, "OnDemandError", ()) as error:
        say(f"Open OnDemand app NOT installed: {error}")
        return False
    return True


def install(site_path: Path | None, prefix: Path | None, images: Path, venv: Path | None = None,
            link_images: bool = False, say=lambda message: print(f"install: {message}", file=sys.stderr)) -> Site:
    """Install everything for the site into prefix; returns the installed site."""
    try:
        site = load_site(site_path)
        site = installed_site(site, (prefix or site.prefix).absolute())
    except SiteError as error:
        raise InstallError(str(error))
    prefix = site.prefix
    if not site.model_root.is_dir():
        say(f"the model root {site.model_root} does not exist: no model variables (make models, or set [paths] model_root)")
    write_atomically(prefix / "etc" / "site.toml", installed_site_text(site))
    install_wrapper(prefix)
    install_entry_points(prefix, venv or Path(sys.prefix), site.native_fallback, say)
    install_images(site, images, link_images, say)
    context = install_context(site, prefix, warn=say)
    context["install"]["ondemand"] = install_ondemand(site, prefix, context["models"], say)
    if not context["models"]:
        say(f"no staged models in {site.model_root}; the modules list none")
    for name, (template, image) in MODULES.items():
        text = render(template, {**context, "module": {"name": name, "image": str(site.images / image)}})
        write_atomically(prefix / "modulefiles" / name / f"{site.module_version}.lua", text)
    for script in JOB_SCRIPTS:
        write_atomically(prefix / "slurm" / script, render(f"slurm/{script}.j2", context), mode=0o755)
    say(f"installed into {prefix}; users: module use {prefix}/modulefiles; module load whisper")
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whisper_hpc.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, help="where to install (default: the site's [paths] prefix)")
    parser.add_argument("--site", type=Path, help="the site file (default: $WHISPER_HPC_SITE or /etc/whisper-hpc/site.toml)")
    parser.add_argument("--images", type=Path, default=TEMPLATE_ROOT / "build" / "images",
                        help="where `make images` put the .sif files (default: build/images)")
    parser.add_argument("--venv", type=Path, help="the Python environment with whisper-batch (default: this one)")
    parser.add_argument("--link-images", action="store_true", help="symbolic links to the images instead of copies")
    arguments = parser.parse_args(argv)
    try:
        install(arguments.site, arguments.prefix, arguments.images, arguments.venv, arguments.link_images)
    except InstallError as error:
        print(f"install: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
