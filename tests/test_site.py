"""The typed site schema: hostile site files refused everywhere, the wrapper and the example in step."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from conftest import ROOT
from test_wrapper import WRAPPER, sw
from whisper_hpc import site as schema
from whisper_hpc.site import Site, SiteError, load_site, site_from_dict, site_toml

# (what the admin wrote, a pattern the one-line refusal must match)
HOSTILE = [
    ('[wrapper]\ndata_areas = "/home"\n', r"\[wrapper\] data_areas must be a list of absolute paths, not the string '/home'"),
    ('[wrapper]\ndata_areas = ["/"]\n', r"\[wrapper\] data_areas entry 1 must be a data folder other than /"),
    ('[wrapper]\ndata_areas = ["/home", "/etc"]\n', r"\[wrapper\] data_areas entry 2 must be a data folder other than /etc"),
    ('[wrapper]\ndata_areas = ["/usr/share/data"]\n', r"must be a data folder outside /usr \(binding it would hide"),
    ('[paths]\nmodel_root = "/etc"\n', r"\[paths\] model_root must be a data folder other than /etc"),
    ('[paths]\nmodel_root = "/usr/share/models"\n', r"\[paths\] model_root must be a data folder outside /usr"),
    ('[paths]\nmodel_root = "models"\n', r"\[paths\] model_root must be an absolute path, not 'models'"),
    ('[paths]\nmodel_root = "/srv/a,b"\n', r"\[paths\] model_root must be an absolute path without ',', ':'"),
    ('[wrapper]\ndata_areas = ["/home", "/data:/etc"]\n', r"data_areas entry 2 must be an absolute path without ','"),
    ('[wrapper]\ndata_area = ["/home"]\n', r"unknown key \[wrapper\] data_area; did you mean data_areas\?"),
    ('[wraper]\ndata_areas = ["/home"]\n', r"unknown table \[wraper\]; did you mean \[wrapper\]\?"),
    ('[site]\nmodule_version = 1\n', r"\[site\] module_version must be a string, not the number 1"),
    ('[wrapper]\nnative_fallback = "yes"\n', r"\[wrapper\] native_fallback must be true or false, not the string 'yes'"),
    ('[slurm]\narray_throttle = true\n', r"\[slurm\] array_throttle must be a whole number, not the boolean true"),
    ('[slurm]\nmax_time = "two hours"\n', r"\[slurm\] max_time must be a Slurm time"),
    ('[slurm]\npartition = "gpu; rm -rf ~"\n', r"\[slurm\] partition must be a plain Slurm name"),
    ('[ondemand]\nallowed_roots = ["/"]\n', r"\[ondemand\] allowed_roots entry 1 must be a data folder other than /"),
    ('[ondemand]\nallowed_roots = []\n', r"\[ondemand\] allowed_roots must be at least one folder"),
    ('[wrapper]\napptainer = "bin/apptainer --x"\n', r"\[wrapper\] apptainer must be a program name or an absolute path"),
    ('[wrapper]\nscratch_variables = ["TMPDIR", "$(id)"]\n', r"scratch_variables must be variable names, not '\$\(id\)'"),
    ("wrapper = 3\n", r"\[wrapper\] must be a table, not the number 3"),
    ('[cache]\ndirectory = "/etc/whisper"\n', r"\[cache\] directory must be a data folder outside /etc"),
    ('[cache]\ndirectory = "cache"\n', r"\[cache\] directory must be an absolute path, not 'cache'"),
    ('[cache]\nshared = "group"\n', r"\[cache\] shared must be true or false, not the string 'group'"),
    ('[cache]\nmax_size = "lots"\n', r"\[cache\] max_size must be a size such as 20G or 500M, not 'lots'"),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, refusal", HOSTILE)
def test_hostile_site_files_are_refused_with_the_file_and_the_key(tmp_path, text, refusal):
    path = write(tmp_path, text)
    with pytest.raises(SiteError, match=refusal) as caught:
        load_site(path)
    message = str(caught.value)
    assert message.startswith(f"site file {path}: ") and "\n" not in message


def test_every_table_and_key_has_a_type_a_default_and_a_meaning():
    for name, table in schema.TABLES.items():
        for field in dataclasses.fields(table):
            assert field.metadata["meaning"], (name, field.name)
            assert schema.kind_of(__import__("typing").get_type_hints(table)[field.name])
            assert field.default is not dataclasses.MISSING, (name, field.name)
    assert load_site.__module__ == "whisper_hpc.site" and Site() == site_from_dict({})


def test_the_example_site_file_sets_every_key_of_the_schema():
    example = ROOT / "site.example.toml"
    data = tomllib.loads(example.read_text(encoding="utf-8"))
    load_site(example)  # valid under the schema
    assert {name: set(keys) for name, keys in data.items()} == \
        {name: set(keys) for name, keys in schema.schema().items()}


def test_the_installed_site_file_says_every_key_and_reads_back_the_same(tmp_path):
    site = load_site(ROOT / "site.example.toml")
    text = site_toml(site, "written by a test")
    for name, keys in schema.schema().items():
        assert f"[{name}]" in text
        for key in keys:
            assert any(line.startswith(f"{key} = ") and " # " in line for line in text.splitlines()), key
    assert dataclasses.replace(load_site(write(tmp_path, text)), source=None) == dataclasses.replace(site, source=None)


def test_the_wrappers_site_keys_are_the_schemas():
    tables = schema.schema()
    defaults = {name: dataclasses.asdict(getattr(Site(), name)) for name in schema.TABLES}
    for (table, key), (kind, default) in sw.SITE_KEYS.items():
        assert tables[table][key] == kind, (table, key)
        expected = defaults[table][key]
        assert (list(expected) if isinstance(expected, tuple) else expected) == default, (table, key)
    assert sw.SYSTEM_FOLDERS == schema.SYSTEM_FOLDERS


@pytest.mark.parametrize("path", ["/", "/etc", "/etc/x", "/opt", "/opt/x", "/opt/whisper-hpc/models", "/usr/lib/m", "/usr/../etc", "relative", "/a:b", "/a,b",
                                  "/home", "/home/me", "/scratch/a b", "/optional"])
def test_the_wrapper_and_the_schema_judge_paths_alike(path):
    for rule in ("path", "data area", "model root"):
        assert sw.path_problem(path, rule) == schema.path_problem(path, rule), (path, rule)
    hints = {key: typing.get_type_hints(getattr(schema, table))[key]
             for key, table in (("data_areas", "WrapperTable"), ("model_root", "PathsTable"))}
    items = {key: (typing.get_args(kind)[0] if typing.get_args(kind) else kind) for key, kind in hints.items()}
    assert sw.PATH_RULES == {key: schema.RULES[kind] for key, kind in items.items()}
    assert sw.MODEL_ROOT_MAY_BE_INSIDE == schema.MODEL_ROOT_MAY_BE_INSIDE


def run_wrapper(tmp_path: Path, site_file: Path, environ: dict | None = None) -> subprocess.CompletedProcess:
    marker = tmp_path / "ran"
    apptainer = tmp_path / "apptainer"
    apptainer.write_text(f"#!/bin/sh\ntouch {marker}\n")
    apptainer.chmod(0o755)
    image = tmp_path / "whisper.sif"
    image.write_text("")
    (tmp_path / "work").mkdir(exist_ok=True)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path), "WHISPER_HPC_SITE": str(site_file),
           "CONTAINER_IMAGE": str(image), "TMPDIR": str(tmp_path), **(environ or {})}
    result = subprocess.run([sys.executable, "-I", str(WRAPPER), "run", "talk.wav"], cwd=tmp_path / "work", env=env,
                            capture_output=True, text=True, timeout=60)
    result.ran = marker.exists()
    return result


WRAPPER_HOSTILE = [(text, refusal) for text, refusal in HOSTILE
                   if any(f"[{table}]" in text and f"{key} =" in text for table, key in sw.SITE_KEYS)]


@pytest.mark.parametrize("text, refusal", WRAPPER_HOSTILE)
def test_the_wrapper_refuses_the_same_site_files_and_runs_nothing(tmp_path, text, refusal):
    kind_only = refusal.split(" must be ")[0]  # the wrapper names the key and the rule in its own words
    result = run_wrapper(tmp_path, write(tmp_path, text))
    assert result.returncode == 2 and not result.ran, result.stderr
    assert result.stderr.startswith("singularity_wrapper: site file ") and result.stderr.count("\n") == 1
    assert __import__("re").search(kind_only, result.stderr), result.stderr


def test_the_wrapper_runs_with_a_good_site_file(tmp_path):
    result = run_wrapper(tmp_path, ROOT / "site.example.toml")
    assert result.returncode == 0 and result.ran, result.stderr


@pytest.mark.parametrize("text", [t for t, _ in HOSTILE[:4] + HOSTILE[7:10]])
def test_make_install_refuses_a_hostile_site_file_and_installs_nothing(tmp_path, text):
    prefix = tmp_path / "prefix"
    result = subprocess.run([sys.executable, "-m", "whisper_hpc.install", "--site", str(write(tmp_path, text)),
                             "--prefix", str(prefix), "--images", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "WHISPER_HPC_SITE": ""})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"install: site file {tmp_path / 'site.toml'}: ")
    assert not prefix.exists()
