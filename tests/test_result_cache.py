"""The result cache: the same audio with the same settings is transcribed once, by real whisper-hpc runs.

The engine tests transcribe jfk (11 s) with tiny.en; the eviction, damage and permission rules
are also checked on the cache alone, with transcripts made here.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import need
from whisper_hpc import result_cache
from whisper_hpc.result_cache import CacheSettings, Lookup, ResultCache, cache_settings
from whisper_hpc.site import site_from_dict
from whisper_hpc.transcript import Segment, Transcript, Word
from whisper_hpc.writers import FORMATS

TEXT_FORMATS = tuple(f for f in FORMATS if f not in ("json", "docx"))  # docx holds its creation time


def cached_env(cache: Path) -> dict:
    return {result_cache.DIRECTORY_VARIABLE: str(cache)}


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/entries/*/*.json"))


def outputs(folder: Path, stem: str) -> dict[str, bytes]:
    return {fmt: (folder / f"{stem}.{fmt}").read_bytes() for fmt in TEXT_FORMATS}


def loaded_engine(stderr: str) -> bool:
    return "tiny.en on cpu" in stderr


@pytest.fixture
def jfk(shared_data: Path, tmp_path: Path) -> Path:
    source = tmp_path / "in" / "jfk.flac"
    source.parent.mkdir()
    source.write_bytes((shared_data / "jfk.flac").read_bytes())
    return source


# ---- with real transcriptions -------------------------------------------------------------------

@pytest.mark.engine
def test_the_same_audio_under_another_name_is_a_hit_with_identical_outputs(cli, jfk, tmp_path):
    cache = tmp_path / "cache"
    first = cli(str(jfk), "--model", "tiny.en", "-o", str(tmp_path / "one"), env=cached_env(cache), check=True)
    assert loaded_engine(first.stderr) and len(entries(cache)) == 1
    renamed = tmp_path / "in" / "it's $(id) – копия.flac"
    renamed.write_bytes(jfk.read_bytes())
    second = cli(str(renamed), "--model", "tiny.en", "-o", str(tmp_path / "two"), env=cached_env(cache), check=True)
    assert "from the result cache" in second.stderr and not loaded_engine(second.stderr), second.stderr
    assert outputs(tmp_path / "one", "jfk") == outputs(tmp_path / "two", renamed.stem)
    original = json.loads((tmp_path / "one" / "jfk.json").read_text())
    copy = json.loads((tmp_path / "two" / f"{renamed.stem}.json").read_text())
    assert copy["segments"] == original["segments"] and copy["text"] == original["text"]
    assert original["cache"] == {"hit": False, "key": copy["cache"]["key"]}
    assert copy["cache"]["hit"] is True and copy["cache"]["computed"] == original["created"]
    assert copy["source"] == str(renamed)
    entry = json.loads(entries(cache)[0].read_text())
    assert str(jfk) not in json.dumps(entry), "the cache keeps no path of anyone's audio"


@pytest.mark.engine
def test_a_changed_option_is_a_miss_and_no_cache_keeps_out(cli, jfk, tmp_path):
    cache = tmp_path / "cache"
    cli(str(jfk), "--model", "tiny.en", "-o", str(tmp_path / "a"), env=cached_env(cache), check=True)
    changed = cli(str(jfk), "--model", "tiny.en", "--beam_size", "1", "-o", str(tmp_path / "b"), env=cached_env(cache),
                  check=True)
    assert loaded_engine(changed.stderr) and "result cache" not in changed.stderr
    assert len(entries(cache)) == 2
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    ignored = cli(str(jfk), "--model", "tiny.en", "--no_cache", "-o", str(tmp_path / "c"), env=cached_env(cache),
                  check=True)
    assert loaded_engine(ignored.stderr) and "cache" not in json.loads((tmp_path / "c" / "jfk.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before, "--no_cache read or wrote the cache"
    # Formats and the json's layout are not part of the key: a hit is rendered again as the run asks.
    layout = cli(str(jfk), "--model", "tiny.en", "-f", "srt,json", "--pretty_json", "True", "-o", str(tmp_path / "d"),
                 env=cached_env(cache), check=True)
    assert not loaded_engine(layout.stderr) and "from the result cache" in layout.stderr
    assert (tmp_path / "d" / "jfk.json").read_text().startswith('{\n')
    assert (tmp_path / "d" / "jfk.srt").read_text() == (tmp_path / "a" / "jfk.srt").read_text()
    assert sorted(p.suffix for p in (tmp_path / "d").iterdir()) == [".json", ".srt"]


@pytest.mark.engine
def test_a_lossless_re_encoding_is_a_hit_by_its_decoded_samples_and_a_lossy_one_is_not(cli, shared_data, tmp_path):
    cache = tmp_path / "cache"
    wav = shared_data / "sample.wav"  # 16-bit PCM: FLAC keeps every sample
    flac, mp3 = tmp_path / "sample.flac", tmp_path / "sample.mp3"
    for target in (flac, mp3):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), str(target)], check=True)
    assert flac.read_bytes() != wav.read_bytes()
    cli(str(wav), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "wav"), env=cached_env(cache), check=True)
    again = cli(str(flac), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "flac"), env=cached_env(cache),
                check=True)
    assert "from the result cache" in again.stderr and not loaded_engine(again.stderr)
    assert (tmp_path / "flac" / "sample.txt").read_text() == (tmp_path / "wav" / "sample.txt").read_text()
    assert len(list(cache.glob("*/by-file/*/*"))) == 2, "the flac's bytes now lead straight to the entry"
    lossy = cli(str(mp3), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "mp3"), env=cached_env(cache),
                check=True)
    assert loaded_engine(lossy.stderr), "an mp3 has other samples: a miss (docs/result-cache.rst)"


@pytest.mark.engine
def test_a_damaged_entry_is_recomputed(cli, jfk, tmp_path):
    cache = tmp_path / "cache"
    cli(str(jfk), "--model", "tiny.en", "-f", "txt,json", "-o", str(tmp_path / "a"), env=cached_env(cache), check=True)
    entry = entries(cache)[0]
    record = json.loads(entry.read_text())
    record["transcripts"][0]["transcript"]["segments"][0]["text"] = " Ask what you can do for your cache."
    entry.write_text(json.dumps(record))
    again = cli(str(jfk), "--model", "tiny.en", "-f", "txt,json", "-o", str(tmp_path / "b"), env=cached_env(cache),
                check=True)
    assert "is damaged" in again.stderr and "transcribed again" in again.stderr and loaded_engine(again.stderr)
    assert (tmp_path / "b" / "jfk.txt").read_text() == (tmp_path / "a" / "jfk.txt").read_text()
    assert "cache" not in (tmp_path / "b" / "jfk.txt").read_text()
    third = cli(str(jfk), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "c"), env=cached_env(cache),
                check=True)
    assert "from the result cache" in third.stderr, "the recomputed entry is whole again"


@pytest.mark.engine
def test_concurrent_writers_of_one_key_leave_one_valid_entry(cli, jfk, tmp_path):
    cache = tmp_path / "cache"
    results = {}

    def transcribe(name: str) -> None:
        copy = tmp_path / "in" / f"{name}.flac"
        copy.write_bytes(jfk.read_bytes())
        results[name] = cli(str(copy), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / name),
                            env=cached_env(cache))

    threads = [threading.Thread(target=transcribe, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results.values()), [r.stderr for r in results.values()]
    assert len(entries(cache)) == 1 and not list(cache.rglob("*.partial"))
    hit = cli(str(jfk), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "third"), env=cached_env(cache),
              check=True)
    assert "from the result cache" in hit.stderr and "damaged" not in hit.stderr


@pytest.mark.engine
def test_an_unsafe_cache_folder_is_not_used_and_the_run_goes_on(cli, jfk, tmp_path):
    need(os.geteuid() == 0, "giving a folder to another user needs root")
    private = tmp_path / "private"
    planted = private / "root"
    planted.mkdir(parents=True)
    os.chown(planted, 65534, 65534)  # nobody's: they could read and plant this user's transcripts
    run = cli(str(jfk), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "a"), env=cached_env(private), check=True)
    assert "result cache off:" in run.stderr and "belongs to another user" in run.stderr
    assert not list(planted.iterdir())
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    run = cli(str(jfk), "--model", "tiny.en", "-f", "txt", "-o", str(tmp_path / "b"),
              env={**cached_env(shared), result_cache.SHARED_VARIABLE: "1"}, check=True)
    assert "writable by every user" in run.stderr and not list(shared.iterdir())
    assert (tmp_path / "b" / "jfk.txt").read_text().strip()


# ---- the cache alone ----------------------------------------------------------------------------

def transcript(text: str) -> Transcript:
    words = [Word(0.0, 1.0, f" {text}", 0.9)]
    return Transcript(source="/data/x.wav", language="en", language_probability=1.0, duration=1.0,
                      segments=[Segment(0.0, 1.0, f" {text}", words=words, tokens=[1, 2])])


def open_cache(tmp_path: Path, max_bytes: int = 1 << 30, shared: bool = False) -> ResultCache:
    settings = CacheSettings(str(tmp_path / "cache"), shared, max_bytes)
    notices: list[str] = []
    cache = ResultCache.open(settings, {"model": "m"}, notices.append)
    cache.notices = notices
    return cache


def stored(cache: ResultCache, name: str, mtime: float | None = None) -> str:
    found = Lookup(file_sha256=f"file-{name}", start_sha256=f"start-{name}", decoded_sha256=f"audio-{name}")
    key = cache.store(found, [(None, transcript(name))])
    if mtime is not None:
        os.utime(cache.entry_path(key), (mtime, mtime))
    return key


def test_a_stored_transcript_reads_back_whole(tmp_path):
    cache = open_cache(tmp_path)
    original = transcript("hello")
    key = cache.store(Lookup("f", "s", "a"), [(None, original), ("right", transcript("there"))])
    hit = cache.read(key)
    assert [label for label, _ in hit.transcripts] == [None, "right"]
    assert hit.transcripts[0][1] == replace(original, source="")

    def not_decoded():
        raise AssertionError("decoded whole although no entry starts like it")

    assert cache.lookup(Path(__file__), lambda: "other start", not_decoded).hit is None
    assert cache.lookup(Path(__file__), lambda: "s", lambda: "b").hit is None, "same start, other samples: a miss"
    assert cache.lookup(Path(__file__), lambda: "s", lambda: "a").hit.key == key, "other bytes, same samples: a hit"
    assert cache.lookup(Path(__file__), not_decoded, not_decoded).hit.key == key, "now known by its bytes"


def test_the_size_limit_evicts_the_least_recently_used(tmp_path):
    probe = open_cache(tmp_path)
    size = probe.entry_path(stored(probe, "probe")).stat().st_size
    probe.entry_path(probe.entry_key("audio-probe")).unlink()
    cache = open_cache(tmp_path, max_bytes=int(size * 3.5))
    keys = [stored(cache, name, mtime=1_000_000 + number) for number, name in enumerate("abc")]
    assert cache.read(keys[0])  # a is used again: b is now the least recently used
    stored(cache, "d")
    kept = {p.stem for p in entries(tmp_path / "cache")}
    assert keys[1] not in kept and {keys[0], keys[2]} <= kept
    assert sum(p.stat().st_size for p in entries(tmp_path / "cache")) <= cache.max_bytes
    aliases = [p.read_text() for p in (tmp_path / "cache").glob("*/by-file/*/*")]
    assert keys[1] not in aliases and keys[0] in aliases, "an evicted entry's alias goes with it"


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"format": 1}'])
def test_a_damaged_entry_is_removed_with_a_notice(tmp_path, damage):
    cache = open_cache(tmp_path)
    key = stored(cache, "x")
    cache.entry_path(key).write_bytes(damage)
    assert cache.read(key) is None and not cache.entry_path(key).exists()
    assert any("transcribed again" in n for n in cache.notices)


def test_private_and_shared_permissions(tmp_path):
    private = open_cache(tmp_path / "p")
    key = stored(private, "x")
    assert stat.S_IMODE(private.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(private.entry_path(key).stat().st_mode) == 0o600
    group = tmp_path / "g" / "cache"
    group.mkdir(parents=True)
    os.chmod(group, 0o2770)
    shared = open_cache(tmp_path / "g", shared=True)
    key = stored(shared, "y")
    assert shared.root == group
    assert stat.S_IMODE(shared.entry_path(key).stat().st_mode) == 0o660
    assert stat.S_IMODE(shared.entry_path(key).parent.stat().st_mode) == 0o2770


def test_a_missing_shared_folder_turns_the_cache_off_with_a_notice(tmp_path):
    notices: list[str] = []
    settings = CacheSettings(str(tmp_path / "absent"), True, 1 << 30)
    assert ResultCache.open(settings, {"model": "m"}, notices.append) is None
    assert notices and "administrator creates a shared cache" in notices[0]
    assert not (tmp_path / "absent").exists()


def test_settings_come_from_the_wrapper_else_the_site():
    site = site_from_dict({"cache": {"directory": "/scratch/cache", "shared": True, "max_size": "2G"}})
    assert cache_settings(site, {}) == CacheSettings("/scratch/cache", True, 2 << 30)
    assert cache_settings(site, {result_cache.DIRECTORY_VARIABLE: ""}).directory == "", "the site turned it off"
    wrapped = {result_cache.DIRECTORY_VARIABLE: "/x", result_cache.SHARED_VARIABLE: "0",
               result_cache.MAX_SIZE_VARIABLE: "500M"}
    assert cache_settings(site, wrapped) == CacheSettings("/x", False, 500 << 20)


def test_results_with_speakers_from_an_rttm_are_not_cached(tmp_path):
    from whisper_hpc.diarization.source import RttmSpeakers
    from whisper_hpc.engines import DecodeOptions
    from whisper_hpc.model_store import StagedModel

    model = StagedModel("m", tmp_path)
    common = dict(model=model, backend="faster-whisper", device="cpu", compute_type=None, options=DecodeOptions(),
                  split_channels=False, strict_audio=True, window_seconds=600.0)
    assert result_cache.settings_key(**common)["model"]["name"] == "m"
    assert result_cache.settings_key(**common, speakers=RttmSpeakers(tmp_path / "x.rttm", True)) is None
    assert result_cache.settings_key(**common) != result_cache.settings_key(**{**common, "device": "cuda"})


def test_the_wrapper_binds_the_cache_and_the_site_decides_it():
    from test_wrapper import SITE, build, env_passed, pairs, sw

    assert sw.RESULT_CACHE_VARIABLES == result_cache.VARIABLES
    off = build({"WHISPER_HPC_RESULT_CACHE": "/home/me/mine"})[0]
    assert env_passed(off)["WHISPER_HPC_RESULT_CACHE"] == "", "an empty site directory turns it off"
    SITE.update(directory="/cache/whisper", shared=True, max_size="5G")
    try:
        command = build({}, existing=("/home", "/scratch", "/site/models", "/cache/whisper"))[0]
    finally:
        SITE.update(directory="", shared=False, max_size="20G")
    assert "/cache/whisper:/cache/whisper" in pairs(command, "--bind")
    assert {k: v for k, v in env_passed(command).items() if k in result_cache.VARIABLES} == {
        "WHISPER_HPC_RESULT_CACHE": "/cache/whisper", "WHISPER_HPC_RESULT_CACHE_SHARED": "1",
        "WHISPER_HPC_RESULT_CACHE_MAX_SIZE": "5G"}


def test_a_full_cache_disk_is_a_notice_and_the_result_still_stands(tmp_path, monkeypatch):
    import errno

    cache = open_cache(tmp_path)

    def full(path, content, mode=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(result_cache, "write_atomically", full)
    found = Lookup("f", "s", "a")
    assert cache.store(found, [(None, transcript("x"))]) is None
    assert cache.notices == [f"result cache: cannot keep this result in {cache.root} (No space left on device)"]
    assert not entries(tmp_path / "cache")
