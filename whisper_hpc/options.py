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
DEFAULT_BATCH_SIZE = 8
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
  whisper-hpc lecture.mp4 --hotwords "Slurm, Lmod" -f srt --max_line_width 42 --max_line_count 2
  whisper-hpc long.wav --batched True               # faster on long files (turns on the VAD)
  whisper-hpc recordings/ --device cuda             # in a job with 4 GPUs: one worker per GPU
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


def optional_int(value: str) -> int | None:
    return None if str(value).strip().lower() == "none" else int(value)


class ChosenIndex(int):
    """A --device_index typed on the command line. The default, a plain 0, means every GPU the job
    was given (one worker each); a typed number pins that one GPU, as the peers read it."""


def device_indices(value: str) -> int | tuple[int, ...]:
    """--device_index: one GPU number, as whisper-ctranslate2 reads it, or a comma list (0,1,2,3)
    as faster-whisper takes it: one worker per listed GPU."""
    parts = [part.strip() for part in str(value).split(",")]
    try:
        numbers = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a GPU number or a comma list of them (0,1,2,3), got '{value}'") \
            from None
    return ChosenIndex(numbers[0]) if len(numbers) == 1 else tuple(numbers)


# Flags the peers define that whisper-hpc refuses, each with the reason its error gives.
REFUSED_FLAGS = {
    "--hf_token": "whisper-hpc never downloads: an admin stages the diarization pipeline once "
                  "(whisper-models fetch), and --diarize uses it",
    "--live_transcribe": "live transcription from a microphone has no place on a batch compute node; "
                         "record to a file and transcribe that",
    "--live_volume_threshold": "live transcription is not offered on compute nodes (see --live_transcribe)",
    "--live_input_device": "live transcription is not offered on compute nodes (see --live_transcribe)",
    "--live_input_device_sample_rate": "live transcription is not offered on compute nodes (see --live_transcribe)",
}

# Flags whose default differs from a peer's on purpose, with the reason (tests/test_peer_flags.py).
OWN_DEFAULTS = {
    "--model": "no default download exists on a compute node: the site's default model (models.default), "
               "else --model is required",
    "--device": "auto: CUDA when a usable GPU is there, else CPU (what openai-whisper computes at start-up)",
    "--verbose": "off: a batch of thousands of files would flood the Slurm log; a progress line per file instead",
    "--fp16": "None: half precision on CUDA only; openai-whisper's True only warns and falls back on a CPU",
    "--local_files_only": "always True: whisper-hpc only ever uses staged files",
    "--patience": "None, openai-whisper's: the engine's own default (1.0, plain beam search)",
    "--length_penalty": "None, openai-whisper's: the engine's own default (simple length normalisation)",
    "--speaker_num": "None, as --num_speakers: the pipeline finds the number of speakers unless it is given "
                     "(whisper-ctranslate2 assumes 2)",
}


class Refused(argparse.Action):
    """A peer's flag that cannot work here: using it is an error that says why."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise UsageError(f"{option_string} is not supported: {REFUSED_FLAGS[self.option_strings[0]]}")


def build_parser() -> argparse.ArgumentParser:
    from whisper_hpc import __version__

    parser = Parser(
        prog="whisper-hpc",
        description="Transcribe audio and video files with Whisper (faster-whisper or openai-whisper), offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("audio", nargs="*", help="audio or video files, or directories of them")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

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
    inputs.add_argument("--print_colors", type=str2bool, default=False, metavar="BOOL",
                        help="with --verbose on a terminal: colour each word by its confidence (red low, green high)")
    inputs.add_argument("--no_cache", nargs="?", const=True, type=str2bool, default=False, metavar="BOOL",
                        help="transcribe even what the site's result cache holds, and keep nothing there")
    inputs.add_argument("--pretty_json", "-p", type=str2bool, default=False, metavar="BOOL",
                        help="indent the json for people to read (default: one line, as openai-whisper writes it)")

    subtitles = parser.add_argument_group("subtitle layout (srt, vtt; turns on word timestamps)")
    subtitles.add_argument("--max_line_width", type=optional_int, default=None, metavar="N",
                           help="break subtitle lines at N characters")
    subtitles.add_argument("--max_line_count", type=optional_int, default=None, metavar="N",
                           help="at most N lines per subtitle (with --max_line_width)")
    subtitles.add_argument("--max_words_per_line", type=optional_int, default=None, metavar="N",
                           help="at most N words per subtitle line (no effect with --max_line_width)")
    subtitles.add_argument("--highlight_words", type=str2bool, default=False, metavar="BOOL",
                           help="underline each word as it is spoken")

    model = parser.add_argument_group("model and engine")
    model.add_argument("--model", "-m", help="a staged model name (tiny.en, base, large-v3, ...) or a path")
    model.add_argument("--model_directory", metavar="DIR",
                       help="a model directory (whisper-ctranslate2's flag; $tiny_en etc. from the module)")
    model.add_argument("--model_dir", metavar="DIR", help="the model root to look names up in (default: $WHISPER_MODELS)")
    model.add_argument("--local_files_only", type=str2bool, default=True, metavar="BOOL",
                       help="accepted for compatibility: whisper-hpc only ever uses local files")
    model.add_argument("--backend", choices=BACKENDS, default="faster-whisper", help="the engine (default: faster-whisper)")
    model.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto: CUDA only if usable)")
    model.add_argument("--device_index", type=device_indices, default=0, metavar="N[,N...]",
                       help="which GPU, for --device cuda; a list (0,1,2,3) runs one worker per GPU "
                            "(default: every GPU the job was given, one worker each)")
    model.add_argument("--gpu_workers", type=optional_int, default=None, metavar="N",
                       help="worker processes on the GPUs, each with its own model (default: one per GPU; "
                            "more than the GPUs share them in turn; 1: a single process)")
    model.add_argument("--cpu_workers", type=optional_int, default=None, metavar="N",
                       help="on the CPU: worker processes, each with its own model and --threads divided among "
                            "them (default 1; 2 workers of 1 thread beat 1 of 2 on many short files)")
    model.add_argument("--num_workers", type=optional_int, default=None, metavar="N",
                       help="on the CPU with faster-whisper: files transcribed at once in this process, on one "
                            "model whose replicas share its weights, the threads divided among them (default: "
                            "chosen from the files' durations and the threads; 1: one file at a time)")
    model.add_argument("--compute_type", choices=COMPUTE_TYPES, default="auto",
                       help="auto: int8 on CPU, float16 on CUDA (faster-whisper); float32 on CPU (openai-whisper)")
    model.add_argument("--fp16", type=str2bool, default=None, metavar="BOOL",
                       help="openai-whisper: half precision (default: on CUDA only)")
    model.add_argument("--threads", type=optional_int, default=0,
                       help="CPU threads (default: $SLURM_CPUS_PER_TASK, else the CPUs this process may use)")
    model.add_argument("--batched", type=str2bool, default=False, metavar="BOOL",
                       help=f"faster-whisper batched inference (batch size {DEFAULT_BATCH_SIZE} unless --batch_size)")
    model.add_argument("--batch_size", type=optional_int, default=None, metavar="N",
                       help="batched inference with N clips at a time (implies --batched)")

    vad = parser.add_argument_group("voice activity detection (faster-whisper's Silero VAD)")
    vad.add_argument("--vad_filter", type=str2bool, default=False, metavar="BOOL",
                     help="skip silence with the Silero VAD (on by itself with batched inference)")
    vad.add_argument("--vad_threshold", type=float, default=None, metavar="P",
                     help="speech probability above which audio counts as speech (engine default 0.5)")
    vad.add_argument("--vad_min_speech_duration_ms", type=int, default=None, metavar="MS",
                     help="drop speech chunks shorter than this")
    vad.add_argument("--vad_max_speech_duration_s", type=float, default=None, metavar="S",
                     help="split speech chunks longer than this at their last silence")
    vad.add_argument("--vad_min_silence_duration_ms", type=int, default=None, metavar="MS",
                     help="the silence that ends a speech chunk (engine default 2000)")
    vad.add_argument("--vad_speech_pad_ms", type=int, default=None, metavar="MS",
                     help="padding kept on each side of a speech chunk (engine default 400)")

    speakers = parser.add_argument_group("speakers (whisper-diarization)")
    speakers.add_argument("--diarize", type=str2bool, default=False, metavar="BOOL",
                          help="label each word and segment with its speaker (pyannote.audio), and write .rttm")
    speakers.add_argument("--num_speakers", "--speaker_num", type=int, default=None, metavar="N",
                          help="the number of speakers, if known")
    speakers.add_argument("--min_speakers", type=int, default=None, metavar="N", help="at least N speakers")
    speakers.add_argument("--max_speakers", type=int, default=None, metavar="N", help="at most N speakers")
    speakers.add_argument("--speaker_name", default="SPEAKER", metavar="NAME",
                          help="the speakers' label: NAME_00, NAME_01, ... (default: SPEAKER)")
    speakers.add_argument("--diarization_model", metavar="DIR",
                          help="a pyannote pipeline directory or a name under MODEL_ROOT/diarization "
                               "(default: community-1, else the only staged pipeline)")
    speakers.add_argument("--diarization_rttm", metavar="FILE",
                          help="merge this diarization (an RTTM file, or a directory of <name>.rttm) "
                               "instead of running the pipeline")

    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--language", default=None, help="language code or name (default: detect)")
    decoding.add_argument("--multilingual", type=str2bool, default=False, metavar="BOOL",
                          help="faster-whisper: detect the language again for every segment, for "
                               "recordings that switch language")
    decoding.add_argument("--task", choices=("transcribe", "translate"), default="transcribe",
                          help="transcribe, or translate into English")
    decoding.add_argument("--beam_size", type=optional_int, default=5)
    decoding.add_argument("--best_of", type=optional_int, default=5)
    decoding.add_argument("--patience", type=float, default=None)
    decoding.add_argument("--length_penalty", type=float, default=None)
    decoding.add_argument("--repetition_penalty", type=float, default=1.0,
                          help="faster-whisper: > 1 penalises tokens already generated")
    decoding.add_argument("--no_repeat_ngram_size", type=int, default=0,
                          help="faster-whisper: forbid repeating n-grams of this size (0: off)")
    decoding.add_argument("--temperature", type=float, default=0.0)
    decoding.add_argument("--temperature_increment_on_fallback", type=optional_float, default=0.2)
    decoding.add_argument("--prompt_reset_on_temperature", type=float, default=0.5,
                          help="faster-whisper: drop the carried prompt when falling back above this temperature")
    decoding.add_argument("--compression_ratio_threshold", type=optional_float, default=2.4)
    decoding.add_argument("--logprob_threshold", type=optional_float, default=-1.0)
    decoding.add_argument("--no_speech_threshold", type=optional_float, default=0.6)
    decoding.add_argument("--hallucination_silence_threshold", type=optional_float, default=None, metavar="S",
                          help="skip silences longer than S seconds around a likely hallucination "
                               "(turns on word timestamps)")
    decoding.add_argument("--initial_prompt", default=None, help="text that sets vocabulary and style for the start")
    decoding.add_argument("--carry_initial_prompt", type=str2bool, default=False, metavar="BOOL",
                          help="openai-whisper: put --initial_prompt before every window's prompt")
    decoding.add_argument("--prefix", default=None, help="text the first window's transcript starts with")
    decoding.add_argument("--hotwords", default=None,
                          help="faster-whisper: words and names to favour (ComfyUI, Kubernetes, ...)")
    decoding.add_argument("--word_timestamps", type=str2bool, default=False, metavar="BOOL")
    decoding.add_argument("--prepend_punctuations", default="\"'“¿([{-",
                          help="with word timestamps: merge these with the next word")
    decoding.add_argument("--append_punctuations", default="\"'.。,，!！?？:：”)]}、",
                          help="with word timestamps: merge these with the previous word")
    decoding.add_argument("--condition_on_previous_text", type=str2bool, default=True, metavar="BOOL")
    decoding.add_argument("--suppress_tokens", default="-1")
    decoding.add_argument("--suppress_blank", type=str2bool, default=True, metavar="BOOL",
                          help="suppress blank output at the start of each window")
    decoding.add_argument("--clip_timestamps", default="0", metavar="START,END,...",
                          help="transcribe only these stretches, in seconds: start,end,start,end,... "
                               "(the last end defaults to the end of the file)")

    for flag in REFUSED_FLAGS:
        parser.add_argument(flag, action=Refused)
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


def flag_words(flag: str) -> list[str]:
    """`--vad_min-silence_ms=5` -> ['vad', 'min', 'silence', 'ms']."""
    return [w for w in flag.split("=", 1)[0].lstrip("-").lower().replace("-", "_").split("_") if w]


def word_distance(typed: list[str], known: list[str]) -> float:
    """Edit distance over words; a misspelt word costs less than a wrong one."""
    def substitution(a: str, b: str) -> float:
        if a == b:
            return 0.0
        ratio = difflib.SequenceMatcher(None, a, b).ratio()
        return 1.0 - ratio if ratio >= 0.6 else 1.0

    joined = difflib.SequenceMatcher(None, "".join(typed), "".join(known)).ratio()
    if joined >= 0.9:  # the same words run together or split apart: --batchsize, --output_dir
        return 1.0 - joined
    previous = [float(j) for j in range(len(known) + 1)]
    for i, word in enumerate(typed, start=1):
        current = [float(i)]
        for j, other in enumerate(known, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + substitution(word, other)))
        previous = current
    return previous[-1] / max(len(typed), len(known), 1)


def similar_flags(unknown: str, parser: argparse.ArgumentParser, most: int = 3) -> list[str]:
    """The known flags nearest to `unknown` by words (ties all given), or none when nothing is near."""
    typed = flag_words(unknown)
    known = [o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings if o.startswith("--")]
    scored = sorted((word_distance(typed, flag_words(flag)), flag) for flag in known)
    if not scored or scored[0][0] > 0.5:
        return []
    best = scored[0][0]
    return [flag for distance, flag in scored if distance <= best + 1e-9][:most]


def closest_flag(unknown: str, parser: argparse.ArgumentParser) -> str | None:
    found = similar_flags(unknown, parser)
    return found[0] if found else None


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    argv = expand_bare_booleans(list(argv), boolean_flags(parser))
    namespace, unknown = parser.parse_known_args(argv)
    flags = [u for u in unknown if u.startswith("-")]
    if flags:
        suggestions = similar_flags(flags[0], parser)
        hint = f"; did you mean {' or '.join(suggestions)}?" if suggestions else "; see whisper-hpc --help"
        raise UsageError(f"unknown flag {flags[0]}{hint}")
    if unknown:
        namespace.audio.extend(unknown)
    return namespace


def print_help() -> None:
    build_parser().print_help(sys.stdout)
