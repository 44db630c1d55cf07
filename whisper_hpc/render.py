"""Render the site's templates (modulefiles, job scripts, Open OnDemand files) from one context."""

from __future__ import annotations

import shlex
from pathlib import Path

from whisper_hpc.model_store import StagedModel, list_staged, variable_name
from whisper_hpc.site import Site

TEMPLATE_ROOT = Path(__file__).resolve().parents[1]


def environment(search_path: Path = TEMPLATE_ROOT):
    """A Jinja2 environment that refuses undefined names and offers shell and Lua quoting."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(search_path)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shell"] = lambda value: shlex.quote(str(value))
    env.filters["lua"] = lua_string
    return env


def lua_string(value: object) -> str:
    """A Lua string literal that cannot be broken out of."""
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def site_context(site: Site, models: list[StagedModel] | None = None) -> dict:
    """Everything a template may use: the site, and the models actually staged."""
    staged = list_staged(site.model_root) if models is None else models
    return {
        "site": site,
        "models": [
            {"name": m.name, "variable": variable_name(m.name), "path": str(m.path), "english_only": m.english_only}
            for m in staged
        ],
    }


def render(template: str, context: dict, search_path: Path = TEMPLATE_ROOT) -> str:
    """Render `template` (a path relative to the project root, e.g. modulefiles/whisper.lua.j2)."""
    return environment(search_path).get_template(template).render(**context)
