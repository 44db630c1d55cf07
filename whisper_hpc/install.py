"""`make install PREFIX=... SITE=site.toml`: lay out one site's installation.

    PREFIX/bin/singularity_wrapper              the container wrapper (stdlib Python)
    PREFIX/bin/whisper-batch                    the batch tool (and whisper-hpc in native mode)
    PREFIX/etc/site.toml                        the site file, with this PREFIX written in
    PREFIX/images/whisper.sif, whisper-diarization.sif   when built (make images)
    PREFIX/modulefiles/whisper/<version>.lua, whisper-diarization/<version>.lua
    PREFIX/slurm/whisper-cpu.sbatch, whisper-gpu.sbatch, whisper-array.sbatch, whisper-finetune.sbatch
    PREFIX/ondemand/...                         the Open OnDemand app (whisper_hpc.ondemand)

Everything is rendered from the one site file and from the models actually staged under its
model root. The batch tool and the native whisper-hpc are links into a Python environment built
from the project's locks (`make venv`; --venv to name another): one environment, not a second
copy of torch per installation.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from whisper_hpc import runtime, sizing
from whisper_hpc.errors import WhisperHpcError, report
from whisper_hpc.files import link_atomically, write_atomically
from whisper_hpc.model_store import list_staged, variable_name
from whisper_hpc.render import render, site_context, template_text
from whisper_hpc.site import PathsTable, Site, load_site, path_problem, site_toml

MODULES = {
    # module name: (template, image file)
    "whisper": ("modulefiles/whisper.lua.j2", "whisper.sif"),
    "whisper-diarization": ("modulefiles/whisper-diarization.lua.j2", "whisper-diarization.sif"),
}
JOB_SCRIPTS = ("whisper-cpu.sbatch", "whisper-gpu.sbatch", "whisper-array.sbatch", "whisper-finetune.sbatch")
ENTRY_POINTS = ("whisper-batch",)            # always: they run on the login node
NATIVE_ENTRY_POINTS = ("whisper-hpc",)       # only when the site runs natively without a container
SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_NAMES = {
    "PATH", "HOME", "USER", "SHELL", "TMPDIR", "LANG", "PWD", "TERM", "MODULEPATH", "LD_LIBRARY_PATH",
    "model_names", "CONTAINER_IMAGE", "CONTAINER_FLAGS", "WHISPER_MODELS", "WHISPER_HPC_SITE",
}
GPU_JOB_CPUS = 2


class InstallError(WhisperHpcError):
    """Something that stops the installation; the message says what to do."""


# ----- the rendering context ------------------------------------------------------------------

def installed_site(site: Site, prefix: Path) -> Site:
    """The site as installed: its prefix is PREFIX (checked as the schema checks [paths] prefix),
    and images live under PREFIX/images unless the site file names another folder."""
    problem = path_problem(str(prefix))
    if problem:
        raise InstallError(f"--prefix must be {problem}, not {str(prefix)!r}")
    paths = site.paths
    images_follow = paths.images in (str(Path(paths.prefix) / "images"), PathsTable().images)
    images = str(prefix / "images") if images_follow else paths.images
    return dataclasses.replace(site, paths=dataclasses.replace(paths, prefix=str(prefix), images=images))


def usable_models(site: Site, warn) -> list:
    """The staged models whose names make usable shell variables, one model per variable. A name
    with a control character is left out too: Lmod writes a line break in a value straight into
    the shell code that `module load` runs."""
    models, taken = [], {}
    for model in list_staged(site.model_root):
        variable = variable_name(model.name)
        if any(ord(c) < 32 or ord(c) == 127 for c in model.name):
            warn(f"model {model.name!r} is staged but its folder name has a control character; rename its folder")
        elif not SHELL_NAME.match(variable) or variable in RESERVED_NAMES:
            warn(f"model {model.name} is staged but ${variable} cannot be a module variable; rename its folder")
        elif variable in taken:
            warn(f"models {taken[variable]} and {model.name} would both be ${variable}; {model.name} is left out")
        else:
            taken[variable] = model.name
            models.append(model)
    return models


def pick_examples(models: list[dict], default: str | None) -> tuple[dict | None, dict | None]:
    """(CPU example model, GPU example model): the site default (else the largest up to medium)
    for CPU, the largest staged model for GPU."""
    if not models:
        return None, None
    ranked = sorted(models, key=lambda m: (m["parameters_m"], m["name"]))
    by_name = {m["name"]: m for m in models}
    cpu_candidates = [m for m in ranked if m["parameters_m"] <= sizing.MODEL_PARAMETERS_M["medium"]]
    cpu = by_name.get(default or "") or (cpu_candidates[-1] if cpu_candidates else ranked[0])
    return cpu, ranked[-1]


def install_context(site: Site, prefix: Path, warn=lambda message: None) -> dict:
    context = site_context(site, usable_models(site, warn))
    advice = sizing.memory_advice()
    for model in context["models"]:  # the rule whisper-batch and the Open OnDemand app size jobs by
        model["parameters_m"], _ = sizing.model_parameters_m(model["name"], Path(model["path"]))
        model["request"] = sizing.workload_memory(model["parameters_m"])
        model["request_openai"] = sizing.workload_memory(model["parameters_m"], "openai-whisper")
    cpu, gpu = pick_examples(context["models"], site.models.default)
    context["install"] = {
        "prefix": str(prefix),
        "bin": str(prefix / "bin"),
        "site_file": str(prefix / "etc" / "site.toml"),
        "modulefiles": str(prefix / "modulefiles"),
        "slurm": str(prefix / "slurm"),
        "images": site.paths.images,
        "version": site.site.module_version,
        "date": datetime.date.today().isoformat(),
        "source": site.described_source(),
        "memory": advice,
        "cpu_model": cpu,
        "gpu_model": gpu,
        "gpu_gres": site.slurm.gpu_gres,
        "ondemand": False,
        "job_time": sizing.format_time(sizing.example_job_seconds(site.slurm.max_time)),
        "cpus": site.slurm.cpus_per_task,
        "gpu_cpus": min(GPU_JOB_CPUS, site.slurm.cpus_per_task),
        "lmod_init": site.ondemand.lmod_init,
        "offline_variables": runtime.OFFLINE_VARIABLES,
        "cache_variables": runtime.CACHE_VARIABLES,
    }
    return context


# ----- files ----------------------------------------------------------------------------------

def installed_site_text(site: Site) -> str:
    header = (f"The site configuration of this installation, written by `make install` from {site.described_source()}.\n"
              "The wrapper, the modules and the batch tool read it (the modules set WHISPER_HPC_SITE).\n"
              "Every key is listed, with its meaning; whisper_hpc/site.py is the schema.")
    return site_toml(site, header)


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
    text = template_text("wrapper/singularity_wrapper")
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
        target = Path(site.paths.images) / image
        if not built.is_file():
            if not target.exists():
                say(f"image {image} not built (make images); the module will point at {target}")
            continue
        if target.exists() and not target.is_symlink() and os.path.samefile(built, target):
            placed.append(target)
            continue
        if link_images:
            link_atomically(built.resolve(), target)
        elif not hard_link_atomically(built, target):
            with built.open("rb") as stream:
                write_atomically(target, lambda out: shutil.copyfileobj(stream, out, 1 << 24), mode=0o644)
        placed.append(target)
    return placed


def hard_link_atomically(source: Path, target: Path) -> bool:
    """Put a hard link to `source` at `target` in one rename; False where the file systems differ."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.link")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        return False
    os.replace(temporary, target)
    return True


def install_entry_points(prefix: Path, venv: Path, native: bool, say) -> None:
    names = ENTRY_POINTS + (NATIVE_ENTRY_POINTS if native else ())
    for name in names:
        program = venv / "bin" / name
        if not program.exists():
            say(f"{name} is not in {venv}/bin (make venv); PREFIX/bin/{name} not installed")
            continue
        link_atomically(program.absolute(), prefix / "bin" / name)


def install_ondemand(site: Site, prefix: Path, models: list[dict], say) -> bool:
    """The Open OnDemand app (whisper_hpc.ondemand); a site it cannot be rendered for gets a notice."""
    from whisper_hpc import ondemand

    try:
        ondemand.install(site, prefix, models)
    except ondemand.OnDemandError as error:
        say(f"Open OnDemand app NOT installed: {error}")
        return False
    return True


def install(site_path: Path | None, prefix: Path | None, images: Path, venv: Path | None = None,
            link_images: bool = False, say=lambda message: print(f"install: {message}", file=sys.stderr)) -> Site:
    """Install everything for the site into prefix; returns the installed site."""
    site = load_site(site_path)
    say(f"site file: {site.described_source()}")
    site = installed_site(site, Path(prefix or site.paths.prefix).absolute())
    prefix = Path(site.paths.prefix)
    if not site.model_root.is_dir():
        say(f"the model root {site.model_root} does not exist: no model variables (make models, or set [paths] model_root)")
    context = install_context(site, prefix, warn=say)
    write_atomically(prefix / "etc" / "site.toml", installed_site_text(site), mode=0o644)
    install_wrapper(prefix)
    install_entry_points(prefix, venv or Path(sys.prefix), site.wrapper.native_fallback, say)
    install_images(site, images, link_images, say)
    context["install"]["ondemand"] = install_ondemand(site, prefix, context["models"], say)
    if not context["models"]:
        say(f"no staged models in {site.model_root}; the modules list none")
    for name, (template, image) in MODULES.items():
        text = render(template, {**context, "module": {"name": name, "image": str(Path(site.paths.images) / image)}})
        write_atomically(prefix / "modulefiles" / name / f"{site.site.module_version}.lua", text, mode=0o644)
    for script in JOB_SCRIPTS:
        write_atomically(prefix / "slurm" / script, render(f"slurm/{script}.j2", context), mode=0o755)
    say(f"installed into {prefix}; users: module use {prefix}/modulefiles; module load whisper")
    return site


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m whisper_hpc.install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=Path, help="where to install (default: the site's [paths] prefix)")
    parser.add_argument("--site", type=Path, help="the site file (default: $WHISPER_HPC_SITE or /etc/whisper-hpc/site.toml)")
    parser.add_argument("--images", type=Path, default=Path("build/images"),
                        help="where `make images` put the .sif files (default: build/images)")
    parser.add_argument("--venv", type=Path, help="the Python environment with whisper-batch (default: this one)")
    parser.add_argument("--link-images", action="store_true", help="symbolic links to the images instead of copies")
    arguments = parser.parse_args(argv)
    try:
        install(arguments.site, arguments.prefix, arguments.images, arguments.venv, arguments.link_images)
    except WhisperHpcError as error:
        return report("install", error)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
