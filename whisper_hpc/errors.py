"""The one error base: every refusal the user or the admin must act on is a WhisperHpcError.

Each entry point (whisper-hpc, whisper-models, whisper-batch, the install) catches it once,
prints its one-line message behind the program's name and exits with its exit code. How a
program ends on SIGTERM lives here too (`entry_point`).
"""

from __future__ import annotations

import functools
import signal
import sys
import traceback
from typing import Callable

USAGE_EXIT = 2  # a usage or set-up error: nothing was done


class WhisperHpcError(Exception):
    """A message that says what is wrong and what to do, and the exit status it ends with."""

    exit_code = USAGE_EXIT

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


def report(program: str, error: WhisperHpcError) -> int:
    """Print `program: message` on stderr; the exit status to return."""
    print(f"{program}: {error}", file=sys.stderr, flush=True)
    return error.exit_code


def first_line(text: str) -> str:
    """The first non-blank line of a tool's message, stripped ("" when there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


class UsageError(WhisperHpcError):
    """A command line or set-up that cannot work: nothing was done (exit status 2)."""


_terminations: list[int] = []


def unwind_on_sigterm() -> None:
    """SIGTERM (scancel, a time limit, an admin's kill) raises SystemExit(143) where the program
    is, so finally blocks and the atomic writers remove what was half-done."""
    signal.signal(signal.SIGTERM, _unwind)


def _unwind(number: int, frame) -> None:
    _terminations.append(number)
    sys.exit(128 + number)


def termination_status() -> int | None:
    """128 + the signal once SIGTERM arrived, else None. A library may raise its own error in the
    SystemExit's place (torch.save's zip writer raises RuntimeError): the status is still 143."""
    return 128 + _terminations[0] if _terminations else None


def entry_point(program: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a main(): SIGTERM unwinds it and ends it with 143 whatever it returned or raised
    meanwhile; any other unexpected exception prints `program: unexpected error` and its
    traceback, and exits 1."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            unwind_on_sigterm()
            try:
                status = main(*args, **kwargs)
            except Exception:  # noqa: BLE001 - a bug, or a library's error in place of the SystemExit
                if termination_status() is None:
                    print(f"{program}: unexpected error\n" + traceback.format_exc(), file=sys.stderr, flush=True)
                status = 1
            terminated = termination_status()
            return status if terminated is None else terminated

        return wrapped

    return decorate
