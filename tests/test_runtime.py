"""Process set-up (whisper_hpc.runtime) and language names (whisper_hpc.languages)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from whisper_hpc import runtime
from whisper_hpc.languages import ALIASES, LANGUAGES, language_code
from whisper_hpc.runtime import (
    CACHE_VARIABLES,
    OFFLINE_VARIABLES,
    THREAD_VARIABLES,
    RunDirectory,
    available_cpus,
    make_offline,
    pin_threads,
)


# ----------------------------------------------------------------------------- CPUs and threads


def test_available_cpus_honours_slurm_within_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "7")
    assert available_cpus() == 7
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", " 3 ")
    assert available_cpus() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "99999")
    assert available_cpus() == 16


@pytest.mark.parametrize("value", [None, "", "0", "abc", "-4", "2.5"])
def test_available_cpus_falls_back_to_affinity(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", value)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert available_cpus() == 3


def test_available_cpus_without_affinity(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)

    def refused(pid):
        raise OSError("not allowed")

    monkeypatch.setattr(runtime.os, "sched_getaffinity", refused, raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: None)
    assert available_cpus() == 1


def test_pin_threads_sets_every_pool():
    env: dict[str, str] = {"OMP_NUM_THREADS": "64", "UNRELATED": "x"}
    pin_threads(6, env)
    assert {name: env[name] for name in THREAD_VARIABLES} == {
        "OMP_NUM_THREADS": "6", "MKL_NUM_THREADS": "6", "OPENBLAS_NUM_THREADS": "6",
        "NUMEXPR_NUM_THREADS": "6", "VECLIB_MAXIMUM_THREADS": "6", "CT2_INTER_THREADS": "1",
    }
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["UNRELATED"] == "x"
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    pin_threads(2, mine)
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE"  # a user's own choice stands
    assert env["UNRELATED"] == "x"


def test_make_offline_sets_hub_variables():
    env = {"HF_HUB_OFFLINE": "0", "HOME": "/home/me"}
    make_offline(env)
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert env["HOME"] == "/home/me"
    assert all(env[k] == v for k, v in OFFLINE_VARIABLES.items())


def test_make_offline_defaults_to_the_process_environment(monkeypatch):
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    make_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


# ----------------------------------------------------------------------------- run directory


def test_run_directory_removes_itself(tmp_path):
    with RunDirectory(str(tmp_path)) as run:
        path = run.path
        assert path.is_dir() and path.parent == tmp_path and path.name.startswith("whisper-hpc-")
        (path / "nested" / "deeper").mkdir(parents=True)
        (path / "nested" / "deeper" / "cache.bin").write_bytes(b"x" * 100)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_run_directory_removes_itself_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with RunDirectory(str(tmp_path)) as run:
            path = run.path
            raise RuntimeError("boom")
    assert not path.exists()


def test_run_directory_parent_from_environment(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("WHISPER_HPC_TMPDIR", str(tmp_path / "mine"))
    with RunDirectory() as run:
        assert run.path.parent == tmp_path / "mine"
    monkeypatch.delenv("WHISPER_HPC_TMPDIR")
    with RunDirectory() as run:
        assert run.path.parent == tmp_path / "tmp"


def test_point_caches_here(tmp_path):
    env: dict[str, str] = {}
    with RunDirectory(str(tmp_path)) as run:
        run.point_caches_here(env)
        assert set(env) == {*CACHE_VARIABLES, "TMPDIR"}
        assert Path(env["TMPDIR"]) == run.path / "tmp" and Path(env["TMPDIR"]).is_dir()
        for name, relative in CACHE_VARIABLES.items():
            assert Path(env[name]) == run.path / relative
            assert Path(env[name]).is_dir()
    assert not Path(env["HF_HOME"]).exists()


def test_start_run_is_created_once_and_cleaned_at_exit(tmp_path, monkeypatch):
    registered = []
    monkeypatch.setattr(runtime, "_current_run", None)
    monkeypatch.setattr(runtime.atexit, "register", registered.append)
    monkeypatch.setattr(runtime.tempfile, "tempdir", None)
    monkeypatch.setenv("WHISPER_HPC_TMPDIR", str(tmp_path))
    for name in [*CACHE_VARIABLES, "TMPDIR"]:
        monkeypatch.setenv(name, "/should/be/replaced")
    run = runtime.start_run()
    assert runtime.start_run() is run
    assert runtime.run_scratch() == run.path
    assert run.path.parent == tmp_path
    assert Path(os.environ["HF_HOME"]) == run.path / "cache" / "huggingface"
    assert Path(runtime.tempfile.gettempdir()) == run.path / "tmp"  # libraries' temp files land inside
    assert len(registered) == 1
    registered[0]()
    assert not run.path.exists()


# ----------------------------------------------------------------------------- languages


@pytest.mark.parametrize(
    "value, code",
    [("German", "de"), ("german", "de"), ("de", "de"), (" EN ", "en"), ("haitian creole", "ht"),
     ("Mandarin", "zh"), ("castilian", "es"), ("yue", "yue")],
)
def test_language_code(value, code):
    assert language_code(value) == code


@pytest.mark.parametrize("value", [None, "auto", "AUTO", "", "  ", "none"])
def test_language_detect(value):
    assert language_code(value) is None


@pytest.mark.parametrize("value", ["klingon", "xx", "deutsch"])
def test_unknown_language(value):
    with pytest.raises(ValueError, match=f"unknown language '{value}'"):
        language_code(value)


def openai_whisper_languages() -> dict[str, str]:
    """openai-whisper's own table (whisper/tokenizer.py's LANGUAGES), read without importing torch."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("whisper")
    source = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "LANGUAGES" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"no LANGUAGES table in {source}")


def test_language_table_is_consistent():
    assert LANGUAGES == openai_whisper_languages()  # the pinned engine's languages, no more, no fewer
    assert all(code == code.lower() and name == name.lower() for code, name in LANGUAGES.items())
    assert set(ALIASES.values()) <= set(LANGUAGES)
    assert len(set(LANGUAGES.values())) == len(LANGUAGES)


def test_release_freed_memory_returns_fragmented_heap_to_the_system():
    """What transcribe_file calls after each window: freed memory stops counting as resident."""
    program = """
import sys
from whisper_hpc import runtime

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

blocks = [bytes(4000) for _ in range(50_000)]       # ~200 MB of heap, in chunks below mmap's threshold
kept = blocks[::16]                                 # a live chunk every 64 kB: the heap cannot shrink from its top
del blocks
before = resident_mb()
runtime.release_freed_memory()
print(before, resident_mb())
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    before, after = map(float, result.stdout.split())
    assert before > 150 and after < before - 100, (before, after)


ARENAS_OF_A_THREAD = """
import threading
from whisper_hpc import runtime

runtime.one_malloc_arena()
kept = []
thread = threading.Thread(target=lambda: kept.extend(bytes(4000) for _ in range(2000)))
thread.start()
thread.join()
runtime.glibc().malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.parametrize("given, arenas", [(None, 1), ("4", 2)])
def test_one_malloc_arena_unless_the_user_set_one(given, arenas):
    """A thread's allocations land in the main arena; a MALLOC_ARENA_MAX the user set is kept."""
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    if given is not None:
        env["MALLOC_ARENA_MAX"] = given
    result = subprocess.run([sys.executable, "-c", ARENAS_OF_A_THREAD], env=env, capture_output=True, text=True,
                            check=True)
    assert result.stderr.count("Arena ") == arenas, result.stderr
