"""A staged pyannote pipeline must run offline: its config.yaml may only point inside its own folder.

pyannote resolves `$model/sub` against the config's folder; any other model reference (a hub
repository id like `pyannote/segmentation-3.0`) would make jobs go online and fail on compute
nodes. pyannote also imports and calls whatever `preprocessors` name; only pyannote's own are
accepted from a downloaded pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG = "config.yaml"
MODEL_PREFIX = "$model/"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?$")
MODEL_KEYS = ("segmentation", "embedding", "plda")


class PipelineConfigError(Exception):
    """A pipeline folder that would not run offline or would run foreign code."""


def check_pipeline_dir(directory: Path) -> dict:
    """Read `directory/config.yaml` and check that everything it loads is inside `directory`."""
    import yaml

    path = directory / CONFIG
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineConfigError(f"{path} is missing: not a pyannote pipeline repository")
    except (OSError, yaml.YAMLError) as error:
        raise PipelineConfigError(f"{path} cannot be read: {error}")
    if not isinstance(config, dict) or not isinstance(config.get("pipeline"), dict):
        raise PipelineConfigError(f"{path} has no 'pipeline' section")
    problems = []
    name = str(config["pipeline"].get("name", ""))
    if not name.startswith("pyannote.audio.pipelines."):
        problems.append(f"pipeline.name {name!r} is not a pyannote.audio pipeline")
    params = config["pipeline"].get("params") or {}
    for key, value in params.items():
        if not isinstance(value, str):
            continue
        if value.startswith(MODEL_PREFIX):
            target = directory / value[len(MODEL_PREFIX):]
            if not target.exists():
                problems.append(f"pipeline.params.{key} = {value} but {target.relative_to(directory)} was not downloaded")
        elif key in MODEL_KEYS or HUB_ID.match(value):
            problems.append(
                f"pipeline.params.{key} = {value!r} is not a {MODEL_PREFIX}... path inside the pipeline folder "
                "(jobs would look for it in their working directory or on the hub)"
            )
    for key, item in (config.get("preprocessors") or {}).items():
        callable_name = str(item.get("name", "")) if isinstance(item, dict) else ""
        if not callable_name.startswith("pyannote."):
            problems.append(f"preprocessors.{key} calls {callable_name!r}, which is not part of pyannote")
    if problems:
        raise PipelineConfigError(f"{path}: " + "; ".join(problems))
    return config
