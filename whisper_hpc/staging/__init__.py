"""Model staging for administrators: the catalogue, fetch, verify, convert, import-package, remove.

The `whisper-models` command is `whisper_hpc.staging:main` (see cli.py).
"""

from whisper_hpc.staging.cli import main

__all__ = ["main"]
