"""The Open OnDemand app: rendered from the site configuration into PREFIX/ondemand/whisper.

Two stages. At install time Jinja2 renders ondemand/*.j2 with what the site decided (staged
models, languages, allowed folders, partition, account, time limit, and the batch tool's sizing
table from whisper_hpc/batch/plan.py, evaluated for each staged model). The result is
an ordinary OnDemand batch-connect app whose ERB files OnDemand evaluates once per submission:
Ruby code baked into submit.yml.erb and template/script.sh.erb checks every form value against the
baked lists, refuses paths outside the allowed folders, and shell-quotes what reaches bash.

Site keys read here besides the Site fields (all optional, under [ondemand] in site.toml):
    cluster = "*"            OnDemand cluster id(s) the app submits to ("*": every cluster)
    ood_version = "3.1"      3.1+: path_selector widget; 3.0+: auto_queues / auto_accounts
    cpus_per_task = 4        CPU cores a job asks for
    lmod_init = "/usr/share/lmod/lmod/init/bash"   sourced in the job when `module` is missing
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from whisper_hpc.inputs import MEDIA_SUFFIXES
from whisper_hpc.languages import LANGUAGES
from whisper_hpc.site import Site
from whisper_hpc.writers import FORMATS, write_atomically

APP_NAME = "whisper"
# template (relative to the project root) -> file in the installed app, and its mode
APP_FILES: dict[str, tuple[str, int]] = {
    "ondemand/manifest.yml.j2": ("manifest.yml", 0o644),
    "ondemand/form.yml.j2": ("form.yml", 0o644),
    "ondemand/submit.yml.erb.j2": ("submit.yml.erb", 0o644),
    "ondemand/template/before.sh.erb.j2": ("template/before.sh.erb", 0o644),
    # OnDemand forks template/script.sh as a program: it must stay executable after staging
    "ondemand/template/script.sh.erb.j2": ("template/script.sh.erb", 0o755),
    "ondemand/completed.html.erb.j2": ("completed.html.erb", 0o644),
}
MODULES = {"plain": "whisper", "diarization": "whisper-diarization"}
DEFAULT_LMOD_INIT = "/usr/share/lmod/lmod/init/bash"
MAX_HOURS_WHEN_UNLIMITED = 168
# A name Slurm, Lmod and YAML all take literally: no spaces, quotes or shell characters.
SAFE_NAME = re.compile(r"\A[A-Za-z0-9_.+-]{1,64}\Z")
SAFE_GRES = re.compile(r"\A[A-Za-z0-9_.:,-]{1,64}\Z")
SAFE_CLUSTER = re.compile(r"\A[A-Za-z0-9_.*-]{1,64}\Z")


class OnDemandError(Exception):
    """A site configuration the app cannot be rendered from; the message names the key."""


# Audio length is guessed from file size before the job starts (no decoder on the web node):
# 8000 bytes per second is 64 kbit/s, lower than any speech recording users bring (mp3 at
# 64-320 kbit/s, 16 kHz wav at 256 kbit/s), so the guess errs towards more time, never less.
BYTES_PER_AUDIO_SECOND = 8000
# Walking a huge folder on the web node must not hang the form: past this, ask for the maximum.
MAX_FILES_SCANNED = 20000


def parse_slurm_time(text: str) -> int | None:
    """The site's max_time in seconds (None: unlimited), with the batch tool's parser."""
    from whisper_hpc.batch.plan import parse_time

    return parse_time(text)


def model_needs(model: dict, threads: int) -> dict:
    """Memory and speed of one staged model, from the batch tool's sizing table (batch/plan.py).

    For each of cpu, cpu_diarize, gpu, gpu_diarize: memory_mb to request, rtf (seconds of work
    per second of audio, pessimistic) and load_seconds.
    """
    from whisper_hpc.batch import plan

    weights = Path(model["path"]) / "model.bin"
    size = weights.stat().st_size if weights.is_file() else None
    parameters, _known = plan.model_parameters_m(model["name"], size)
    needs = {}
    for gpu in (False, True):
        for diarize in (False, True):
            workload = plan.Workload(parameters_m=parameters, gpu=gpu, threads=threads, diarize=diarize)
            key = ("gpu" if gpu else "cpu") + ("_diarize" if diarize else "")
            needs[key] = {
                "memory_mb": workload.memory_mb(),
                "rtf": round(workload.rtf_bound(), 4),
                "load_seconds": round(workload.load_seconds(), 1),
            }
    return needs


def time_rules() -> dict:
    """How the batch tool turns an estimate into a --time (plan.time_limit_seconds), as numbers."""
    from whisper_hpc.batch import plan

    return {
        "per_file_seconds": plan.PER_FILE_SECONDS,
        "floor_seconds": plan.TIME_FLOOR_SECONDS,
        "margin_seconds": plan.TASK_MARGIN_SECONDS,
        "margin_fraction": plan.TASK_MARGIN_FRACTION,
    }


def ondemand_settings(site: Site) -> dict:
    """The [ondemand] keys that are not Site fields, with their defaults."""
    section = site.raw.get("ondemand", {}) if isinstance(site.raw, dict) else {}
    return {
        "cluster": str(section.get("cluster", "*")),
        "ood_version": str(section.get("ood_version", "3.1")),
        "cpus_per_task": section.get("cpus_per_task", 4),
        "lmod_init": str(section.get("lmod_init", DEFAULT_LMOD_INIT)),
    }


def version_at_least(version: str, wanted: tuple[int, ...]) -> bool:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[: len(wanted)])
    return parts >= wanted


def check_site(site: Site, models: list[dict]) -> list[str]:
    """Every reason the site configuration cannot make a safe, usable app (empty when fine)."""
    problems = []
    if not models:
        problems.append(f"no staged models under {site.model_root}: stage one with `whisper-models` before installing the OnDemand app")
    for model in models:
        if not SAFE_NAME.match(model["name"]):
            problems.append(f"model name '{model['name']}' has characters the form cannot offer safely")
    roots = list(site.allowed_roots)
    if not roots:
        problems.append("[ondemand] allowed_roots is empty: users could pick no audio at all")
    for root in roots:
        if not str(root).startswith("/") or "\n" in str(root):
            problems.append(f"[ondemand] allowed_roots entry '{root}' must be an absolute path")
        elif os.path.normpath(str(root)) == "/":
            problems.append("[ondemand] allowed_roots must not contain / (every file on the system)")
    if not SAFE_NAME.match(site.module_version):
        problems.append(f"[site] module_version '{site.module_version}' is not a plain version such as 0.1.0")
    for key, value in (("[slurm] partition", site.partition), ("[slurm] account", site.account)):
        if value and not SAFE_NAME.match(value):
            problems.append(f"{key} '{value}' is not a plain Slurm name")
    if not SAFE_GRES.match(site.gpu_gres or ""):
        problems.append(f"[slurm] gpu_gres '{site.gpu_gres}' is not a plain gres specification such as gpu:1")
    try:
        parse_slurm_time(site.max_time)
    except ValueError as error:
        problems.append(f"[slurm] max_time: {error}")
    settings = ondemand_settings(site)
    if not SAFE_CLUSTER.match(settings["cluster"]):
        problems.append(f"[ondemand] cluster '{settings['cluster']}' is not a plain cluster id or glob")
    cpus = settings["cpus_per_task"]
    if not isinstance(cpus, int) or isinstance(cpus, bool) or not 1 <= cpus <= 256:
        problems.append(f"[ondemand] cpus_per_task must be a whole number from 1 to 256, not {cpus!r}")
    if not re.fullmatch(r"\d+(\.\d+)*", settings["ood_version"]):
        problems.append(f"[ondemand] ood_version '{settings['ood_version']}' is not a version number such as 3.1")
    if not settings["lmod_init"].startswith("/"):
        problems.append(f"[ondemand] lmod_init '{settings['lmod_init']}' must be an absolute path")
    return problems


def job_policy(site: Site, models: list[dict], prefix: Path) -> dict:
    """What the ERB code checks each submission against, as one JSON-ready dict."""
    settings = ondemand_settings(site)
    max_seconds = parse_slurm_time(site.max_time)
    return {
        "models": [m["name"] for m in models],
        "english_only": [m["name"] for m in models if m["english_only"]],
        "languages": sorted(LANGUAGES),
        "tasks": ["transcribe", "translate"],
        "formats": list(FORMATS),
        "media_suffixes": sorted(MEDIA_SUFFIXES),
        "allowed_roots": [os.path.normpath(str(r)) for r in site.allowed_roots],
        "partition": site.partition,
        "account": site.account,
        "gpu_gres": site.gpu_gres,
        "max_seconds": max_seconds,
        "max_hours": (max_seconds // 3600) if max_seconds else MAX_HOURS_WHEN_UNLIMITED,
        "cpus_per_task": settings["cpus_per_task"],
        "max_speakers": 20,
        "needs": {m["name"]: model_needs(m, settings["cpus_per_task"]) for m in models},
        "time": time_rules(),
        "bytes_per_audio_second": BYTES_PER_AUDIO_SECOND,
        "max_files_scanned": MAX_FILES_SCANNED,
        "modules": {kind: f"{name}/{site.module_version}" for kind, name in MODULES.items()},
        "module_path": str(prefix / "modulefiles"),
        "lmod_init": settings["lmod_init"],
        "output_folder": "transcripts",
        "support": site.support,
    }


def ruby_json(value: object) -> str:
    """JSON for a Ruby single-quoted heredoc inside ERB: one line, and no % that could close a tag."""
    return json.dumps(value, ensure_ascii=True, sort_keys=True).replace("%", "\\u0025")


def yaml_scalar(value: object) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML) that survives any text."""
    return json.dumps(str(value), ensure_ascii=True)


def app_context(site: Site, models: list[dict], prefix: Path) -> dict:
    settings = ondemand_settings(site)
    default_model = site.default_model if site.default_model in {m["name"] for m in models} else models[0]["name"]
    policy = job_policy(site, models, prefix)
    return {
        "site": site,
        "models": models,
        "default_model": default_model,
        "languages": sorted(LANGUAGES.items(), key=lambda item: item[1]),
        "formats": FORMATS,
        "policy": policy,
        "policy_json": ruby_json(policy),
        "cluster": settings["cluster"],
        "path_selector": version_at_least(settings["ood_version"], (3, 1)),
        "auto_attributes": version_at_least(settings["ood_version"], (3, 0)),
        "max_hours": policy["max_hours"],
        "allowed_roots": policy["allowed_roots"],
    }


def render_app(site: Site, prefix: Path, models: list[dict] | None = None) -> dict[str, str]:
    """Every file of the app, rendered: {relative path in the app: text}."""
    from whisper_hpc.render import TEMPLATE_ROOT, environment, site_context

    staged = site_context(site)["models"] if models is None else models
    problems = check_site(site, staged)
    if problems:
        raise OnDemandError("cannot render the OnDemand app: " + "; ".join(problems))
    env = environment(TEMPLATE_ROOT)
    env.filters["yaml"] = yaml_scalar
    context = app_context(site, staged, Path(prefix))
    return {target: env.get_template(template).render(**context) for template, (target, _) in APP_FILES.items()}


def app_dir(prefix: Path) -> Path:
    return Path(prefix) / "ondemand" / APP_NAME


def install(site: Site, prefix: Path, models: list[dict] | None = None, target: Path | None = None) -> Path:
    """Render the app into PREFIX/ondemand/whisper, or `target` (each file written atomically).

    PREFIX is the installation whose modulefiles the jobs load; returns the app's folder.
    """
    rendered = render_app(site, Path(prefix), models)
    target = Path(target) if target else app_dir(Path(prefix))
    for relative, mode in APP_FILES.values():
        write_atomically(target / relative, rendered[relative])
        os.chmod(target / relative, mode)
    return target
