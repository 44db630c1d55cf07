"""`whisper-hpc FILES... [flags]` transcribes; `whisper-hpc doctor` diagnoses."""

from __future__ import annotations

import sys
from typing import Sequence

from whisper_hpc import runtime
from whisper_hpc.errors import USAGE_EXIT, WhisperHpcError, entry_point, report
from whisper_hpc.options import parse

PROGRAM = "whisper-hpc"


@entry_point(PROGRAM)
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    runtime.make_offline()
    if argv[:1] == ["doctor"]:
        from whisper_hpc.doctor import doctor

        return doctor(argv[1:])
    if not argv:
        from whisper_hpc.options import print_help

        print_help()
        return USAGE_EXIT
    try:
        return transcribe(parse(argv))
    except WhisperHpcError as error:
        return report(PROGRAM, error)
    except KeyboardInterrupt:
        print("whisper-hpc: interrupted; finished transcripts are kept, the current file is not written", file=sys.stderr)
        return 130


def transcribe(arguments) -> int:
    from whisper_hpc.assemble import build_run

    run = build_run(arguments)
    if run is None:
        return USAGE_EXIT
    summary = run()
    print(summary.line(), file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
