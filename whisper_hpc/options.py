"""The one command line: openai-whisper's flags, whisper-ctranslate2's, and ours.

Only the standard library is imported here, so `whisper-hpc --help` is instant.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Sequence

from whisper_hpc.errors import UsageError
from whisper_hpc.writers import FORMATS, SPEAKER_FORMATS

TRUE_WORDS = ("true", "yes", "y", "on", "1")
FALSE_WORDS = ("false", "no", "n", "off", "0")
BACKENDS = ("faster-whisper", "openai-whisper")
COMPUTE_TYPES = (
    "default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
    "int16", "float16", "bfloat16", "float32",
)

EPILOG = """\
examples:
  whisper-hpc talk.wav --model base --language en
  whisper-hpc recordings/ --model small --output_format srt --output_dir transcripts/
  whisper-hpc --file_list todo.txt --model_directory $small_en --local_files_only True
  whisper-hpc interview.wav --backend openai-whisper --word_timestamps True
  whisper-hpc call.wav --split_channels True        # one transcript per stereo channel
  whisper-hpc meeting.wav --diarize --max_speakers 4 # who spoke when (module whisper-diarization)
  whisper-hpc doctor                                # devices, threads, staged models, offline check

Models are read from $WHISPER_MODELS (or the site configuration); nothing is ever downloaded.
Finished files are skipped on a second run; --overwrite redoes them.
Exit status: 0 all done or skipped, 1 some files failed, 2 usage or set-up error.
"""


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors raised instead of printed-and-exited."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def str2bool(value: str) -> bool:
    lowered = str(value).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def optional_float(value: str) -> float | None:
    return None if str(value).strip().lower() == "none" else float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="whisper-hpc",
        description="Transcribe audio and video files with Whisper (faster-whisper or openai-whisper), offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("audio", nargs="*", help="audio or video files, or directories of them")

    inputs = parser.add_argument_group("inputs and outputs")
    inputs.add_argument("--file_list", metavar="FILE", help="a text file with one input path per line")
    inputs.add_argument("--output_dir", "-o", default=".", help="where transcripts go (default: .)")
    inputs.add_argument(
        "--output_format", "-f", default="all",
        help=f"one of {', '.join(FORMATS + SPEAKER_FORMATS)}, all, or a comma-separated list "
             "(default: all; rttm only with speakers)",
    )
    inputs.add_argument("--skip_existing", type=str2bool, default=True, metavar="BOOL",
                        help="skip files whose transcripts all exist (default: True)")
    inputs.add_argument("--overwrite", type=str2bool, default=False, metavar="BOOL",
                        help="redo files that are already transcribed (default: False)")
    inputs.add_argument("--split_channels", type=str2bool, default=False, metavar="BOOL",
                        help="transcribe each channel of a stereo file separately (.left/.right outputs)")
    inputs.add_argument("--ignore_decode_errors", type=str2bool, default=False, metavar="BOOL",
                        help="transcribe what can be decoded from a damaged file instead of failing it")
    inputs.add_argument("--verbose", type=str2bool, default=False, metavar="BOOL",
                        help="print each segment as it is transcribed")

    model = parser.add_argument_group("model and engine")
    model.add_argument("--model", "-m", help="a staged model name (tiny.en, base, large-v3, ...) or a path")
    model.add_argument("--model_directory", metavar="DIR",
                       help="a model directory (whisper-ctranslate2's flag; $tiny_en etc. from the module)")
    model.add_argument("--model_dir", metavar="DIR", help="the model root to look names up in (default: $WHISPER_MODELS)")
    model.add_argument("--local_files_only", type=str2bool, default=True, metavar="BOOL",
                       help="accepted for compatibility: whisper-hpc only ever uses local files")
    model.add_argument("--backend", choices=BACKENDS, default="faster-whisper", help="the engine (default: faster-whisper)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: CUDA only if usable)")
    model.add_argument("--device_index", type=int, default=0, help="which GPU, for --device cuda")
    model.add_argument("--compute_type", choices=COMPUTE_TYPES, default="default",
                       help="default: int8 on CPU, float16 on CUDA (faster-whisper); float32 on CPU (openai-whisper)")
    model.add_argument("--fp16", type=str2bool, default=None, metavar="BOOL",
                       help="openai-whisper: half precision (default: on CUDA only)")
    model.add_argument("--threads", type=int, default=0,
                       help="CPU threads (default: $SLURM_CPUS_PER_TASK, else the CPUs this process may use)")
    model.add_argument("--batch_size", type=int, default=0,
                       help="faster-whisper batched inference with this batch size (default: off)")
    model.add_argument("--vad_filter", type=str2bool, default=False, metavar="BOOL",
                       help="faster-whisper: skip silence with the Silero VAD")

    speakers = parser.add_argument_group("speakers (whisper-diarization)")
    speakers.add_argument("--diarize", type=str2bool, default=False, metavar="BOOL",
                          help="label each word and segment with its speaker (pyannote.audio), and write .rttm")
    speakers.add_argument("--num_speakers", type=int, default=None, metavar="N", help="the number of speakers, if known")
    speakers.add_argument("--min_speakers", type=int, default=None, metavar="N", help="at least N speakers")
    speakers.add_argument("--max_speakers", type=int, default=None, metavar="N", help="at most N speakers")
    speakers.add_argument("--diarization_model", metavar="DIR",
                          help="a pyannote pipeline directory or a name under MODEL_ROOT/diarization "
                               "(default: community-1, else the only staged pipeline)")
    speakers.add_argument("--diarization_rttm", metavar="FILE",
                          help="merge this diarization (an RTTM file, or a directory of <name>.rttm) "
                               "instead of running the pipeline")

    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--language", default=None, help="language code or name (default: detect)")
    decoding.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                          help="transcribe, or translate into English")
    decoding.add_argument("--beam_size", type=int, default=5)
    decoding.add_argument("--best_of", type=int, default=5)
    decoding.add_argument("--patience", type=float, default=None)
    decoding.add_argument("--length_penalty", type=float, default=None)
    decoding.add_argument("--temperature", type=float, default=0.0)
    decoding.add_argument("--temperature_increment_on_fallback", type=optional_float, default=0.2)
    decoding.add_argument("--compression_ratio_threshold", type=optional_float, default=2.4)
    decoding.add_argument("--logprob_threshold", type=optional_float, default=-1.0)
    decoding.add_argument("--no_speech_threshold", type=optional_float, default=0.6)
    decoding.add_argument("--initial_prompt", default=None)
    decoding.add_argument("--word_timestamps", type=str2bool, default=False, metavar="BOOL")
    decoding.add_argument("--condition_on_previous_text", type=str2bool, default=True, metavar="BOOL")
    decoding.add_argument("--suppress_tokens", default="-1")
    return parser


def boolean_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        if action.type is str2bool
        for option in action.option_strings
    }


def expand_bare_booleans(argv: Sequence[str], flags: set[str]) -> list[str]:
    """`--overwrite` alone means `--overwrite True`; `--overwrite False` keeps its value."""
    expanded: list[str] = []
    for position, token in enumerate(argv):
        if token == "--":
            return expanded + list(argv[position:])
        expanded.append(token)
        if token in flags:
            following = argv[position + 1] if position + 1 < len(argv) else None
            if following is None or following.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
                expanded.append("True")
    return expanded


def split_inputs(argv: Sequence[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """The command line as typed, cut in two: [(flag, its value or None)] and the inputs.

    A flag's value is the next token (or what follows `=`); a bare boolean flag takes the next
    token only when it is a boolean word, as `parse` reads it.
    """
    parser = build_parser()
    booleans = boolean_flags(parser)
    valued = {o for a in parser._actions for o in a.option_strings if a.nargs != 0}
    flags: list[tuple[str, str | None]] = []
    inputs: list[str] = []
    tokens = list(argv)
    position = 0
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token == "--":
            inputs += tokens[position:]
            break
        if not token.startswith("-") or token == "-":
            inputs.append(token)
            continue
        name, equals, value = token.partition("=")
        if equals:
            flags.append((name, value))
            continue
        following = tokens[position] if position < len(tokens) else None
        takes = name in valued and following is not None and (
            name not in booleans or following.strip().lower() in TRUE_WORDS + FALSE_WORDS)
        flags.append((name, following if takes else None))
        position += 1 if takes else 0
    return flags, inputs


def closest_flag(unknown: str, parser: argparse.ArgumentParser) -> str | None:
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    stem = unknown.split("=", 1)[0]
    candidates = difflib.get_close_matches(stem, known, n=1, cutoff=0.5)
    if not candidates:
        # whisper-ctranslate2 and openai-whisper users also type dashes for underscores
        candidates = difflib.get_close_matches(stem.replace("-", "_").replace("__", "--"), known, n=1, cutoff=0.5)
    return candidates[0] if candidates else None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    argv = expand_bare_booleans(list(argv), boolean_flags(parser))
    namespace, unknown = parser.parse_known_args(argv)
    flags = [u for u in unknown if u.startswith("-")]
    if flags:
        suggestion = closest_flag(flags[0], parser)
        hint = f"; did you mean {suggestion}?" if suggestion else "; see whisper-hpc --help"
        raise UsageError(f"unknown flag {flags[0]}{hint}")
    if unknown:
        namespace.audio.extend(unknown)
    return namespace


def print_help() -> None:
    build_parser().print_help(sys.stdout)
