"""The one error base: every refusal the user or the admin must act on is a WhisperHpcError.

Each entry point (whisper-hpc, whisper-models, whisper-batch, the install) catches it once,
prints its one-line message behind the program's name and exits with its exit code.
"""

from __future__ import annotations

import sys

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
