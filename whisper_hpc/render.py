"""Render the site's templates (modulefiles, job scripts, Open OnDemand files) from one context.

The templates are package data: whisper_hpc/templates/<folder> is the top-level folder of that
name in a checkout (a link), and a copy of it in an installed wheel.
"""

from __future__ import annotations

import re
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
    """A Jinja2 environment that refuses undefined names and offers quoting for each place a value
    lands: `shell` (one shell word), `lua` (a Lua string literal), `lua_long` (a Lua long string, for
    a whole text), `comment` (one comment line), `sbatch` (an #SBATCH value) and `variable` (a shell
    variable's name)."""
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
    env.filters["lua_long"] = lua_long_string
    env.filters["comment"] = comment_text
    env.filters["sbatch"] = sbatch_value
    env.filters["variable"] = shell_variable
    return env


LUA_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
COMMENT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
SBATCH_VALUE = re.compile(r"\A[A-Za-z0-9_.:,%+=/@-]*\Z")
SHELL_VARIABLE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def lua_string(value: object) -> str:
    """A Lua string literal that cannot be broken out of: quote and backslash escaped, and every
    control character (a raw line break would end the literal) as an escape sequence."""
    def escaped(c: str) -> str:
        if c in LUA_ESCAPES:
            return LUA_ESCAPES[c]
        return f"\\{ord(c):03d}" if ord(c) < 32 or ord(c) == 127 else c

    return '"' + "".join(escaped(c) for c in str(value)) + '"'


def lua_long_string(text: str, level: int = 2) -> str:
    """A Lua long string ([==[ ... ]==]) holding `text` exactly: its level (the number of '=') is
    the first from `level` up whose closing bracket the text cannot end early. The line break after
    the opening bracket is one Lua drops, so the text starts on the next line."""
    text = str(text)
    while True:
        closing = "]" + "=" * level + "]"
        if (text + closing).find(closing) == len(text):
            return "[" + "=" * level + "[\n" + text + closing
        level += 1


def comment_text(value: object) -> str:
    """The value for a comment line (# in a job script, -- in a modulefile): on one line whatever
    it holds, so a line break in it cannot start a line of code (or an #SBATCH option). Line breaks,
    tabs and other unprintable characters are shown as escapes (\\n, \\x1b, \\u202e); the rest as it is."""
    def shown(c: str) -> str:
        if c in COMMENT_ESCAPES:
            return COMMENT_ESCAPES[c]
        if c == " " or c.isprintable():
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"

    return "".join(shown(c) for c in str(value))


def sbatch_value(value: object) -> str:
    """A value for an #SBATCH line, which sbatch reads up to the line's end and splits at blanks:
    plain characters only (the site schema already insists; this keeps a template honest)."""
    text = str(value)
    if not SBATCH_VALUE.match(text):
        raise ValueError(f"{text!r} cannot be an #SBATCH value")
    return text


def shell_variable(value: object) -> str:
    """A shell variable name, as $NAME or "${NAME}" needs it; anything else is an error."""
    text = str(value)
    if not SHELL_VARIABLE.match(text):
        raise ValueError(f"{text!r} cannot be a shell variable name")
    return text


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
