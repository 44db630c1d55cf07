"""The Open OnDemand app: rendered from the site, its ERB evaluated by real Ruby, its job run.

Forms are submitted through tests/ood_render.rb, which renders the installed app as OnDemand 3
does. Jobs run either with bash and stand-ins for `module` and `whisper-batch` (to see the exact
argv the batch tool gets), or through the real sbatch of the test cluster (real transcripts).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from cluster_fixtures import installed_prefix, slurm_cluster  # noqa: F401  (pytest fixtures)
from conftest import need
from ood_app import (
    Submission, bash_syntax_ok, clean_env, install_app, make_site, python_yaml, recorded_fields, render_completed,
    ruby_available, ruby_yaml, run_job_locally, sentinels_in, site_dict, stub_tools, submit_form, with_ondemand,
)
from whisper_hpc import ondemand, sizing
from whisper_hpc.errors import WhisperHpcError
from whisper_hpc.languages import LANGUAGES
from whisper_hpc.options import parse as parse_whisper_hpc
from whisper_hpc.render import site_context
from whisper_hpc.site import SiteError, load_site
from whisper_hpc.writers import FORMATS

pytestmark = pytest.mark.system  # Ruby, bash, the staged models; the last tests also Slurm and Lmod

SUPPORT = "help@example.org"
HOSTILE_NAME = "it's \"; rm -rf ~; \" $(touch sentinel-dollar) `touch sentinel-tick` & | > <"
SENTINELS = ("sentinel-dollar", "sentinel-tick", "sentinel-abs")


@pytest.fixture
def ruby():
    need(ruby_available(), "Ruby is missing: run `make ruby-installed` (apt-get install ruby)")


@dataclass
class Workspace:
    root: Path
    allowed: Path
    home: Path
    stubs: Path
    app: Path
    site: dict

    def session(self, name: str = "session") -> Path:
        return self.root / "sessions" / name

    def canary_intact(self) -> bool:
        return (self.home / "canary").read_text() == "still here"

    def no_sentinels(self) -> list[Path]:
        return sentinels_in(self.root, names=SENTINELS)


@pytest.fixture
def workspace(tmp_path: Path, model_root: Path, shared_data: Path, ruby) -> Workspace:
    allowed = tmp_path / "allowed"
    (allowed / "talks").mkdir(parents=True)
    shutil.copy(shared_data / "jfk.flac", allowed / "talks" / "jfk.flac")
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("still here")
    stubs = tmp_path / "stubs"
    site = site_dict(model_root, [allowed], ondemand={"lmod_init": str(stubs / "lmod-init.sh")},
                     site={"support": SUPPORT})
    app = install_app(site, tmp_path / "prefix")
    return Workspace(tmp_path, allowed, home, stubs, app, site)


def form(audio: Path | str, **values: str) -> dict:
    return {"audio_path": str(audio), "model": "tiny.en", "language": "en", **values}


# ---- the app as installed ----------------------------------------------------------------------


def test_install_lays_out_an_ondemand_app(workspace: Workspace):
    files = sorted(str(p.relative_to(workspace.app)) for p in workspace.app.rglob("*") if p.is_file())
    assert files == sorted(["manifest.yml", "form.yml", "submit.yml.erb", "completed.html.erb",
                            "template/before.sh.erb", "template/script.sh.erb"])
    assert workspace.app == workspace.root / "prefix" / "ondemand" / "whisper"
    assert (workspace.app / "template" / "script.sh.erb").stat().st_mode & 0o111, "OnDemand forks script.sh: it must be executable"
    for path in workspace.app.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "{{" not in text and "{%" not in text and "{#" not in text, f"Jinja2 left in {path.name}"
    before = {p: p.read_bytes() for p in workspace.app.rglob("*") if p.is_file()}
    install_app(workspace.site, workspace.root / "prefix")
    assert {p: p.read_bytes() for p in workspace.app.rglob("*") if p.is_file()} == before


def test_manifest_and_form_parse_in_python_and_ruby(workspace: Workspace, model_root: Path):
    for name in ("manifest.yml", "form.yml"):
        assert python_yaml(workspace.app / name) == ruby_yaml(workspace.app / name)
    manifest = python_yaml(workspace.app / "manifest.yml")
    assert manifest["category"] == "Audio" and manifest["role"] == "batch_connect"
    assert SUPPORT in manifest["description"]

    form_config = python_yaml(workspace.app / "form.yml")
    fields = form_config["form"]
    for wanted in ("audio_path", "model", "language", "task", "initial_prompt", "hotwords", "word_timestamps",
                   "vad_filter", "diarize", "num_speakers", "use_gpu", "email_when_done", "hours", "auto_accounts",
                   "auto_queues"):
        assert wanted in fields
    assert [f"format_{f}" for f in FORMATS] == [f for f in fields if f.startswith("format_")]
    attributes = form_config["attributes"]
    assert [attributes[f"format_{f}"]["label"] for f in FORMATS] == [ondemand.format_label(f) for f in FORMATS]
    for free_text in ("initial_prompt", "hotwords"):
        assert attributes[free_text]["widget"] == "text_field" and attributes[free_text]["value"] == ""
        assert "1000 characters" in attributes[free_text]["help"]
    assert attributes["vad_filter"]["label"] == "Skip silence (voice activity detection)"
    assert attributes["vad_filter"]["value"] == "0", "off unless asked for, as on the command line"
    assert set(fields) <= set(attributes) | {"auto_accounts", "auto_queues"}
    assert attributes["audio_path"]["widget"] == "path_selector"
    assert attributes["audio_path"]["favorites"] == [str(workspace.allowed)]
    staged = sorted(p.parent.name for p in model_root.glob("*/manifest.json"))
    assert [value for _label, value in attributes["model"]["options"]] == staged
    assert attributes["model"]["value"] == "tiny.en"
    languages = [value for _label, value in attributes["language"]["options"]]
    assert languages[0] == "auto" and sorted(languages[1:]) == sorted(LANGUAGES)
    assert [value for _label, value in attributes["task"]["options"]] == ["transcribe", "translate"]
    assert attributes["hours"]["max"] == 2
    assert form_config["cluster"] == "*"


def test_older_ondemand_and_fixed_slurm_settings_change_the_form(tmp_path: Path, model_root: Path, ruby):
    site = site_dict(model_root, [tmp_path], ondemand={"ood_version": "2.0", "cluster": "owens"},
                     slurm={"partition": "short", "account": "lab42"})
    form_config = ruby_yaml(install_app(site, tmp_path / "prefix") / "form.yml")
    attributes = form_config["attributes"]
    assert attributes["audio_path"]["widget"] == "text_field", "path_selector needs OnDemand 3.1"
    assert attributes["bc_queue"] == "short" and attributes["bc_account"] == "lab42", "fixed by the site"
    assert "auto_queues" not in form_config["form"] and form_config["cluster"] == "owens"


@pytest.mark.parametrize("table, key, value, complaint", [
    ("ondemand", "allowed_roots", ["relative/dir"], "absolute path"),
    ("ondemand", "allowed_roots", ["/"], "'/'"),
    ("ondemand", "allowed_roots", [], "at least one folder"),
    ("ondemand", "allowed_roots", "/home", "list"),
    ("slurm", "partition", "short; rm -rf /", "Slurm name"),
    ("slurm", "account", "lab42 --uid=0", "Slurm name"),
    ("slurm", "gpu_gres", "gpu:1 --uid=0", "gres"),
    ("slurm", "max_time", "soon", "Slurm time"),
    ("ondemand", "cluster", "a b", "cluster id"),
    ("ondemand", "cpus_per_task", "4", "whole number"),
    ("ondemand", "cpus_per_task", 0, "1 to 256"),
    ("ondemand", "ood_version", "three", "version number"),
    ("ondemand", "lmod_init", "lmod/init/bash", "absolute path"),
    ("ondemand", "allowed_root", ["/home"], "did you mean allowed_roots"),
    ("site", "module_version", "1.0 $(id)", "plain version"),
])
def test_unsafe_site_settings_are_refused_at_install(tmp_path: Path, model_root: Path, table, key, value, complaint):
    """The site schema refuses them when the site is read, naming the table and key; nothing is written."""
    site = site_dict(model_root, [tmp_path], **{table: {key: value}})
    with pytest.raises(SiteError) as refused:
        install_app(site, tmp_path / "prefix")
    message = str(refused.value)
    assert f"[{table}] {key}" in message and complaint in message, message
    assert not (tmp_path / "prefix").exists()


def test_a_model_name_the_form_cannot_offer_is_refused_at_install(tmp_path: Path, model_root: Path):
    site = make_site(model_root, [tmp_path])
    models = [{"name": "tiny.en; touch x", "path": str(model_root / "tiny.en"), "english_only": True}]
    with pytest.raises(ondemand.OnDemandError, match="cannot offer safely") as refused:
        ondemand.install(site, tmp_path / "prefix", models=models)
    assert isinstance(refused.value, WhisperHpcError)
    assert not (tmp_path / "prefix").exists()


def test_no_staged_models_is_refused_at_install(tmp_path: Path):
    site = site_dict(tmp_path / "no-models", [tmp_path])
    with pytest.raises(ondemand.OnDemandError, match="no staged models"):
        install_app(site, tmp_path / "prefix")


def test_site_text_cannot_break_out_of_the_erb(tmp_path: Path, model_root: Path, shared_data: Path, ruby):
    """A support address with ERB and shell syntax in it stays text in every rendered file."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copy(shared_data / "jfk.flac", allowed / "jfk.flac")
    sentinel = tmp_path / "sentinel-abs"
    support = f'Ask "us" %> <%= `touch {sentinel}` %> $(touch {sentinel}) 100%'
    site = site_dict(model_root, [allowed], site={"support": support},
                     ondemand={"lmod_init": str(tmp_path / "stubs" / "lmod-init.sh")})
    app = install_app(site, tmp_path / "prefix")
    submission = submit_form(app, tmp_path / "session", form(allowed / "jfk.flac"), tmp_path)
    job = submission.job
    for name in ("before.sh", "script.sh"):
        assert bash_syntax_ok(submission.session / name).returncode == 0
    result = run_job_locally(job, tmp_path, tmp_path / "stubs", tmp_path / "record")
    assert not sentinel.exists()
    assert support in python_yaml(app / "manifest.yml")["description"]
    assert result.returncode == 0, result.stderr


# ---- one submission: Ruby ERB, the job script, the batch tool's argv ------------------------------


@pytest.mark.parametrize("choices", [
    {},
    {"model": "base", "language": "auto", "task": "translate", "word_timestamps": "1"},
    {"use_gpu": "1", "format_vtt": "0", "format_tsv": "0"},
    {"diarize": "1", "num_speakers": "2", "email_when_done": "1", "hours": "1"},
    {"vad_filter": "1", "initial_prompt": "  An interview about Slurm and Lmod.  ", "hotwords": "Slurm, Lmod"},
], ids=["defaults", "translate", "gpu", "diarize", "prompt-vad"])
def test_normal_forms_render_with_ruby_and_pass_bash_n(workspace: Workspace, choices: dict):
    submission = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks", **choices), workspace.home)
    job = submission.job
    for name in ("before.sh", "script.sh", "job_script_content.sh"):
        checked = bash_syntax_ok(submission.session / name)
        assert checked.returncode == 0, f"{name}: {checked.stderr}"
    assert not list(submission.session.glob("*.erb")), "every template was rendered"
    native = submission.native
    assert "--cpus-per-task=2" in native
    assert any(re.fullmatch(r"--mem=\d+M", a) for a in native) and any(re.fullmatch(r"--time=\d+:\d\d:\d\d", a) for a in native)
    assert ("--gres=gpu:1" in native) == (choices.get("use_gpu") == "1"), "a GPU only when asked for"
    assert ("-t" in job["args"]) is False, "the time comes from the app, not bc_num_hours"
    assert ("--mail-type" in job["args"]) == (choices.get("email_when_done") == "1")
    if choices.get("hours"):
        assert "--time=1:00:00" in native
    environment = submission.environment
    assert sorted(environment) == sorted(ondemand.JOB_ENVIRONMENT)
    assert job["args"][job["args"].index("--export") + 1] == ",".join(environment), "only these reach the job"
    assert f"--time={environment['WHISPER_OOD_TIME']}" in native and f"--mem={environment['WHISPER_OOD_MEM']}" in native
    assert environment["WHISPER_OOD_AUDIO_FILES"] == "1"
    assert environment["WHISPER_OOD_AUDIO_BYTES"] == str((workspace.allowed / "talks" / "jfk.flac").stat().st_size)

    result = run_job_locally(job, workspace.home, workspace.stubs, workspace.root / "record")
    assert result.returncode == 0, result.stderr
    assert " (1 file(s), model " in result.stdout
    assert f"Asked for --time={environment['WHISPER_OOD_TIME']} --mem={environment['WHISPER_OOD_MEM']}," in result.stdout
    argv = recorded_fields(workspace.root / "record" / "whisper-batch.argv")
    assert argv[:2] == ["run", str((workspace.allowed / "talks").resolve())]
    assert argv[argv.index("--output_dir") + 1] == str(submission.session / "transcripts")
    assert argv[argv.index("--model") + 1] == choices.get("model", "tiny.en")
    assert ("--device" in argv) == (choices.get("use_gpu") == "1")
    assert ("--language" in argv) == (choices.get("language", "en") != "auto")
    expected_formats = [f for f in FORMATS if choices.get(f"format_{f}", "1") == "1"]
    assert argv[argv.index("--output_format") + 1] == ",".join(expected_formats)
    if choices.get("vad_filter") == "1":
        assert argv[argv.index("--vad_filter") + 1] == "True"
    else:
        assert "--vad_filter" not in argv, "off is the command line's default"
    for free_text in ("initial_prompt", "hotwords"):
        given = [a for a in argv if a.startswith(f"--{free_text}")]
        assert given == ([f"--{free_text}={choices[free_text].strip()}"] if free_text in choices else []), "trimmed, one entry"


def test_diarization_form_loads_the_diarization_module_with_its_flags(workspace: Workspace):
    submission = submit_form(workspace.app, workspace.session(),
                             form(workspace.allowed / "talks", diarize="1", num_speakers="3"), workspace.home)
    result = run_job_locally(submission.job, workspace.home, workspace.stubs, workspace.root / "record")
    assert result.returncode == 0, result.stderr
    modules = (workspace.root / "record" / "module.args").read_text().split("\n")
    assert "load\0whisper-diarization/0.1.0\0" in modules
    argv = recorded_fields(workspace.root / "record" / "whisper-batch.argv")
    assert argv[argv.index("--diarize") + 1:argv.index("--diarize") + 3] == ["--num_speakers", "3"]

    plain = submit_form(workspace.app, workspace.session("plain"), form(workspace.allowed / "talks"), workspace.home)
    run_job_locally(plain.job, workspace.home, workspace.stubs, workspace.root / "record-plain")
    assert "load\0whisper/0.1.0\0" in (workspace.root / "record-plain" / "module.args").read_text().split("\n")
    assert "--diarize" not in recorded_fields(workspace.root / "record-plain" / "whisper-batch.argv")

    # a speaker count without diarization is not passed on: whisper-hpc refuses --num_speakers without --diarize
    counted = submit_form(workspace.app, workspace.session("counted"), form(workspace.allowed / "talks", num_speakers="3"),
                          workspace.home)
    run_job_locally(counted.job, workspace.home, workspace.stubs, workspace.root / "record-counted")
    argv = recorded_fields(workspace.root / "record-counted" / "whisper-batch.argv")
    assert argv and "--num_speakers" not in argv and "--diarize" not in argv


def test_hostile_file_and_folder_names_reach_the_batch_tool_as_literal_data(workspace: Workspace, shared_data: Path):
    folder = workspace.allowed / HOSTILE_NAME
    folder.mkdir()
    shutil.copy(shared_data / "jfk.flac", folder / f"{HOSTILE_NAME}.flac")
    shutil.copy(shared_data / "jfk.flac", folder / "Interview Müller – ✓.flac")
    for target in (folder, folder / f"{HOSTILE_NAME}.flac", folder / "Interview Müller – ✓.flac"):
        label = f"file{len(target.name)}" if target.suffix else "dir"
        submission = submit_form(workspace.app, workspace.session(label), form(target), workspace.home)
        for name in ("before.sh", "script.sh", "job_script_content.sh"):
            assert bash_syntax_ok(submission.session / name).returncode == 0
        record = workspace.root / f"record-{label}"
        result = run_job_locally(submission.job, workspace.home, workspace.stubs, record)
        assert result.returncode == 0, result.stderr
        assert recorded_fields(record / "whisper-batch.argv")[1] == str(target), "the name arrived as one literal argument"
        assert str(target) in result.stdout, "before.sh names what it transcribes"
    assert workspace.no_sentinels() == [] and workspace.canary_intact()


INJECTIONS = [
    '"; rm -rf ~; "',
    "$(touch {sentinel})",
    "`touch {sentinel}`",
    "en\ntouch {sentinel}",
    "en'; touch {sentinel}; '",
]


@pytest.mark.parametrize("field", ["language", "model", "task", "format_txt", f"format_{FORMATS[-1]}", "num_speakers",
                                   "hours", "diarize", "use_gpu", "vad_filter", "auto_queues", "auto_accounts"])
@pytest.mark.parametrize("injection", INJECTIONS)
def test_hostile_form_values_are_refused_before_anything_runs(workspace: Workspace, field: str, injection: str):
    sentinel = workspace.root / "sentinel-abs"
    value = injection.format(sentinel=sentinel)
    submission = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks", **{field: value}), workspace.home)
    assert submission.refused, submission.stdout
    assert submission.stderr.startswith("Whisper transcription: "), submission.stderr
    assert len(submission.stderr.strip().splitlines()) == 1, "one line, naming the field"
    assert not (submission.session / "job_script_content.sh").exists()
    assert not sentinel.exists() and workspace.canary_intact()


# Free text (initial prompt, hotwords) is not chosen from a list: any words reach the batch tool, as data.
FREE_TEXTS = [
    HOSTILE_NAME,
    "$(touch {sentinel}) and `touch {sentinel}`",
    "'; touch {sentinel}; ' \"; touch {sentinel}; \"",
    "${{HOME}} ~ * ? [a-z] !! \\n \\ %q %s -- --output_dir /etc --mem 1G --partition x",
    "<%= `touch {sentinel}` %> <%# x %> 100%",
    "Müller, Łódź, 東京, Ελληνικά, café ✓, עברית, 🎤",
    "True",
    "x" * ondemand.MAX_TEXT_LENGTH,
    "ü" * ondemand.MAX_TEXT_LENGTH,
]


@pytest.mark.parametrize("field, flag", [("initial_prompt", "--initial_prompt"), ("hotwords", "--hotwords")])
@pytest.mark.parametrize("text", FREE_TEXTS, ids=range(len(FREE_TEXTS)))
def test_free_text_reaches_the_batch_tool_as_one_literal_argument(workspace: Workspace, field: str, flag: str, text: str):
    sentinel = workspace.root / "sentinel-abs"
    text = text.format(sentinel=sentinel)
    submission = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks", **{field: text}), workspace.home)
    for name in ("before.sh", "script.sh", "job_script_content.sh"):
        assert bash_syntax_ok(submission.session / name).returncode == 0
    record = workspace.root / "record"
    result = run_job_locally(submission.job, workspace.home, workspace.stubs, record)
    assert result.returncode == 0, result.stderr
    argv = recorded_fields(record / "whisper-batch.argv")
    assert [a for a in argv if text in a] == [f"{flag}={text}"], "one argv entry, the text unchanged"
    assert argv.count("--output_dir") == 1 and argv[argv.index("--output_dir") + 1] == str(submission.session / "transcripts")
    read = parse_whisper_hpc(argv[1:])  # as whisper-hpc reads it: the text is that flag's value, nothing else
    assert getattr(read, field) == text and read.audio == [str((workspace.allowed / "talks").resolve())]
    assert read.output_dir == str(submission.session / "transcripts")
    assert not sentinel.exists() and workspace.no_sentinels() == [] and workspace.canary_intact()


@pytest.mark.parametrize("field", ["initial_prompt", "hotwords"])
@pytest.mark.parametrize("text, complaint", [
    ("Slurm\ntouch {sentinel}", "line break"),
    ("Slurm\r\n", "line break"),
    ("Slurm\tLmod", "control character"),
    ("Slurm\u2028Lmod", "line break"),
    ("Slurm\u0085Lmod", "line break"),
    ("Slurm\x1b[31mLmod", "control character"),
    ("Slurm\x00Lmod", "control character"),
    ("x" * (ondemand.MAX_TEXT_LENGTH + 1), f"{ondemand.MAX_TEXT_LENGTH + 1} characters long; keep it to 1000"),
    ("-x", "must not start with -"),
    ("  --output_dir /etc", "must not start with -"),
], ids=["newline", "crlf", "tab", "line-separator", "next-line", "escape", "nul", "too-long", "dash", "flag"])
def test_free_text_that_is_not_one_plain_line_is_refused(workspace: Workspace, field: str, text: str, complaint: str):
    sentinel = workspace.root / "sentinel-abs"
    submission = submit_form(workspace.app, workspace.session(),
                             form(workspace.allowed / "talks", **{field: text.format(sentinel=sentinel)}), workspace.home)
    assert submission.refused, submission.stdout
    label = {"initial_prompt": "The initial prompt", "hotwords": "The hotwords"}[field]
    assert submission.stderr.startswith(f"Whisper transcription: {label} "), submission.stderr
    assert complaint in submission.stderr and len(submission.stderr.strip().splitlines()) == 1
    assert "rename it" not in submission.stderr, "advice for free text, not for a file name"
    assert len(submission.stderr) < 400, "a long text is shown cut short"
    assert not (submission.session / "job_script_content.sh").exists()
    assert not sentinel.exists() and workspace.canary_intact()


def test_every_output_format_gets_a_labelled_check_box(workspace: Workspace, monkeypatch):
    """The form, the submit-time checks and the job follow writers.FORMATS, whatever it holds."""
    formats = ("txt", "vtt", "srt", "tsv", "json", "csv", "docx", "xyz")
    monkeypatch.setattr(ondemand, "FORMATS", formats)
    app = install_app(workspace.site, workspace.root / "prefix-formats")
    form_config = ruby_yaml(app / "form.yml")
    assert [f for f in form_config["form"] if f.startswith("format_")] == [f"format_{f}" for f in formats]
    labels = {f: form_config["attributes"][f"format_{f}"]["label"] for f in formats}
    assert labels["docx"] == "Write .docx (Word)" and labels["csv"] == "Write .csv (spreadsheet)"
    assert labels["xyz"] == "Write .xyz", "a format without a description still gets its check box"

    off = {f"format_{f}": "0" for f in formats}
    for chosen in (["docx"], ["csv", "xyz"], list(formats)):
        submission = submit_form(app, workspace.session("-".join(chosen)),
                                 form(workspace.allowed / "talks", **{**off, **{f"format_{f}": "1" for f in chosen}}),
                                 workspace.home)
        record = workspace.root / f"record-{len(chosen)}"
        assert run_job_locally(submission.job, workspace.home, workspace.stubs, record).returncode == 0
        argv = recorded_fields(record / "whisper-batch.argv")
        assert argv[argv.index("--output_format") + 1] == ",".join(chosen)
    refused = submit_form(app, workspace.session("none"), form(workspace.allowed / "talks", **off), workspace.home)
    assert refused.refused and "choose at least one output format (txt, vtt, srt, tsv, json, csv, docx, xyz)" in refused.stderr
    bad = submit_form(app, workspace.session("bad"), form(workspace.allowed / "talks", format_docx="yes"), workspace.home)
    assert bad.refused and "Write .docx must be checked or not" in bad.stderr


def test_an_output_format_the_form_cannot_offer_is_refused_at_install(tmp_path: Path, model_root: Path, monkeypatch):
    monkeypatch.setattr(ondemand, "FORMATS", ("txt", "x; touch y"))
    with pytest.raises(ondemand.OnDemandError, match="output format 'x; touch y'"):
        install_app(site_dict(model_root, [tmp_path]), tmp_path / "prefix")
    assert not (tmp_path / "prefix").exists()


@pytest.mark.parametrize("make_path, complaint", [
    (lambda w: w.allowed / "talks\n$(touch sentinel-dollar)", "line break"),
    (lambda w: str(w.allowed / "talks") + "\n/etc", "line break"),
    (lambda w: str(w.allowed / "talks") + "\u2028x", "line break"),
    (lambda w: str(w.allowed / "talks") + "\u0085x", "line break"),
    (lambda w: w.allowed / '"; rm -rf ~; "', "cannot be opened"),
    (lambda w: w.allowed / "$(touch sentinel-dollar)", "cannot be opened"),
    (lambda w: "/etc/passwd", "outside the folders"),
    (lambda w: str(w.allowed) + "/.." * len(w.allowed.parts) + "/etc", "outside the folders"),
    (lambda w: w.root / "outside.flac", "outside the folders"),
    (lambda w: w.allowed / "escape", "outside the folders"),
    (lambda w: w.allowed / "escape" / "jfk.flac", "outside the folders"),
    (lambda w: "talks/jfk.flac", "full path"),
    (lambda w: "", "choose an audio file"),
    (lambda w: w.allowed / "empty", "no audio or video files"),
], ids=["newline-dollar", "newline-path", "unicode-line-separator", "unicode-next-line", "quotes-missing", "dollar-missing", "etc", "dotdot", "outside",
        "symlink-dir", "symlink-file", "relative", "empty", "no-audio"])
def test_paths_outside_the_allowed_folders_are_refused(workspace: Workspace, shared_data: Path, make_path, complaint):
    outside = workspace.root / "outside"
    outside.mkdir()
    shutil.copy(shared_data / "jfk.flac", outside / "jfk.flac")
    shutil.copy(shared_data / "jfk.flac", workspace.root / "outside.flac")
    (workspace.allowed / "escape").symlink_to(outside)
    (workspace.allowed / "empty").mkdir()
    (workspace.allowed / "empty" / "notes.txt").write_text("not audio")
    submission = submit_form(workspace.app, workspace.session(), form(make_path(workspace)), workspace.home)
    assert submission.refused, submission.stdout
    assert complaint in submission.stderr and submission.stderr.startswith("Whisper transcription: ")
    assert len(submission.stderr.strip().splitlines()) == 1, "one line, whatever the path holds"
    assert not (submission.session / "job_script_content.sh").exists()
    assert workspace.no_sentinels() == [] and workspace.canary_intact()


def test_home_relative_path_is_expanded_and_checked(workspace: Workspace):
    (workspace.home / "rec").symlink_to(workspace.allowed / "talks")
    submission = submit_form(workspace.app, workspace.session(), form("~/rec"), workspace.home)
    assert submission.returncode == 0, submission.stderr


def test_the_job_stops_when_the_audio_moved_outside_after_submission(workspace: Workspace, shared_data: Path):
    """before.sh checks again on the compute node: a folder swapped for a symlink is refused there."""
    outside = workspace.root / "outside"
    outside.mkdir()
    shutil.copy(shared_data / "jfk.flac", outside / "jfk.flac")
    submission = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks"), workspace.home)
    job = submission.job
    shutil.rmtree(workspace.allowed / "talks")
    (workspace.allowed / "talks").symlink_to(outside)
    result = run_job_locally(job, workspace.home, workspace.stubs, workspace.root / "record")
    assert result.returncode == 2
    assert "outside the folders this app may read" in result.stderr and SUPPORT in result.stderr
    assert not (workspace.root / "record" / "whisper-batch.argv").exists(), "the batch tool never started"


# A whisper-batch that records every call (NUL-separated, one call per line); `run` leaves a
# manifest as the real one does and exits RUN_EXIT, `report` exits REPORT_EXIT.
RECORDING_BATCH = """\
#!/bin/sh
for argument in "$@"; do printf '%s\\0' "$argument"; done >> "$WHISPER_TEST_RECORD/calls"
printf '\\n' >> "$WHISPER_TEST_RECORD/calls"
previous=""
for argument in "$@"; do
  [ "$previous" = "--output_dir" ] && output_dir="$argument"
  previous="$argument"
done
case "$1" in
  run) mkdir -p "$output_dir/.whisper-batch" && echo '{}' > "$output_dir/.whisper-batch/20250101-000000-abcdef.json"
       exit "$RUN_EXIT" ;;
  report) echo "whisper-batch: cannot write the report" >&2; exit "$REPORT_EXIT" ;;
esac
"""


def run_job_recording_calls(job: dict, workspace: Workspace, record: Path, run_exit: int, report_exit: int):
    """The rendered job with bash, as run_job_locally runs it, but with RECORDING_BATCH: (result, calls)."""
    record.mkdir(parents=True, exist_ok=True)
    _init, bin_dir = stub_tools(workspace.stubs)
    (bin_dir / "whisper-batch").write_text(RECORDING_BATCH, encoding="utf-8")
    env = clean_env(workspace.home, **job.get("environment", {}), WHISPER_TEST_RECORD=str(record),
                    RUN_EXIT=str(run_exit), REPORT_EXIT=str(report_exit))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(["bash", job["script"]], capture_output=True, text=True, timeout=120, env=env,
                            cwd=workspace.home)
    lines = (record / "calls").read_text(encoding="utf-8").split("\n")[:-1] if (record / "calls").exists() else []
    return result, [line.split("\0")[:-1] for line in lines]


@pytest.mark.parametrize("run_exit, report_exit", [(0, 0), (1, 0), (0, 2)], ids=["done", "some-failed", "report-fails"])
def test_the_job_writes_the_batch_report_and_ends_as_the_run_did(workspace: Workspace, run_exit: int, report_exit: int):
    submission = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks"), workspace.home)
    result, calls = run_job_recording_calls(submission.job, workspace, workspace.root / "record", run_exit, report_exit)
    assert result.returncode == run_exit, result.stderr
    run, report = calls
    assert run[0] == "run"
    manifest = submission.session / "transcripts" / ".whisper-batch" / "20250101-000000-abcdef.json"
    assert report == ["report", str(manifest), "--html", str(submission.session / ondemand.REPORT_FILE)]
    assert ("the batch report was not written" in result.stderr) == (report_exit != 0)


def test_no_report_when_the_run_left_no_manifest(workspace: Workspace):
    """Nothing to do (or refused before a manifest): the job does not ask for a report."""
    submission = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks"), workspace.home)
    result = run_job_locally(submission.job, workspace.home, workspace.stubs, workspace.root / "record")
    assert result.returncode == 0, result.stderr
    assert recorded_fields(workspace.root / "record" / "whisper-batch.argv")[0] == "run", "the run was the last call"


# ---- sizing ----------------------------------------------------------------------------------------


def option(native: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in native if a.startswith(f"--{name}="))


def seconds(clock: str) -> int:
    hours, minutes, secs = (int(p) for p in clock.split(":"))
    return hours * 3600 + minutes * 60 + secs


def memory(native: list[str]) -> int:
    value = option(native, "mem")
    assert value.endswith("M"), value
    return int(value[:-1])


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (the app only looks at sizes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as sparse:
        sparse.truncate(size)
    return path


def sizing_says(model: str, gpu: bool, diarize: bool, sizes: list[int], hours: int, max_time: str,
                threads: int = 2) -> tuple[int, int]:
    """(--time s, --mem MB) straight from whisper_hpc.sizing, not through the app's baked numbers:
    the batch tool's workload, each recording's length guessed from its size as the app guesses it."""
    workload = sizing.Workload(parameters_m=sizing.model_parameters_m(model)[0], gpu=gpu, threads=threads,
                               diarize=diarize)
    cap = sizing.parse_time(max_time) or ondemand.MAX_HOURS_WHEN_UNLIMITED * 3600
    if len(sizes) >= ondemand.MAX_FILES_SCANNED:
        estimated = cap  # the walk stopped: the app cannot know, and asks for the most
    else:
        durations = [size / ondemand.BYTES_PER_AUDIO_SECOND for size in sizes]
        estimated = sizing.time_limit_seconds(workload.task_seconds(durations), cap)
    seconds = min(hours * 3600, cap) if hours else estimated
    return seconds, workload.memory_mb(longest_seconds=max(sizes) / ondemand.BYTES_PER_AUDIO_SECOND)


def test_memory_and_time_follow_the_model_and_the_audio(workspace: Workspace):
    long_folder = workspace.allowed / "long"
    sparse_file(long_folder / "lecture.wav", 40_000_000)  # 40 MB: about 80 min at the assumed bitrate
    huge_folder = workspace.allowed / "huge"
    sparse_file(huge_folder / "archive.mp3", 4_000_000_000)
    jfk = (workspace.allowed / "talks" / "jfk.flac").stat().st_size

    def native(**choices) -> list[str]:
        return submit_form(workspace.app, workspace.session(), {**form(workspace.allowed / "talks"), **choices}, workspace.home).native

    short, long_ = native(), native(audio_path=str(long_folder))
    assert seconds(option(long_, "time")) > seconds(option(short, "time"))
    assert seconds(option(native(audio_path=str(huge_folder)), "time")) == 2 * 3600, "capped at the site's max_time"
    assert option(native(audio_path=str(huge_folder), hours="1"), "time") == "1:00:00", "the user's limit wins"
    # memory: the model's, from the batch tool's sizing (both models sit at the 1024 MB floor on a
    # CPU, so comparing them with each other would prove nothing), plus the waveform when diarizing
    assert memory(short) == sizing_says("tiny.en", False, False, [jfk], 0, "2:00:00")[1]
    assert memory(native(model="base")) == sizing_says("base", False, False, [jfk], 0, "2:00:00")[1]
    diarized = memory(native(diarize="1"))
    assert diarized == sizing_says("tiny.en", False, True, [jfk], 0, "2:00:00")[1] > memory(short)
    assert memory(native(audio_path=str(long_folder), diarize="1")) == \
        sizing_says("tiny.en", False, True, [40_000_000], 0, "2:00:00")[1] > diarized, "the longest recording's waveform"
    gpu_time = seconds(option(native(audio_path=str(long_folder), use_gpu="1"), "time"))
    assert gpu_time < seconds(option(long_, "time"))
    english_only = submit_form(workspace.app, workspace.session(), form(workspace.allowed / "talks", task="translate"), workspace.home)
    assert english_only.refused and "English only" in english_only.stderr


# model, GPU, diarization, recordings (bytes each, sparse), the user's hours, the site's max_time
SIZING_CASES = [
    ("tiny.en", False, False, [100_000], 0, "24:00:00"),
    ("tiny.en", False, False, [40_000_000], 0, "24:00:00"),
    ("tiny.en", True, False, [4_000_000_000], 24, "24:00:00"),
    ("base", False, True, [40_000_000, 8_000_000, 123_457], 0, "1-12"),
    ("base", True, False, [4_000_000_000], 0, "1-12"),
    ("base", False, False, [800_000_000], 0, "1-12"),
    ("base", False, False, [4_000_000_000], 0, "1-12"),
    ("tiny.en", False, True, [4_000_000_000], 0, "0-02"),
    ("tiny.en", True, True, [400_000_000, 1_000], 1, "0-02"),
    ("base", False, False, [40_000_000], 2, "0-02"),
    ("base", False, False, [4_000_000_000], 0, "UNLIMITED"),
    ("base", False, False, [4_000_000_000] * 4, 0, "UNLIMITED"),
    ("base", True, True, [80_000_000, 160_000_000], 5, "UNLIMITED"),
    ("tiny.en", True, False, [2_000_000] * 300, 0, "UNLIMITED"),
    ("tiny.en", False, False, [0] * ondemand.MAX_FILES_SCANNED, 0, "1-12"),
]


def sizing_case_id(case) -> str:
    model, gpu, diarize, sizes, hours, max_time = case
    total = sum(sizes)
    return (f"{model}-{'gpu' if gpu else 'cpu'}{'-diarize' if diarize else ''}-{len(sizes)}x"
            f"-{total // 1_000_000}MB-{hours}h-max{max_time}")


@pytest.mark.parametrize("case", SIZING_CASES, ids=[sizing_case_id(c) for c in SIZING_CASES])
def test_the_apps_ruby_sizes_jobs_as_python_does(tmp_path: Path, model_root: Path, ruby, case):
    """submit.yml.erb, evaluated by real Ruby, asks for the --time and --mem of
    ondemand.job_size, and job_size is the batch tool's sizing (whisper_hpc.sizing)."""
    model, gpu, diarize, sizes, hours, max_time = case
    allowed = tmp_path / "allowed"
    folder = allowed / "audio"
    for number, size in enumerate(sizes):
        sparse_file(folder / f"part{number:05d}.wav", size)
    sparse_file(folder / ".partial.wav", 8_000_000_000)  # hidden: never counted
    (folder / "notes.txt").write_text("not audio")
    home = tmp_path / "home"
    home.mkdir()
    site = make_site(model_root, [allowed], slurm={"max_time": max_time})
    app = ondemand.install(site, tmp_path / "prefix")
    values = form(folder, model=model, use_gpu="1" if gpu else "0", diarize="1" if diarize else "0", hours=str(hours))
    submission = submit_form(app, tmp_path / "session", values, home)
    ruby_size = (seconds(option(submission.native, "time")), memory(submission.native))

    needs = ondemand.job_policy(site, site_context(site)["models"], tmp_path / "prefix")["needs"][model]
    python_size = ondemand.job_size(needs, len(sizes), sum(sizes), max(sizes), hours, sizing.parse_time(max_time),
                                    gpu, diarize)
    assert ruby_size == python_size, "the app's Ruby and ondemand.job_size disagree"
    assert python_size == sizing_says(model, gpu, diarize, sizes, hours, max_time), "job_size is not the batch tool's sizing"

    cut_short = len(sizes) >= ondemand.MAX_FILES_SCANNED
    assert submission.environment == {
        "WHISPER_OOD_AUDIO_FILES": f"{len(sizes)}{'+' if cut_short else ''}",
        "WHISPER_OOD_AUDIO_BYTES": str(sum(sizes)),
        "WHISPER_OOD_TIME": option(submission.native, "time"),
        "WHISPER_OOD_MEM": f"{python_size[1]}M",
    }
    assert ("--gres=gpu:1" in submission.native) == gpu and "--cpus-per-task=2" in submission.native


def test_site_time_limits_in_every_slurm_form():
    """The site's max_time caps the job in seconds, whichever of Slurm's forms it is written in."""
    assert [sizing.parse_time(t) for t in ("1-12", "0-02", "24:00:00", "90", "UNLIMITED")] == \
        [129600, 7200, 86400, 5400, None]
    assert [ondemand.time_cap(sizing.parse_time(t)) for t in ("1-12", "0-02", "UNLIMITED")] == \
        [129600, 7200, ondemand.MAX_HOURS_WHEN_UNLIMITED * 3600]


def test_only_submit_walks_the_audio(workspace: Workspace):
    """The folder scan and the sizing are evaluated once, in submit.yml.erb; the job's templates keep
    the form checks they need for the command line and read the size from the job's environment."""
    submit = (workspace.app / "submit.yml.erb").read_text(encoding="utf-8")
    assert submit.count("Find.find(") == 1 and submit.count("estimate =") == 1 and "job_environment:" in submit
    for name in ("template/before.sh.erb", "template/script.sh.erb"):
        text = (workspace.app / name).read_text(encoding="utf-8")
        for sizing_code in ('require "find"', "Find.find(", "estimate =", "memory_mb =", '"--mem=#{'):
            assert sizing_code not in text, f"{name} sizes the job again ({sizing_code})"
        assert "File.realpath(requested)" in text, f"{name} still checks the path it writes into bash"
    assert "WHISPER_OOD_AUDIO_FILES" in (workspace.app / "template" / "before.sh.erb").read_text(encoding="utf-8")


def test_sizes_come_from_the_sizing_model(tmp_path: Path, model_root: Path):
    site = make_site(model_root, [tmp_path])
    models = [{"name": "tiny.en", "path": str(model_root / "tiny.en"), "english_only": True}]
    needs = ondemand.job_policy(site, models, tmp_path)["needs"]["tiny.en"]
    for gpu in (False, True):
        for diarize in (False, True):
            workload = sizing.Workload(parameters_m=sizing.model_parameters_m("tiny.en")[0], gpu=gpu, threads=2,
                                       diarize=diarize)
            key = ("gpu" if gpu else "cpu") + ("_diarize" if diarize else "")
            assert needs[key] == {"memory_mb": workload.memory_mb(), "rtf": workload.rtf_bound(),
                                  "load_seconds": workload.load_seconds()}


# ---- the completed view --------------------------------------------------------------------------


def test_completed_view_lists_the_transcripts_escaped(workspace: Workspace):
    session = workspace.session()
    (session / "transcripts" / "sub").mkdir(parents=True)
    (session / "transcripts" / "jfk.txt").write_text("And so my fellow Americans")
    (session / "transcripts" / "sub" / "<i>x<i> & 'y'.srt").write_text("1")
    html = render_completed(workspace.app, session, workspace.home)
    assert "2 file(s)" in html
    assert ">jfk.txt</a>" in html and "(26 bytes)" in html
    assert "sub/&lt;i&gt;x&lt;i&gt; &amp; &#39;y&#39;.srt" in html and "<i>x" not in html
    assert "/pun/sys/dashboard/files/fs/" in html and "/sub/%3Ci%3Ex%3Ci%3E%20%26%20%27y%27.srt" in html

    empty = render_completed(workspace.app, workspace.session("failed"), workspace.home)
    assert "No transcripts were written" in empty and "output.log" in empty
    assert "batch report" not in html and "batch report" not in empty, "no link to a report the job did not write"

    (session / ondemand.REPORT_FILE).write_text("<html>the report</html>")
    linked = render_completed(workspace.app, session, workspace.home)
    report_url = "/pun/sys/dashboard/files/fs/" + "/".join(quote(part, safe="") for part in
                                                           (session / ondemand.REPORT_FILE).parts[1:])
    assert f'<a href="{report_url}">the batch report</a>' in linked
    assert "2 file(s)" in linked, "the report is not counted among the transcripts"


# ---- through the real cluster ------------------------------------------------------------------


def test_the_installed_app_is_rendered_from_the_installed_site(installed_prefix, ruby):
    app = installed_prefix.prefix / "ondemand" / "whisper"
    assert (app / "template" / "script.sh.erb").is_file(), installed_prefix.messages
    attributes = ruby_yaml(app / "form.yml")["attributes"]
    assert attributes["audio_path"]["favorites"] == ["/home", "/scratch"]
    assert attributes["hours"]["max"] == 1, "the site's max_time, 01:00:00"
    for module in ondemand.MODULES.values():
        assert (installed_prefix.prefix / "modulefiles" / module / "0.1.0.lua").is_file(), f"the job loads {module}/0.1.0"


def sbatch_as_ondemand(cluster, submission: Submission, home: Path) -> str:
    """Submit as OnDemand's Slurm adapter does: its arguments (--export naming job_environment),
    with job_environment in sbatch's own environment. Unlike OnDemand, HOME (a temporary one) is
    exported too, so that not even a quoting mistake could reach a real home folder."""
    args = list(submission.job["args"])
    at = args.index("--export")
    assert args[at + 1] not in ("NONE", "ALL"), args
    args[at + 1] += ",HOME"
    return cluster.sbatch(submission.job["script"], options=args, env={"HOME": str(home), **submission.environment})


def test_forms_submitted_with_real_sbatch_write_real_transcripts(
        tmp_path: Path, shared_data: Path, installed_prefix, slurm_cluster, ruby):
    """The app rendered for the installed site, its job sent with the cluster's sbatch: real
    transcripts for normal and hostile names, and nothing executed from any name."""
    allowed = tmp_path / "allowed"
    hostile_folder = allowed / "talks" / HOSTILE_NAME
    hostile_folder.mkdir(parents=True)
    shutil.copy(shared_data / "jfk.flac", allowed / "talks" / "jfk.flac")
    shutil.copy(shared_data / "jfk.flac", hostile_folder / f"{HOSTILE_NAME}.flac")
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("still here")
    site = with_ondemand(load_site(installed_prefix.site_file), allowed_roots=(str(allowed),), cpus_per_task=2)
    app = ondemand.install(site, installed_prefix.prefix, target=tmp_path / "app")

    good = submit_form(app, tmp_path / "sessions" / "good", form(allowed / "talks", email_when_done="1"), home)
    moved = submit_form(app, tmp_path / "sessions" / "moved", form(allowed / "talks" / "jfk.flac"), home)
    refused = submit_form(app, tmp_path / "sessions" / "refused", form(allowed / "talks", language='"; rm -rf ~; "'), home)
    assert refused.refused and not (refused.session / "job_script_content.sh").exists()
    # between submission and the job start, the file is swapped for a link to outside the allowed folders
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(shared_data / "jfk.flac", outside / "jfk.flac")
    assert moved.returncode == 0, moved.stderr

    job_id = sbatch_as_ondemand(slurm_cluster, good, home)
    assert slurm_cluster.wait(job_id, timeout=900) == "COMPLETED", (good.session / "output.log").read_text()
    transcripts = good.session / "transcripts"
    assert "country" in (transcripts / "jfk.txt").read_text(encoding="utf-8").lower()
    hostile_txt = transcripts / HOSTILE_NAME / f"{HOSTILE_NAME}.txt"
    assert "country" in hostile_txt.read_text(encoding="utf-8").lower(), "the hostile name is just a name"
    for fmt in FORMATS:
        assert (transcripts / f"jfk.{fmt}").stat().st_size > 0
    html = render_completed(app, good.session, home)
    assert f"{2 * len(FORMATS)} file(s)" in html and ">jfk.srt</a>" in html, "each format, for each recording"
    log = (good.session / "output.log").read_text(encoding="utf-8")
    assert "(2 file(s), model tiny.en)" in log and f"--time={good.environment['WHISPER_OOD_TIME']}" in log, \
        "the size reached the job through job_environment"
    report = (good.session / ondemand.REPORT_FILE).read_text(encoding="utf-8")
    assert re.search(r'id="count-done">2<', report) and re.search(r'id="count-failed">0<', report), report[:2000]
    assert "2 done, 0 failed, 0 left" in log, "the report's summary is in the job's log"
    assert "the batch report</a>" in html and quote(ondemand.REPORT_FILE) in html

    (allowed / "talks" / "jfk.flac").unlink()
    (allowed / "talks" / "jfk.flac").symlink_to(outside / "jfk.flac")
    moved_id = sbatch_as_ondemand(slurm_cluster, moved, home)
    assert slurm_cluster.wait(moved_id, timeout=300) == "FAILED"
    log = (moved.session / "output.log").read_text(encoding="utf-8")
    assert "outside the folders this app may read" in log and "Script starting" not in log
    assert not (moved.session / "transcripts" / "jfk.txt").exists()

    assert sentinels_in(tmp_path, home, names=SENTINELS) == []
    assert (home / "canary").read_text() == "still here"
