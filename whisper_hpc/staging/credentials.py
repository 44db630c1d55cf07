"""The Hugging Face token for gated repositories: read once, handed to huggingface_hub only, never shown.

The token comes from `--token-file FILE` (which must not be readable by every user) or from
$HF_TOKEN. It is removed from this process's environment as soon as it is read, so no child
process inherits it, and every message and log record this process emits is scrubbed of it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from whisper_hpc.errors import WhisperHpcError

TOKEN_VARIABLE = "HF_TOKEN"
HIDDEN = "<hidden token>"


class TokenError(WhisperHpcError):
    """A token that cannot be used; the message never contains the token."""


class Token:
    """A secret that prints as <hidden token>; `reveal()` is for huggingface_hub alone."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return HIDDEN

    __str__ = __repr__


def read_token(token_file: Path | None, environ: dict | None = None) -> Token | None:
    """The token from `token_file` if given, else $HF_TOKEN; $HF_TOKEN is removed from the environment."""
    env = os.environ if environ is None else environ
    from_environment = env.pop(TOKEN_VARIABLE, None)
    os.environ.pop(TOKEN_VARIABLE, None)
    if token_file is not None:
        token = Token(_read_token_file(token_file), f"file {token_file}")
    elif from_environment and from_environment.strip():
        token = Token(from_environment.strip(), f"${TOKEN_VARIABLE}")
    else:
        return None
    redactor.add(token)
    return token


def _read_token_file(path: Path) -> str:
    try:
        info = path.stat()
    except OSError as error:
        raise TokenError(f"token file {path}: {error.strerror}")
    if not stat.S_ISREG(info.st_mode):
        raise TokenError(f"token file {path} is not a regular file")
    if info.st_mode & stat.S_IROTH:
        raise TokenError(
            f"token file {path} is readable by every user (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod 600 {path}` and try again"
        )
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise TokenError(f"token file {path} cannot be read: {getattr(error, 'strerror', None) or error.__class__.__name__}")
    if not text or any(c.isspace() for c in text):
        raise TokenError(f"token file {path} must hold one token on one line")
    return text


class Redactor:
    """Replaces every registered secret in a text with <hidden token>."""

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, token: Token) -> None:
        if token.reveal() not in self._secrets:
            self._secrets.append(token.reveal())

    def __call__(self, text: object) -> str:
        result = str(text)
        for secret in self._secrets:
            result = result.replace(secret, HIDDEN)
        return result


redactor = Redactor()


def scrub_all_logging() -> None:
    """Every log record of every library (huggingface_hub, httpx2, warnings) is scrubbed when it is made."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "scrubs_tokens", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: keep its raw text only
            message = str(record.msg)
        record.msg, record.args = redactor(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redactor("".join(_format_exception(record.exc_info)))
            record.exc_info = None
        return record

    factory.scrubs_tokens = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    logging.captureWarnings(True)


def _format_exception(exc_info) -> list[str]:
    import traceback

    return traceback.format_exception(*exc_info)
