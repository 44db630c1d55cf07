"""The command line (whisper_hpc.options) and the pure set-up helpers (whisper_hpc.assemble)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_hpc.options import (
    FALSE_WORDS,
    TRUE_WORDS,
    UsageError,
    boolean_flags,
    build_parser,
    closest_flag,
    expand_bare_booleans,
    parse,
    str2bool,
)
from whisper_hpc.assemble import output_formats, parse_device, temperatures, writable_directory
from whisper_hpc.writers import FORMATS

BIN = Path(sys.executable).parent
HEAVY = {"torch", "ctranslate2", "whisper", "faster_whisper", "numpy"}


# ----------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    "word, expected",
    [("True", True), ("False", False), ("true", True), ("false", False), ("1", True), ("0", False),
     ("yes", True), ("no", False), ("ON", True), ("off", False), (" y ", True), ("N", False)],
)
def test_word_timestamps_accepts_every_boolean_spelling(word, expected):
    assert parse(["a.wav", "--word_timestamps", word]).word_timestamps is expected


def test_str2bool_rejects_other_words():
    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        str2bool("maybe")


def test_boolean_defaults():
    arguments = parse(["a.wav"])
    assert arguments.overwrite is False
    assert arguments.skip_existing is True
    assert arguments.word_timestamps is False
    assert arguments.local_files_only is True
    assert arguments.fp16 is None


def test_bare_overwrite_means_true():
    assert parse(["a.wav", "--overwrite"]).overwrite is True


def test_overwrite_false_keeps_its_value():
    arguments = parse(["--overwrite", "False", "a.wav"])
    assert arguments.overwrite is False
    assert arguments.audio == ["a.wav"]


def test_file_right_after_bare_boolean_is_still_a_file():
    arguments = parse(["--overwrite", "a.wav"])
    assert arguments.overwrite is True
    assert arguments.audio == ["a.wav"]


def test_bare_boolean_followed_by_another_flag():
    arguments = parse(["--overwrite", "--verbose", "a.wav"])
    assert (arguments.overwrite, arguments.verbose, arguments.audio) == (True, True, ["a.wav"])


def test_bare_boolean_with_equals_value():
    arguments = parse(["--overwrite=False", "a.wav"])
    assert arguments.overwrite is False
    assert arguments.audio == ["a.wav"]


def test_expand_bare_booleans_only_touches_boolean_flags():
    flags = {"--overwrite", "--verbose"}
    assert expand_bare_booleans(["--overwrite"], flags) == ["--overwrite", "True"]
    assert expand_bare_booleans(["--overwrite", "no"], flags) == ["--overwrite", "no"]
    assert expand_bare_booleans(["--overwrite", "x.wav"], flags) == ["--overwrite", "True", "x.wav"]
    assert expand_bare_booleans(["--model", "tiny"], flags) == ["--model", "tiny"]


def test_boolean_flags_are_exactly_the_str2bool_options():
    flags = boolean_flags(build_parser())
    assert {"--overwrite", "--word_timestamps", "--local_files_only", "--skip_existing", "--fp16"} <= flags
    assert "--model" not in flags and "--output_dir" not in flags
    assert set(TRUE_WORDS).isdisjoint(FALSE_WORDS)


def test_double_dash_ends_boolean_expansion():
    arguments = parse(["--", "--overwrite"])
    assert arguments.audio == ["--overwrite"]
    assert arguments.overwrite is False


# ----------------------------------------------------------------------------- unknown flags


def test_misspelt_flag_suggests_model():
    with pytest.raises(UsageError) as error:
        parse(["a.wav", "--modle", "tiny"])
    assert "--modle" in str(error.value)
    assert "--model" in str(error.value).replace("--modle", "")


@pytest.mark.parametrize(
    "typed, meant",
    [("--output-dir", "--output_dir"), ("--output-format", "--output_format"),
     ("--word-timestamps", "--word_timestamps"), ("--model-directory", "--model_directory")],
)
def test_dashes_for_underscores_suggest_the_real_flag(typed, meant):
    with pytest.raises(UsageError, match=f"did you mean {meant}\\?"):
        parse(["a.wav", typed, "x"])


def test_closest_flag_ignores_a_value_after_equals():
    assert closest_flag("--output-dir=out", build_parser()) == "--output_dir"


def test_closest_flag_gives_up_on_nonsense():
    assert closest_flag("--zzzzzzzzzzzzzzzzzzzz", build_parser()) is None
    with pytest.raises(UsageError, match="see whisper-hpc --help"):
        parse(["a.wav", "--zzzzzzzzzzzzzzzzzzzz"])


@pytest.mark.parametrize("abbreviation", ["--mod", "--over", "--word_time", "--output_d"])
def test_abbreviations_are_refused(abbreviation):
    with pytest.raises(UsageError, match=f"unknown flag {abbreviation}"):
        parse(["a.wav", abbreviation, "True"])


def test_bad_choice_is_a_usage_error():
    with pytest.raises(UsageError, match="backend"):
        parse(["a.wav", "--backend", "whisperx"])
    with pytest.raises(UsageError, match="beam_size"):
        parse(["a.wav", "--beam_size", "five"])


def test_bad_boolean_value_after_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="expected True or False"):
        parse(["a.wav", "--overwrite=maybe"])


# ----------------------------------------------------------------------------- files and flags


def test_files_interleaved_with_flags_all_land_in_audio():
    arguments = parse(["a.wav", "--model", "tiny", "b.wav", "--language", "en", "c.wav", "--overwrite", "d.wav"])
    assert arguments.audio == ["a.wav", "b.wav", "c.wav", "d.wav"]
    assert (arguments.model, arguments.language, arguments.overwrite) == ("tiny", "en", True)


def test_files_after_double_dash_may_start_with_a_dash():
    assert parse(["a.wav", "--", "-b.wav", "c.wav"]).audio == ["a.wav", "-b.wav", "c.wav"]


def test_whisper_ctranslate2_style_command_line():
    arguments = parse(["--model_directory", "/models/tiny.en", "--local_files_only", "True", "talk.wav"])
    assert arguments.model_directory == "/models/tiny.en"
    assert arguments.local_files_only is True
    assert arguments.audio == ["talk.wav"]


def test_short_options_and_numbers():
    arguments = parse(["-o", "out", "-f", "srt", "-m", "tiny", "x.wav", "--temperature_increment_on_fallback", "None",
                       "--beam_size", "3", "--device", "cuda:1"])
    assert (arguments.output_dir, arguments.output_format, arguments.model) == ("out", "srt", "tiny")
    assert arguments.temperature_increment_on_fallback is None
    assert arguments.beam_size == 3
    assert arguments.device == "cuda:1"
    assert arguments.audio == ["x.wav"]


# ----------------------------------------------------------------------------- setup helpers


def test_output_formats_all():
    assert output_formats("all") == FORMATS
    assert output_formats("srt,all") == FORMATS


def test_output_formats_list_keeps_order_and_drops_duplicates():
    assert output_formats("srt,vtt") == ("srt", "vtt")
    assert output_formats(" SRT , srt,json") == ("srt", "json")


@pytest.mark.parametrize("value", ["pdf", "srt,pdf", "", " , "])
def test_output_formats_unknown_is_usage_error(value):
    with pytest.raises(UsageError, match="--output_format"):
        output_formats(value)


def test_temperatures_schedule():
    assert temperatures(0, 0.2) == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert temperatures(0, None) == (0.0,)
    assert temperatures(0.4, 0) == (0.4,)
    assert temperatures(0.5, 0.2) == (0.5, 0.7, 0.9)
    assert temperatures(1.0, 0.2) == (1.0,)


@pytest.mark.parametrize("start, increment, expected", [(0, 0.6, (0.0, 0.6)), (0, 0.35, (0.0, 0.35, 0.7))])
def test_temperatures_never_exceed_one(start, increment, expected):
    schedule = temperatures(start, increment)
    assert max(schedule) <= 1.0
    assert schedule == expected


def test_parse_device():
    assert parse_device("cuda:1", 0) == ("cuda", 1)
    assert parse_device("cuda", 3) == ("cuda", 3)
    assert parse_device("CPU", 0) == ("cpu", 0)
    assert parse_device("auto", 0) == ("auto", 0)


def test_parse_device_with_a_gpu_list_and_the_gpus_a_run_names():
    from whisper_hpc.assemble import chosen_gpus

    assert parse_device("cuda", (2, 3)) == ("cuda", 2)
    assert chosen_gpus("cuda", parse(["a.wav", "--device_index", "2,3"]).device_index) == (2, 3)
    assert chosen_gpus("auto", parse(["a.wav"]).device_index) is None
    with pytest.raises(UsageError, match="0 or more"):
        chosen_gpus("cuda", parse(["a.wav", "--device_index", "-1"]).device_index)
    with pytest.raises(UsageError, match="0 or more"):
        chosen_gpus("cuda", parse(["a.wav", "--device_index", "0,-2"]).device_index)


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:-1", "mps", "cuda:1.5", ""])
def test_parse_device_rejects_bad_values(value):
    with pytest.raises(UsageError, match="--device"):
        parse_device(value, 0)


def test_writable_directory_creates_nested(tmp_path):
    target = tmp_path / "a" / "b"
    assert writable_directory(target) == target
    assert target.is_dir()


def test_writable_directory_refuses_a_file_in_the_way(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot create output directory"):
        writable_directory(blocker / "sub")
    with pytest.raises(UsageError, match="cannot create output directory"):
        writable_directory(blocker)


# ----------------------------------------------------------------------------- the installed command


def run(*command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)


def test_help_exits_zero_and_prints_usage():
    result = run(str(BIN / "whisper-hpc"), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: whisper-hpc")
    assert "--model_directory" in result.stdout and "examples:" in result.stdout


def test_no_arguments_prints_usage_and_exits_2():
    result = run(str(BIN / "whisper-hpc"))
    assert result.returncode == 2
    assert "usage: whisper-hpc" in result.stdout


def test_unknown_flag_exits_2_with_suggestion():
    result = run(str(BIN / "whisper-hpc"), "a.wav", "--modle", "tiny")
    assert result.returncode == 2
    assert "did you mean --model?" in result.stderr


def test_help_imports_no_engine_and_no_numpy():
    code = (
        "import sys, io, contextlib\n"
        "from whisper_hpc.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "assert 'usage: whisper-hpc' in out.getvalue()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))\n"
    )
    result = run(sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_import_times_show_no_heavy_module():
    result = run(sys.executable, "-X", "importtime", "-m", "whisper_hpc", "--help")
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "whisper_hpc.options" in imported  # the check itself sees our own imports
    assert {m for m in imported if m.split(".")[0] in HEAVY} == set()


# ----------------------------------------------------------------------------- the peers' flags


@pytest.mark.parametrize("typed, meant", [
    ("--vad_min_silence_ms", "--vad_min_silence_duration_ms"),
    ("--hotword", "--hotwords"),
    ("--batchsize", "--batch_size"),
    ("--max-line-widht", "--max_line_width"),
    ("--speaker-names", "--speaker_name"),
])
def test_did_you_mean_goes_by_words(typed, meant):
    from whisper_hpc.options import similar_flags

    assert similar_flags(typed, build_parser())[0] == meant


def test_did_you_mean_lists_equally_near_flags():
    with pytest.raises(UsageError, match=r"did you mean --vad_filter or --vad_threshold\?"):
        parse(["a.wav", "--vad_onset", "0.5"])


@pytest.mark.parametrize("flag", ["--hf_token", "--live_transcribe", "--live_input_device"])
def test_refused_peer_flags_say_why(flag):
    from whisper_hpc.options import REFUSED_FLAGS

    with pytest.raises(UsageError) as refused:
        parse(["a.wav", flag, "1"])
    assert str(refused.value) == f"{flag} is not supported: {REFUSED_FLAGS[flag]}"


def test_refused_flags_are_not_offered_as_suggestions():
    from whisper_hpc.options import similar_flags

    assert "--hf_token" not in similar_flags("--hf_tokn", build_parser())


@pytest.mark.parametrize("backend, flags, needs", [
    ("openai-whisper", ["--hotwords", "ComfyUI"], "--hotwords needs --backend faster-whisper"),
    ("openai-whisper", ["--vad_threshold", "0.3"], "--vad_threshold needs --backend faster-whisper"),
    ("openai-whisper", ["--batched", "True"], "--batched needs --backend faster-whisper"),
    ("openai-whisper", ["--multilingual", "True"], "--multilingual needs --backend faster-whisper"),
    ("faster-whisper", ["--carry_initial_prompt", "True"], "--carry_initial_prompt needs --backend openai-whisper"),
])
def test_a_flag_one_engine_lacks_names_the_engine_it_needs(backend, flags, needs):
    from whisper_hpc.assemble import check_engine_flags

    with pytest.raises(UsageError, match=needs):
        check_engine_flags(parse(["a.wav", "--backend", backend, *flags]))


def test_flags_both_engines_take_pass_the_engine_check():
    from whisper_hpc.assemble import check_engine_flags

    for backend in ("faster-whisper", "openai-whisper"):
        check_engine_flags(parse(["a.wav", "--backend", backend, "--prefix", "So", "--clip_timestamps", "0,5",
                                  "--hallucination_silence_threshold", "2", "--max_line_width", "30"]))


@pytest.mark.parametrize("value, stretches", [
    ("0", None), ("", None), ("0,30", ((0.0, 30.0),)), ("5", ((5.0, float("inf")),)),
    ("0,10,20", ((0.0, 10.0), (20.0, float("inf")))),
])
def test_clip_timestamps_read_as_openai_whisper_reads_them(value, stretches):
    from whisper_hpc.assemble import clip_stretches

    assert clip_stretches(value) == stretches


@pytest.mark.parametrize("value", ["a,b", "10,5", "0,10,5,20", "-1,3"])
def test_bad_clip_timestamps_are_refused(value):
    from whisper_hpc.assemble import clip_stretches

    with pytest.raises(UsageError, match="--clip_timestamps"):
        clip_stretches(value)


@pytest.mark.parametrize("name", ["", "1st", "has space", "a" * 40, "x;rm", "$(id)"])
def test_bad_speaker_names_are_refused(name):
    from whisper_hpc.assemble import checked_speaker_name

    with pytest.raises(UsageError, match="--speaker_name"):
        checked_speaker_name(name)


def options_for(*flags: str, speakers: bool = False, clips=None):
    from types import SimpleNamespace

    from whisper_hpc.assemble import decode_options

    return decode_options(parse(["a.wav", *flags]), SimpleNamespace(language="en", speakers=speakers, clips=clips))


def test_batch_size_alone_turns_the_vad_on(capsys):
    options = options_for("--batch_size", "8")
    assert (options.batch_size, options.vad_filter) == (8, True)
    assert "turning on --vad_filter" in capsys.readouterr().err


def test_batched_alone_uses_the_default_batch_size():
    from whisper_hpc.options import DEFAULT_BATCH_SIZE

    assert options_for("--batched", "True").batch_size == DEFAULT_BATCH_SIZE
    assert options_for().batch_size == 0


def test_batched_with_clips_keeps_the_vad_off():
    assert options_for("--batch_size", "4", clips=((0.0, 30.0),)).vad_filter is False


def test_any_vad_parameter_turns_the_vad_on_and_is_kept():
    options = options_for("--vad_min_silence_duration_ms", "500")
    assert options.vad_filter is True and options.vad.given() == {"min_silence_duration_ms": 500}


@pytest.mark.parametrize("flags", [["--max_line_width", "40"], ["--highlight_words", "True"],
                                   ["--max_words_per_line", "4"], ["--hallucination_silence_threshold", "2"],
                                   ["--print_colors", "True"]])
def test_flags_that_need_word_timings_turn_them_on(flags, capsys):
    assert options_for(*flags).word_timestamps is True
    assert "turning on --word_timestamps" in capsys.readouterr().err


def test_multilingual_stops_conditioning_on_the_first_language(capsys):
    options = options_for("--multilingual", "True")
    assert options.multilingual is True and options.condition_on_previous_text is False
    assert "--multilingual" in capsys.readouterr().err


def test_the_peers_value_spellings_read_as_they_do():
    arguments = parse(["a.wav", "--beam_size", "None", "--threads", "None", "--batch_size", "None",
                       "--vad_max_speech_duration_s", "30", "-p", "True", "--speaker_num", "3"])
    assert (arguments.beam_size, arguments.threads, arguments.batch_size) == (None, None, None)
    assert arguments.vad_max_speech_duration_s == 30.0 and arguments.pretty_json is True
    assert arguments.num_speakers == 3


def test_version_prints_ours(capsys):
    from whisper_hpc import __version__

    with pytest.raises(SystemExit) as exited:
        parse(["--version"])
    assert exited.value.code == 0 and __version__ in capsys.readouterr().out
