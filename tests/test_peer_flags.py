"""Every flag the peers define is ours too: read from openai-whisper's and whisper-ctranslate2's own parsers.

openai-whisper's parser comes from the pinned openai-whisper (`whisper.transcribe.cli`),
whisper-ctranslate2's from its release in requirements/peers.lock, installed without its
dependencies into build/peers/parsers (`make peer-parsers`). Each flag must be accepted by
whisper-hpc with the same type and default, or be one of the refusals (options.REFUSED_FLAGS,
the reason in the error) or of the deliberate defaults (options.OWN_DEFAULTS, with the reason).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from unittest import mock

import pytest

from conftest import ROOT, need
from whisper_hpc.options import OWN_DEFAULTS, REFUSED_FLAGS, UsageError, build_parser, parse

PEER_PARSERS = Path(os.environ.get("PEER_PARSERS", ROOT / "build" / "peers" / "parsers"))
PROBES = ("None", "0", "1", "2", "5", "0.5", "-1", "True", "False", "true", "false", "txt", "srt", "json", "all",
          "en", "de", "English", "German", "tiny", "small", "cpu", "cuda", "auto", "int8", "float16", "translate",
          "ComfyUI, Kubernetes", "0,30,60")


class Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


def captured_parser(build) -> argparse.ArgumentParser:
    """The parser a peer's command-line function builds, taken just before it parses sys.argv."""
    def capture(self, *arguments, **keywords):
        raise Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        try:
            build()
        except Captured as captured:
            return captured.parser
    raise AssertionError(f"{build} returned without parsing its command line")


def openai_whisper_parser() -> argparse.ArgumentParser:
    import importlib

    # `whisper.transcribe` is the function; the module behind it holds `cli`
    return captured_parser(importlib.import_module("whisper.transcribe").cli)


def whisper_ctranslate2_parser() -> argparse.ArgumentParser:
    need((PEER_PARSERS / "whisper_ctranslate2" / "commandline.py").is_file(),
         f"whisper-ctranslate2's parser is not installed in {PEER_PARSERS}; run `make peer-parsers`")
    sys.path.insert(0, str(PEER_PARSERS))
    try:
        from whisper_ctranslate2.commandline import CommandLine
    finally:
        sys.path.remove(str(PEER_PARSERS))
    return captured_parser(CommandLine.read_command_line)


PEERS = {"openai-whisper": openai_whisper_parser, "whisper-ctranslate2": whisper_ctranslate2_parser}


def peer_flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def peer_value(action: argparse.Action, text: str):
    """What the peer makes of `text` for this flag, or a ValueError when it refuses it."""
    try:
        value = action.type(text) if action.type else text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
        raise ValueError(str(error)) from None
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"{text} not among the choices")
    return value


def same(ours, theirs) -> bool:
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs
    if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)):
        return float(ours) == float(theirs)
    return ours == theirs


@pytest.fixture(scope="module", params=sorted(PEERS))
def peer(request) -> tuple[str, argparse.ArgumentParser]:
    return request.param, PEERS[request.param]()


@pytest.fixture(scope="module")
def ours() -> dict[str, argparse.Action]:
    return {option: action for action in build_parser()._actions for option in action.option_strings}


@pytest.mark.engine
def test_the_peers_define_the_flags_users_type(peer):
    """The capture works: a broken capture would pass every other test here on an empty list."""
    name, parser = peer
    flags = {o for a in peer_flags(parser) for o in a.option_strings}
    assert {"--model", "--language", "--word_timestamps", "--output_format", "--max_line_width"} <= flags, name
    assert len(flags) > 30


@pytest.mark.engine
def test_every_peer_flag_is_ours_or_refused_with_its_reason(peer, ours):
    name, parser = peer
    missing = []
    for action in peer_flags(parser):
        for option in action.option_strings:
            if option in REFUSED_FLAGS:
                with pytest.raises(UsageError) as refused:
                    parse(["a.wav", option, "x"])
                assert option in str(refused.value) and REFUSED_FLAGS[option] in str(refused.value)
            elif option not in ours:
                missing.append(option)
    assert not missing, f"{name} flags whisper-hpc does not accept: {missing}"


@pytest.mark.engine
def test_every_peer_flag_has_our_default_or_a_documented_reason(peer, ours):
    name, parser = peer
    differing = []
    for action in peer_flags(parser):
        option = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if option in REFUSED_FLAGS or isinstance(action, argparse._VersionAction):
            continue
        default = ours[option].default
        if not same(default, action.default) and option not in OWN_DEFAULTS:
            differing.append(f"{option}: ours {default!r}, {name}'s {action.default!r}")
    assert not differing, "\n".join(differing)


@pytest.mark.engine
def test_every_peer_flag_reads_values_as_the_peer_does(peer, ours):
    """Each value the peer accepts for a flag, ours accepts and reads as the same value."""
    name, parser = peer
    wrong = []
    for action in peer_flags(parser):
        if action.nargs == 0 or isinstance(action, argparse._VersionAction):
            continue
        for option in action.option_strings:
            if option in REFUSED_FLAGS:
                continue
            for text in PROBES:
                try:
                    theirs = peer_value(action, text)
                except ValueError:
                    continue
                try:
                    value = getattr(parse(["a.wav", option, text]), ours[option].dest)
                except UsageError as error:
                    wrong.append(f"{option} {text}: ours refuses ({error}), {name} reads {theirs!r}")
                    continue
                if not same(value, theirs):
                    wrong.append(f"{option} {text}: ours reads {value!r}, {name} {theirs!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.engine
def test_our_own_defaults_differ_from_some_peer_so_the_list_stays_short(ours):
    peers = [build() for build in PEERS.values()]
    for option in OWN_DEFAULTS:
        theirs = [a.default for p in peers for a in peer_flags(p) if option in a.option_strings]
        assert theirs, f"{option} is in OWN_DEFAULTS but no peer defines it"
        assert any(not same(ours[option].default, d) for d in theirs), f"{option} no longer differs; drop it"


@pytest.mark.engine
def test_peer_choices_pass_our_later_checks(peer):
    """Values the peers offer as choices (languages, formats) also pass whisper-hpc's own checks."""
    from whisper_hpc.assemble import output_formats
    from whisper_hpc.languages import language_code

    name, parser = peer
    for action in peer_flags(parser):
        if "--language" in action.option_strings:
            for choice in action.choices:
                assert language_code(choice), choice
        if "--output_format" in action.option_strings:
            for choice in action.choices:
                assert output_formats(choice)
