"""Render the site's templates (modulefiles, job scripts, Open OnDemand files) from one context.

The templates are package data: whisper_hpc/templates/<folder> is the top-level folder of that
name in a checkout (a link), and a copy of it in an installed wheel.
"""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path

from whisper_hpc.model_store import StagedModel, list_staged, variable_name
from whisper_hpc.site import Site


def template_root() -> Path:
    """The folder the templates are read from (a real folder: the package is never zipped)."""
    return Path(str(resources.files("whisper_hpc") / "templates"))


def template_text(name: str) -> str:
    """A template's text, by its path under the templates folder (e.g. wrapper/singularity_wrapper)."""
    return (resources.files("whisper_hpc") / "templates" / name).read_text(encoding="utf-8")


def environment():
    """A Jinja2 environment that refuses undefined names and offers shell and Lua quoting."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_root())),
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


def render(template: str, context: dict) -> str:
    """Render `template` (a path under the templates folder, e.g. modulefiles/whisper.lua.j2)."""
    return environment().get_template(template).render(**context)
