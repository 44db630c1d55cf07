"""The Open OnDemand app: rendered from the site configuration into PREFIX/ondemand/whisper.

Two stages. At install time Jinja2 renders ondemand/*.j2 with what the site decided (staged
models, languages, allowed folders, partition, account, time limit, and the batch tool's sizing
model from whisper_hpc/sizing.py, evaluated for each staged model). The result is
an ordinary OnDemand batch-connect app whose ERB files OnDemand evaluates once per submission:
Ruby code baked into submit.yml.erb and template/*.sh.erb checks every form value against the
baked lists, refuses paths outside the allowed folders, and shell-quotes what reaches bash. Only
submit.yml.erb walks the audio and sizes the job (`job_size` below is the same formula in
Python); it hands the templates what they print through the job's environment (JOB_ENVIRONMENT).

The [ondemand] table of the site file (whisper_hpc/site.py) holds the app's own keys.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from whisper_hpc.inputs import MEDIA_SUFFIXES
from whisper_hpc.languages import LANGUAGES
from whisper_hpc import sizing
from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.files import write_atomically
from whisper_hpc.site import Site
from whisper_hpc.writers import FORMATS

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
# The job's batch report (`whisper-batch report --html`), in the session folder beside output.log
# (not among the transcripts, which the completed view lists and counts).
REPORT_FILE = "report.html"
MAX_HOURS_WHEN_UNLIMITED = 168
# A name Slurm, Lmod and YAML all take literally: no spaces, quotes or shell characters.
SAFE_NAME = re.compile(r"\A[A-Za-z0-9_.+-]{1,64}\Z")
# Each of writers.FORMATS becomes a check box "format_<name>": a plain lowercase word.
FORMAT_NAME = re.compile(r"\A[a-z0-9]{1,16}\Z")
# What each format is, in the check box's label ("Write .docx (Word)"); a format not listed here
# still gets its check box, labelled "Write .<name>".
FORMAT_LABELS = {
    "txt": "plain text",
    "vtt": "subtitles, WebVTT",
    "srt": "subtitles, SubRip",
    "tsv": "table of times and text",
    "json": "everything, with word times",
    "csv": "spreadsheet",
    "docx": "Word",
}
# The longest initial prompt or hotwords text the form accepts, in characters.
MAX_TEXT_LENGTH = 1000


class OnDemandError(WhisperHpcError):
    """A site configuration the app cannot be rendered from; the message names the key."""


# Audio length is guessed from file size before the job starts (no decoder on the web node):
# 8000 bytes per second is 64 kbit/s, lower than any speech recording users bring (mp3 at
# 64-320 kbit/s, 16 kHz wav at 256 kbit/s), so the guess errs towards more time, never less.
BYTES_PER_AUDIO_SECOND = 8000
# Walking a huge folder on the web node must not hang the form: past this, ask for the maximum.
MAX_FILES_SCANNED = 20000
# What submit.yml.erb passes to the job (script: job_environment:, exported by OnDemand's Slurm
# adapter with --export), so that template/*.sh.erb need not walk the audio again.
JOB_ENVIRONMENT = {
    "WHISPER_OOD_AUDIO_FILES": "recordings found at submission (N+ when the walk stopped at N)",
    "WHISPER_OOD_AUDIO_BYTES": "their total size in bytes",
    "WHISPER_OOD_TIME": "the --time asked for, H:MM:SS",
    "WHISPER_OOD_MEM": "the --mem asked for, e.g. 1024M",
}


def model_needs(model: dict, threads: int) -> dict:
    """Memory and speed of one staged model, from the one sizing model (whisper_hpc/sizing.py).

    For each of cpu, cpu_diarize, gpu, gpu_diarize: memory_mb to request, rtf (seconds of work
    per second of audio, pessimistic) and load_seconds.
    """
    parameters, _known = sizing.model_parameters_m(model["name"], Path(model["path"]))
    needs = {}
    for gpu in (False, True):
        for diarize in (False, True):
            workload = sizing.Workload(parameters_m=parameters, gpu=gpu, threads=threads, diarize=diarize)
            key = ("gpu" if gpu else "cpu") + ("_diarize" if diarize else "")
            needs[key] = {  # not rounded: the app must compute what job_size computes, to the bit
                "memory_mb": workload.memory_mb(),
                "rtf": workload.rtf_bound(),
                "load_seconds": workload.load_seconds(),
            }
    return needs


def time_cap(max_seconds: int | None) -> int:
    """The longest --time the app asks for: the site's max_time, or a week when that is unlimited."""
    return max_seconds or MAX_HOURS_WHEN_UNLIMITED * 3600


def job_size(needs: dict, audio_files: int, audio_bytes: int, largest_bytes: int, hours: int,
             max_seconds: int | None, gpu: bool, diarize: bool) -> tuple[int, int]:
    """(--time in seconds, --mem in MB) of one OnDemand job: what submit.yml.erb computes, in Python.

    `needs` is one model's entry of job_policy()["needs"] (model_needs); audio_files, audio_bytes
    and largest_bytes are what the walk of the chosen path found (audio_files reaches
    MAX_FILES_SCANNED when it stopped there); hours is the user's own limit (0: estimate);
    max_seconds is sizing.parse_time of the site's max_time (None: unlimited). The estimate is the
    batch tool's (sizing.Workload.task_seconds with each file's length guessed from its size),
    turned into a limit by sizing.time_limit_seconds. tests/test_ondemand.py checks the Ruby
    against this function, and this function against sizing.
    """
    chosen = needs[("gpu" if gpu else "cpu") + ("_diarize" if diarize else "")]
    cap = time_cap(max_seconds)
    if audio_files >= MAX_FILES_SCANNED:
        wanted = cap  # the walk stopped: the audio may be any length
    else:
        audio_seconds = audio_bytes / BYTES_PER_AUDIO_SECOND
        estimate = chosen["load_seconds"] + audio_files * sizing.PER_FILE_SECONDS + audio_seconds * chosen["rtf"]
        wanted = sizing.time_limit_seconds(estimate, cap)
    seconds = min(hours * 3600 if hours > 0 else wanted, cap)
    memory_mb = chosen["memory_mb"]
    if diarize:
        memory_mb += sizing.waveform_mb(largest_bytes / BYTES_PER_AUDIO_SECOND)
    return seconds, memory_mb


def time_rules() -> dict:
    """How an estimate becomes a --time (sizing.time_limit_seconds), as numbers."""
    return {
        "per_file_seconds": sizing.PER_FILE_SECONDS,
        "floor_seconds": sizing.TIME_FLOOR_SECONDS,
        "margin_seconds": sizing.TASK_MARGIN_SECONDS,
        "margin_fraction": sizing.TASK_MARGIN_FRACTION,
    }


def version_at_least(version: str, wanted: tuple[int, ...]) -> bool:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[: len(wanted)])
    return parts >= wanted


def check_site(site: Site, models: list[dict]) -> list[str]:
    """What the site schema cannot know and the app needs (empty when fine): staged models and
    output formats with plain names."""
    problems = [f"output format '{f}' is not a plain lowercase word the form can offer" for f in FORMATS
                if not FORMAT_NAME.match(f)]
    if not models:
        problems.append(f"no staged models under {site.model_root}: stage one with `whisper-models` before installing the OnDemand app")
    for model in models:
        if not SAFE_NAME.match(model["name"]):
            problems.append(f"model name '{model['name']}' has characters the form cannot offer safely")
    return problems


def job_policy(site: Site, models: list[dict], prefix: Path) -> dict:
    """What the ERB code checks each submission against, as one JSON-ready dict."""
    settings = site.ondemand
    max_seconds = sizing.parse_time(site.slurm.max_time)
    return {
        "models": [m["name"] for m in models],
        "english_only": [m["name"] for m in models if m["english_only"]],
        "languages": sorted(LANGUAGES),
        "tasks": ["transcribe", "translate"],
        "formats": list(FORMATS),
        "media_suffixes": sorted(MEDIA_SUFFIXES),
        "allowed_roots": [os.path.normpath(r) for r in settings.allowed_roots],
        "partition": site.slurm.partition,
        "account": site.slurm.account,
        "gpu_gres": site.slurm.gpu_gres,
        "max_seconds": max_seconds,
        "max_hours": (max_seconds // 3600) if max_seconds else MAX_HOURS_WHEN_UNLIMITED,
        "time_cap_seconds": time_cap(max_seconds),
        "cpus_per_task": settings.cpus_per_task,
        "max_speakers": 20,
        "max_text_length": MAX_TEXT_LENGTH,
        "needs": {m["name"]: model_needs(m, settings.cpus_per_task) for m in models},
        "time": time_rules(),
        "bytes_per_audio_second": BYTES_PER_AUDIO_SECOND,
        "waveform_bytes_per_second": sizing.WAVEFORM_BYTES_PER_SECOND,
        "max_files_scanned": MAX_FILES_SCANNED,
        "modules": {kind: f"{name}/{site.site.module_version}" for kind, name in MODULES.items()},
        "module_path": str(prefix / "modulefiles"),
        "lmod_init": settings.lmod_init,
        "output_folder": "transcripts",
        "report_file": REPORT_FILE,
        "support": site.site.support,
    }


def format_label(name: str) -> str:
    """The check box of one output format: "Write .docx (Word)", or "Write .xyz" for one not in FORMAT_LABELS."""
    return f"Write .{name} ({FORMAT_LABELS[name]})" if name in FORMAT_LABELS else f"Write .{name}"


def ruby_json(value: object) -> str:
    """JSON for a Ruby single-quoted heredoc inside ERB: one line, and no % that could close a tag."""
    return json.dumps(value, ensure_ascii=True, sort_keys=True).replace("%", "\\u0025")


def yaml_scalar(value: object) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is valid YAML) that survives any text."""
    return json.dumps(str(value), ensure_ascii=True)


def app_context(site: Site, models: list[dict], prefix: Path) -> dict:
    settings = site.ondemand
    default_model = site.models.default if site.models.default in {m["name"] for m in models} else models[0]["name"]
    policy = job_policy(site, models, prefix)
    return {
        "site": site,
        "models": models,
        "default_model": default_model,
        "languages": sorted(LANGUAGES.items(), key=lambda item: item[1]),
        "formats": [(f, format_label(f)) for f in FORMATS],
        "policy": policy,
        "policy_json": ruby_json(policy),
        "cluster": settings.cluster,
        "path_selector": version_at_least(settings.ood_version, (3, 1)),
        "auto_attributes": version_at_least(settings.ood_version, (3, 0)),
        "max_hours": policy["max_hours"],
        "allowed_roots": policy["allowed_roots"],
    }


def render_app(site: Site, prefix: Path, models: list[dict] | None = None) -> dict[str, str]:
    """Every file of the app, rendered: {relative path in the app: text}."""
    from whisper_hpc.render import environment, site_context

    staged = site_context(site)["models"] if models is None else models
    problems = check_site(site, staged)
    if problems:
        raise OnDemandError("cannot render the OnDemand app: " + "; ".join(problems))
    env = environment()
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
        write_atomically(target / relative, rendered[relative], mode=mode)
    return target
