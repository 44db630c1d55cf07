"""Find the staged diarization pipeline and check it is complete and local, before loading it.

    ROOT/diarization/<name>/config.yaml   (community-1: ROOT/diarization/community-1/)

Only the standard library and PyYAML: a missing or incomplete pipeline is reported at set-up,
in one line, before any model is loaded. `whisper-models fetch` checks a downloaded pipeline
with the same `check_pipeline`, and stricter rules: pyannote resolves `$model/sub` against the
config's folder, while any other reference would make jobs go online (or read the working
directory), and pyannote imports and calls whatever `preprocessors` names.
"""

from __future__ import annotations

import re
from pathlib import Path

from whisper_hpc.diarization import DiarizationError
from whisper_hpc.errors import first_line

DIARIZATION_DIR = "diarization"
DEFAULT_PIPELINE = "community-1"
CONFIG = "config.yaml"
MODEL_PREFIX = "$model/"
CHECKPOINT = "pytorch_model.bin"
PLDA_FILES = ("xvec_transform.npz", "plda.npz")
MODEL_KEYS = ("segmentation", "embedding", "plda")
# pyannote's own class falls back to community-1 on the hub for any of these left out
PYANNOTE_DIARIZATION = {
    "pyannote.audio.pipelines.SpeakerDiarization",
    "pyannote.audio.pipelines.speaker_diarization.SpeakerDiarization",
}
REQUIRED_KEYS = {
    "whisper_hpc.diarization.agglomerative.AgglomerativeSpeakerDiarization": ("segmentation", "embedding"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?$")
STAGING_HINT = (
    "an administrator stages one with `whisper-models fetch community-1` "
    "(pyannote/speaker-diarization-community-1; a Hugging Face token is needed once, for the download)"
)


def pipelines_root(model_root: Path) -> Path:
    return model_root / DIARIZATION_DIR


def staged_pipelines(model_root: Path) -> list[Path]:
    """Every ROOT/diarization/<name>/ holding a config.yaml, sorted by name."""
    folder = pipelines_root(model_root)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / CONFIG).is_file())


def default_pipeline(model_root: Path) -> Path:
    """community-1 if staged, else the only staged pipeline, else an error naming what is there."""
    preferred = pipelines_root(model_root) / DEFAULT_PIPELINE
    if preferred.is_dir():
        return preferred
    staged = staged_pipelines(model_root)
    if len(staged) == 1:
        return staged[0]
    if not staged:
        raise DiarizationError(
            f"no diarization pipeline is staged in {pipelines_root(model_root)}; {STAGING_HINT}, "
            "or pass --diarization_model DIR"
        )
    names = ", ".join(p.name for p in staged)
    raise DiarizationError(
        f"several diarization pipelines are staged in {pipelines_root(model_root)} ({names}) and none is "
        f"'{DEFAULT_PIPELINE}'; choose one with --diarization_model NAME"
    )


def resolve_pipeline(spec: str | None, model_root: Path) -> Path:
    """--diarization_model: a directory, its config.yaml, or a name under ROOT/diarization/."""
    if not spec:
        return default_pipeline(model_root)
    path = Path(spec).expanduser()
    if path.name == CONFIG and path.is_file():
        return path.parent.resolve()
    if path.is_dir() or "/" in spec or spec.startswith("."):
        return path.resolve() if path.exists() else path
    named = pipelines_root(model_root) / spec
    if named.is_dir():
        return named
    staged = ", ".join(p.name for p in staged_pipelines(model_root)) or "none"
    raise DiarizationError(
        f"--diarization_model {spec}: no such directory, and no pipeline of that name in "
        f"{pipelines_root(model_root)} (staged: {staged}); {STAGING_HINT}"
    )


def read_config(directory: Path, hint: str = STAGING_HINT) -> dict:
    import yaml

    if not directory.is_dir():
        raise DiarizationError(f"diarization pipeline {directory} does not exist; {hint}")
    path = directory / CONFIG
    if not path.is_file():
        raise DiarizationError(f"diarization pipeline {directory} is incomplete: {CONFIG} is missing; {hint}")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DiarizationError(f"{path} cannot be read ({first_line(str(error))}); re-stage the pipeline")
    if not isinstance(config, dict) or not isinstance(config.get("pipeline"), dict) or not config["pipeline"].get("name"):
        raise DiarizationError(f"{path} has no pipeline.name: not a pyannote pipeline configuration")
    return config


def check_pipeline(directory: Path, downloaded: bool = False) -> dict:
    """The pipeline's config, if every model it names is a local file that exists.

    Raises DiarizationError listing every missing file and every reference that would go to
    the Hugging Face hub (which whisper-hpc never contacts). A `downloaded` pipeline (from the
    hub, by whisper-models fetch) must also be pyannote's own code, with every reference inside
    its folder.
    """
    config = read_config(directory, "not a pyannote pipeline repository" if downloaded else STAGING_HINT)
    name = str(config["pipeline"]["name"])
    params = config["pipeline"].get("params") or {}
    if not isinstance(params, dict):
        raise DiarizationError(f"{directory / CONFIG}: pipeline.params must be a mapping")
    problems = []
    if downloaded and not name.startswith("pyannote.audio.pipelines."):
        problems.append(f"pipeline.name {name!r} is not a pyannote.audio pipeline")
    required = REQUIRED_KEYS.get(name, MODEL_KEYS if name in PYANNOTE_DIARIZATION else ())
    for key in required:
        if key not in params:
            problems.append(f"no pipeline.params.{key} entry (pyannote would fetch one from the hub)")
    for key, value in params.items():
        if key in MODEL_KEYS or (isinstance(value, str) and (value.startswith(MODEL_PREFIX) or HUB_ID.match(value))):
            problem = check_reference(directory, key, value, inside_only=downloaded)
            if problem:
                problems.append(problem)
    if downloaded:
        for key, item in (config.get("preprocessors") or {}).items():
            called = str(item.get("name", "")) if isinstance(item, dict) else ""
            if not called.startswith("pyannote."):
                problems.append(f"preprocessors.{key} calls {called!r}, which is not part of pyannote")
    if problems:
        raise DiarizationError(f"diarization pipeline {directory} cannot be used offline: " + "; ".join(problems))
    return config


def check_reference(directory: Path, key: str, value: object, inside_only: bool = False) -> str | None:
    """What is wrong with one model reference in config.yaml, or None."""
    if isinstance(value, dict):
        checkpoint, subfolder = value.get("checkpoint"), value.get("subfolder")
        if not isinstance(checkpoint, str):
            return f"pipeline.params.{key} has no checkpoint path"
        value = checkpoint if not subfolder else f"{checkpoint.rstrip('/')}/{subfolder}"
    if not isinstance(value, str):
        return f"pipeline.params.{key} must be a path, found {type(value).__name__}"
    if value.startswith(MODEL_PREFIX):
        relative = value[len(MODEL_PREFIX):].split("@")[0]
        return missing_files(directory, key, directory / relative, f"{relative}")
    if Path(value).is_absolute():
        if inside_only:
            return f"pipeline.params.{key} = '{value}' is outside the pipeline folder; write {MODEL_PREFIX}..."
        return missing_files(directory, key, Path(value), value)
    if HUB_ID.match(value) and not (Path.cwd() / value).exists():
        return (
            f"pipeline.params.{key} names the Hugging Face hub id '{value}'; whisper-hpc never downloads: "
            f"stage those files in the pipeline folder and write {MODEL_PREFIX}{key}"
        )
    return f"pipeline.params.{key} = '{value}' is relative to the working directory; write {MODEL_PREFIX}..."


def missing_files(directory: Path, key: str, target: Path, shown: str) -> str | None:
    if key == "plda" or (target.is_dir() and any((target / f).exists() for f in PLDA_FILES)):
        wanted = [target / f for f in PLDA_FILES]
    elif target.is_file():
        return None
    else:
        wanted = [target / CHECKPOINT]
    absent = [p for p in wanted if not p.is_file()]
    if not absent:
        return None
    names = ", ".join(str(p.relative_to(directory)) if p.is_relative_to(directory) else str(p) for p in absent)
    return f"{key} is missing ({names})"
