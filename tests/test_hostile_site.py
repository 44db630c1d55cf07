"""Hostile site values are harmless in every file `make install` renders.

One installation is made with quotes, Lua long-string closers, Lua and shell metacharacters, line
breaks, carriage returns and unicode in [site] name and support, in every path the schema takes (the
prefix, the model root, the images), in the site file's own path, and in the folder names of the
staged models. Then, with a sentinel file PWNED that any executed breakout would leave behind:

- the modulefiles run in plain Lua with Lmod's functions recorded (every value arrives exactly as
  given, and nothing else is called), and with the real Lmod: load, help, whatis, unload;
- the copy-paste commands of `module help` and the job scripts run with stand-ins for sbatch, srun,
  whisper-batch and singularity_wrapper that record their argv: the hostile values are whole
  arguments, never words or commands of their own;
- what the schema refuses (line breaks, ',' and ':' in paths, shell characters in Slurm names, ...)
  stops `make install` before anything is written.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster_fixtures import LMOD_INIT, SYSTEM_PATH
from conftest import ROOT, need

pytestmark = pytest.mark.system

VERSION = "0.1.0"
SENTINEL = "PWNED"  # every breakout below creates a file of this name where it runs
LUA_BREAKOUTS = ']==] ]] ]=] .. -- os.execute("touch PWNED") --[['
SHELL_BREAKOUTS = "$(touch PWNED) `touch PWNED` ; touch PWNED && touch PWNED | tee PWNED > PWNED"
# One line: what a path or a folder name may hold (no '/', ',', ':' or control character).
ASCII_LINE = f"'single' \"double\" {LUA_BREAKOUTS} {SHELL_BREAKOUTS} \\ $HOME ${{IFS}} * ? ~ ! #"
ONE_LINE = ASCII_LINE + " Zürich 東京 ✓ — … ★"
# The prefix (so MODULEPATH) keeps to ASCII: with other characters in a MODULEPATH folder, Lmod 8.6
# loses track of loaded modules, depending on the path's length (unload leaves the variables set, or
# "The module table stored in the environment is corrupt"); its UTF-8 is no concern of the templates.
PREFIX_LINE = ASCII_LINE
# Several lines: what [site] name and support may hold.
LINE_BREAKS = ("\nos.execute('touch PWNED')\n#SBATCH --account=evil\ntouch PWNED\r\ntouch PWNED\r"
               "-- ]==] os.execute(\"touch PWNED\")\n\n]===]")
SITE_NAME = f"Uni {ONE_LINE}{LINE_BREAKS}"
# Valid Lua and valid shell at once, if it ever got out of its comment line: a Lua long comment
# that bash runs as the lines `--[[`, `touch PWNED`, ...; Lua runs the os.execute after it.
POLYGLOT = 'Polyglot\n--[[ 2>/dev/null\ntouch PWNED\n: ]] os.execute("touch PWNED")\n--'
SUPPORT = 'hpc-help "desk" ]] ]==] $(touch PWNED)\r\n`touch PWNED`\nos.execute("touch PWNED") ✉'

CPU_MODEL = f"small.en {ONE_LINE}"           # [models] default: the CPU example of help and job scripts
GPU_MODEL = f"large-v3 {ONE_LINE}"           # the largest: the GPU example
ODD_MODELS = ("tiny.en", 'x"); os.execute("touch PWNED") --', "`touch PWNED`", "a]==]b ]]", "Zürich-модель")
LEFT_OUT = ("line\nbreak $(touch PWNED)", "carriage\rreturn")      # a control character: no module variable
REFUSED = ("1st $(touch PWNED)", "PATH", "model_names")            # install.usable_models says no
USABLE = tuple(sorted((CPU_MODEL, GPU_MODEL) + ODD_MODELS))

LMOD_BOOKKEEPING = re.compile(r"^(_ModuleTable\d+_|__LMOD_REF_COUNT_|__LMOD_STACK_|_LMFILES_$|LOADEDMODULES$|"
                              r"MODULEPATH$|__LMOD_Priority_)")


def variable(name: str) -> str:
    from whisper_hpc.model_store import variable_name

    return variable_name(name)


def toml(value) -> str:
    from whisper_hpc.site import toml_value

    return toml_value(value)


def as_lua_long_string(text: str) -> str:
    """What a Lua long string makes of text: every line break (\\r, \\r\\n, \\n\\r, \\n) is \\n."""
    return re.sub(r"\r\n|\n\r|\r|\n", "\n", text)


def sentinels(*places: Path) -> list[str]:
    """Every file or folder named PWNED under the places (symbolic links not followed)."""
    found = []
    for place in places:
        for folder, folders, files in os.walk(place):
            found += [os.path.join(folder, name) for name in folders + files if name == SENTINEL]
    return found


@dataclass
class Installation:
    base: Path
    prefix: Path
    model_root: Path
    images: Path
    site_file: Path
    work: Path            # the current folder of everything run here
    home: Path
    stubs: Path
    result: subprocess.CompletedProcess
    models: tuple[str, ...]

    @property
    def modulefiles(self) -> Path:
        return self.prefix / "modulefiles"

    def module(self, name: str) -> Path:
        return self.modulefiles / name / f"{VERSION}.lua"

    def script(self, name: str) -> Path:
        return self.prefix / "slurm" / f"whisper-{name}.sbatch"

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "HOME": str(self.home), "USER": "tester", "LOGNAME": "tester",
                "LANG": "C.UTF-8", "TMPDIR": str(self.base / "tmp"), "TERM": "dumb", "SHELL": "/bin/bash", **extra}

    def bash(self, snippet: str, **env: str) -> subprocess.CompletedProcess:
        """`snippet` in a clean bash in the work folder, after Lmod's init and `module use PREFIX/modulefiles`."""
        prologue = f'source {LMOD_INIT}\nmodule use "$MODULES"\n'
        return subprocess.run(["bash", "-c", prologue + snippet], env=self.env(MODULES=str(self.modulefiles), **env),
                              cwd=self.work, capture_output=True, text=True, timeout=300)

    def no_sentinel(self) -> None:
        found = sentinels(self.base) + [str(p) for p in (ROOT / SENTINEL, Path.cwd() / SENTINEL) if p.exists()]
        assert not found, f"a hostile value was executed: {found}"


STUB = """#!/bin/bash
# Stand-in for {name}: records its argv (name, count, arguments; NUL-separated) and does nothing else.
printf '%s\\0' {name} "$#" "$@" >> "$RECORD"
{tail}
"""
# srun runs its command (after its own options): the wrapper stand-in when that is singularity_wrapper.
SRUN_TAIL = """while [ "${1#-}" != "$1" ]; do shift; done
if [ "$1" = singularity_wrapper ]; then shift; exec "$(dirname "$0")/singularity_wrapper" "$@"; fi"""
WRAPPER_TAIL = 'printf \'%s\\0\' environment 3 "$CONTAINER_IMAGE" "$WHISPER_MODELS" "$WHISPER_HPC_SITE" >> "$RECORD"'


def write_stubs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, tail in (("sbatch", ""), ("srun", SRUN_TAIL), ("whisper-batch", ""), ("singularity_wrapper", WRAPPER_TAIL)):
        path = folder / name
        path.write_text(STUB.format(name=name, tail=tail))
        path.chmod(0o755)


def recorded(path: Path) -> list[list[str]]:
    """The calls a record file holds: [[program, arg1, ...], ...]."""
    if not path.exists():
        return []
    fields = path.read_bytes().decode("utf-8", "surrogateescape").split("\0")[:-1]
    calls = []
    while fields:
        name, count = fields[0], int(fields[1])
        calls.append([name, *fields[2:2 + count]])
        fields = fields[2 + count:]
    return calls


def hostile_installation(base: Path, source_models: Path, models: tuple[str, ...], default: str = "",
                         site_name: str = SITE_NAME, site_folder: str = "site folder " + ONE_LINE + "\n$(touch PWNED)\r",
                         ) -> Installation:
    """`python -m whisper_hpc.install` run (from a work folder) for a hostile site file."""
    model_root = base / ("models " + ONE_LINE)
    model_root.mkdir(parents=True)
    for name in models:
        (model_root / name).symlink_to(source_models / "tiny.en", target_is_directory=True)
    prefix = base / ("prefix " + PREFIX_LINE)
    images = base / ("images " + ONE_LINE)
    (base / site_folder).mkdir()
    site_file = base / site_folder / "site.toml"
    site_file.write_text(f"""\
[site]
name = {toml(site_name)}
support = {toml(SUPPORT)}
module_version = "{VERSION}"

[paths]
prefix = {toml(str(prefix))}
model_root = {toml(str(model_root))}
images = {toml(str(images))}

[models]
default = {toml(default)}

[wrapper]
native_fallback = true

[slurm]
partition = "batch"
account = "acct-1"
gpu_gres = "gpu:1"
max_time = "02:00:00"
array_throttle = 4
cpus_per_task = 2
""", encoding="utf-8")
    work, home = base / "work", base / "home"
    for folder in (work, home, base / "tmp"):
        folder.mkdir()
    stubs = base / "stubs"
    write_stubs(stubs)
    installation = Installation(base, prefix, model_root, images, site_file, work, home, stubs, None, models)
    result = subprocess.run([sys.executable, "-m", "whisper_hpc.install", "--site", str(site_file), "--prefix", str(prefix),
                             "--images", str(base / "no-images"), "--venv", sys.prefix],
                            env={**installation.env(), "PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}"},
                            cwd=work, capture_output=True, text=True, timeout=300)
    installation.result = result
    return installation


@pytest.fixture(scope="module")
def installed(tmp_path_factory, model_root) -> Installation:
    base = tmp_path_factory.mktemp("hostile")
    models = (CPU_MODEL, GPU_MODEL) + ODD_MODELS + LEFT_OUT + REFUSED
    installation = hostile_installation(base, model_root, models, default=CPU_MODEL)
    assert installation.result.returncode == 0, installation.result.stderr
    return installation


@pytest.fixture(scope="module")
def bare(tmp_path_factory, model_root) -> Installation:
    """The same hostile site with no model staged."""
    installation = hostile_installation(tmp_path_factory.mktemp("hostile-bare"), model_root, ())
    assert installation.result.returncode == 0, installation.result.stderr
    return installation


@pytest.fixture(scope="module")
def polyglot(tmp_path_factory, model_root) -> Installation:
    """The hostile site named POLYGLOT, with tiny.en staged."""
    installation = hostile_installation(tmp_path_factory.mktemp("hostile-polyglot"), model_root, ("tiny.en",),
                                        site_name=POLYGLOT, site_folder="etc")
    assert installation.result.returncode == 0, installation.result.stderr
    return installation


@pytest.fixture
def lmod_installed():
    need(LMOD_INIT.is_file(), f"Lmod is not installed ({LMOD_INIT}); run tests/infra/install-cluster.sh")


# ----- make install --------------------------------------------------------------------------------

def test_install_takes_the_hostile_site_and_names_the_models_it_leaves_out(installed):
    from whisper_hpc.render import lua_string

    said = installed.result.stderr
    for name in REFUSED:
        assert f"model {name} is staged but ${variable(name)} cannot be a module variable" in said
    for name in LEFT_OUT:
        assert f"model {name!r} is staged but its folder name has a control character" in said
    for module in ("whisper", "whisper-diarization"):
        text = installed.module(module).read_text(encoding="utf-8")
        for name in REFUSED + LEFT_OUT:
            assert lua_string(installed.model_root / name) not in text, name
        for name in USABLE:
            assert f"pushenv({lua_string(variable(name))}, {lua_string(installed.model_root / name)})" in text, name
    for script in ("cpu", "gpu", "array"):
        assert os.access(installed.script(script), os.X_OK)
    site = tomllib.loads((installed.prefix / "etc" / "site.toml").read_text(encoding="utf-8"))
    assert site["site"]["name"] == SITE_NAME and site["site"]["support"] == SUPPORT
    assert site["paths"]["model_root"] == str(installed.model_root)
    installed.no_sentinel()


def test_the_rendered_files_stay_readable(installed):
    """Comment lines stay one line (a line break shows as \\n), the help's long string is opened
    at a level its text cannot close, and unusual paths are quoted only where a shell reads them."""
    lua = installed.module("whisper").read_text(encoding="utf-8")
    first = lua.splitlines()[0]
    assert first.startswith("-- whisper/0.1.0: Whisper speech transcription (Uni 'single'")
    assert "\\nos.execute('touch PWNED')\\n#SBATCH --account=evil\\ntouch PWNED\\r\\n" in first
    assert "help([====[\n" in lua and "]====])" in lua  # the text holds ]==] and ]===]
    cpu = installed.script("cpu").read_text(encoding="utf-8")
    assert cpu.splitlines()[1].startswith("# Transcribe one recording on CPU cores (Uni 'single'")
    assert f"module use {shlex.quote(str(installed.modulefiles))}\n" in cpu
    assert f'--model_directory "${variable(CPU_MODEL)}" "$@"' in cpu


# ----- the modulefiles -----------------------------------------------------------------------------

LUA_HARNESS = r"""
-- Lmod's functions, recorded: one line per call, its name then each argument in hex.
local function hex(s) return (tostring(s):gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
local function recorder(name)
    return function(...)
        local line = {name}
        for i = 1, select("#", ...) do line[#line + 1] = hex((select(i, ...))) end
        print(table.concat(line, " "))
    end
end
for _, name in ipairs({"whatis", "help", "pushenv", "setenv", "prepend_path", "append_path", "conflict", "family",
                       "LmodMessage"}) do _G[name] = recorder(name) end
os.execute, io.popen, os.remove, os.rename = recorder("os.execute"), recorder("io.popen"), recorder("os.remove"),
                                             recorder("os.rename")
function mode() return "load" end
lfs = require("lfs")  -- as Lmod's sandbox hands it to modulefiles
function pathJoin(...) return table.concat({...}, "/") end
dofile(arg[1])
"""


def lua_calls(installation: Installation, module: str) -> list[tuple[str, list[str]]]:
    lua = shutil.which("lua5.3") or shutil.which("lua")
    need(lua is not None, "no lua interpreter (Lmod's lua5.3)")
    harness = installation.base / "harness.lua"
    harness.write_text(LUA_HARNESS)
    result = subprocess.run([lua, str(harness), str(installation.module(module))], cwd=installation.work,
                            env=installation.env(), capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    calls = []
    for line in result.stdout.decode().splitlines():
        name, *arguments = line.split(" ")
        calls.append((name, [bytes.fromhex(a).decode("utf-8") for a in arguments]))
    return calls


@pytest.mark.parametrize("module", ["whisper", "whisper-diarization"])
def test_the_modulefile_hands_lmod_every_value_exactly_and_calls_nothing_else(installed, module):
    calls = lua_calls(installed, module)
    assert {name for name, _ in calls} <= {"whatis", "help", "pushenv", "prepend_path", "conflict", "family", "LmodMessage"}
    pushed = {arguments[0]: arguments[1] for name, arguments in calls if name == "pushenv"}
    for name in USABLE:
        assert pushed[variable(name)] == str(installed.model_root / name), name
    assert pushed["model_names"] == " ".join(variable(name) for name in USABLE)
    assert pushed["WHISPER_MODELS"] == str(installed.model_root)
    image = "whisper-diarization.sif" if module == "whisper-diarization" else "whisper.sif"
    assert pushed["CONTAINER_IMAGE"] == str(installed.images / image)
    assert pushed["WHISPER_HPC_SITE"] == str(installed.prefix / "etc" / "site.toml")
    assert ("prepend_path", ["PATH", str(installed.prefix / "bin")]) in calls
    assert ("whatis", ["Models: " + " ".join(USABLE)]) in calls
    assert ("conflict", [module]) in calls
    [help_text] = [arguments[0] for name, arguments in calls if name == "help"]
    assert f"({as_lua_long_string(SITE_NAME)})\n" in help_text
    assert f"  Help: {as_lua_long_string(SUPPORT)}\n" in help_text
    for name in USABLE:
        assert f"  ${variable(name):<12} {name:<13} " in help_text, name
    installed.no_sentinel()


def test_with_no_model_staged_the_help_asks_support(bare):
    calls = lua_calls(bare, "whisper")
    [help_text] = [arguments[0] for name, arguments in calls if name == "help"]
    assert f"(none staged yet: ask {as_lua_long_string(SUPPORT)})\n" in help_text
    assert ("whatis", ["Models: none staged"]) in calls
    bare.no_sentinel()


@pytest.mark.parametrize("module", ["whisper", "whisper-diarization"])
def test_lmod_loads_and_unloads_the_hostile_module_running_nothing(installed, module, lmod_installed):
    own = {"HF_HOME": "/mine/hf", variable(CPU_MODEL): "mine", "PATH": f"/mine/bin:{SYSTEM_PATH}"}
    result = installed.bash(f"env -0 > before.env; module load {module}/{VERSION} && env -0 > loaded.env && "
                            f"module unload {module}/{VERSION} && env -0 > after.env", **own)
    assert result.returncode == 0, result.stderr
    assert "command not found" not in result.stderr and "Lmod has detected" not in result.stderr, result.stderr
    assert result.stdout == ""
    assert f"{module}/{VERSION} loaded. Models: " in result.stderr
    loaded = environment_of(installed.work / "loaded.env")
    for name in USABLE:
        assert loaded[variable(name)] == str(installed.model_root / name), name
    assert loaded["WHISPER_MODELS"] == str(installed.model_root)
    assert loaded["PATH"].split(":")[0] == str(installed.prefix / "bin")
    assert loaded["model_names"].split() == [variable(name) for name in USABLE]
    before = environment_of(installed.work / "before.env")
    after = environment_of(installed.work / "after.env")
    unbookkept = lambda env: {k: v for k, v in env.items() if not LMOD_BOOKKEEPING.match(k)}  # noqa: E731
    assert unbookkept(after) == unbookkept(before)
    installed.no_sentinel()


def environment_of(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text(encoding="utf-8").split("\0") if "=" in item)


@pytest.mark.parametrize("module", ["whisper", "whisper-diarization"])
def test_lmod_help_and_whatis_show_the_hostile_text_literally(installed, module, lmod_installed):
    result = installed.bash(f"module help {module}/{VERSION}; module whatis {module}/{VERSION}")
    assert result.returncode == 0, result.stderr
    assert "Lmod has detected" not in result.stderr, result.stderr
    assert as_lua_long_string(SITE_NAME) in result.stderr and as_lua_long_string(SUPPORT) in result.stderr
    assert "Models: " + " ".join(USABLE) in result.stderr
    for name in USABLE:
        assert name in result.stderr
    installed.no_sentinel()


def help_commands(help_text: str) -> list[str]:
    """The copy-paste command lines of the help (each on one line)."""
    return [line.strip() for line in help_text.splitlines()
            if line.startswith(("    srun ", "    sbatch ", "    whisper-batch submit ", "    singularity_wrapper exec ",
                                "    WHISPER_MODELS="))]


def test_the_help_commands_pasted_into_a_shell_pass_the_hostile_paths_whole(installed, lmod_installed):
    record = installed.base / "help-commands.record"
    record.unlink(missing_ok=True)
    help_text = installed.bash(f"module help whisper/{VERSION}").stderr
    commands = help_commands(help_text)
    assert len(commands) == 11, commands
    (installed.work / "files.txt").write_text("a.wav\nb.wav\nc.wav\n")
    script = f"module load whisper/{VERSION} 2>/dev/null\nPATH=\"$STUBS:$PATH\"\n" + "\n".join(commands) + "\n"
    result = installed.bash(script, STUBS=str(installed.stubs), RECORD=str(record))
    assert result.returncode == 0, result.stderr
    slurm = installed.prefix / "slurm"
    cpu, gpu = (str(installed.model_root / name) for name in (CPU_MODEL, GPU_MODEL))
    calls = [call for call in recorded(record) if call[0] != "environment"]
    assert calls == [
        ["srun", f"--mem={memory_request(CPU_MODEL)}", "singularity_wrapper", "run", "talk.wav", "--model_directory", cpu],
        ["singularity_wrapper", "run", "talk.wav", "--model_directory", cpu],
        ["srun", "--gres=gpu:1", "--mem=8G", "singularity_wrapper", "run", "talk.wav", "--model_directory", gpu,
         "--device", "cuda"],
        ["singularity_wrapper", "run", "talk.wav", "--model_directory", gpu, "--device", "cuda"],
        ["sbatch", str(slurm / "whisper-cpu.sbatch"), "talk.wav", "--language", "en"],
        ["sbatch", str(slurm / "whisper-gpu.sbatch"), "talk.wav"],
        ["sbatch", "--gres=gpu:4", "--cpus-per-task=8", "--mem=32G", str(slurm / "whisper-gpu.sbatch"), "recordings/",
         "--output_dir", "transcripts/"],
        ["whisper-batch", "submit", "recordings/", "--model", CPU_MODEL, "--output_dir", "transcripts/"],
        ["sbatch", "--array=1-3%4", str(slurm / "whisper-array.sbatch"), "files.txt"],
        ["singularity_wrapper", "exec", "whisper-finetune", "prepare", "data.tsv", "--model", CPU_MODEL, "--output",
         "my-run"],
        ["sbatch", str(slurm / "whisper-finetune.sbatch"), "my-run", "--method", "lora", "--max_steps", "1000",
         "--save_every", "100"],
        ["singularity_wrapper", "exec", "whisper-finetune", "export", "my-run", "--name", "my-model", "--root",
         "my-models"],
        ["singularity_wrapper", "run", "talk.wav", "--model", "my-model"],
    ]
    environments = [call for call in recorded(record) if call[0] == "environment"]
    assert environments[-1][2] == str(installed.work / "my-models")  # the run's own model root
    installed.no_sentinel()


# ----- the job scripts -----------------------------------------------------------------------------

def expected_sbatch(script: str) -> list[str]:
    """The #SBATCH options of a job script, and nothing else (--mem and --time as sizing.py says)."""
    from whisper_hpc import sizing

    time = "--time=" + sizing.format_time(sizing.example_job_seconds("02:00:00"))
    cpu_mem = f"--mem={memory_request(CPU_MODEL)}"
    return {
        "cpu": ["--job-name=whisper", "--cpus-per-task=2", cpu_mem, time, "--output=whisper-%j.log"],
        "gpu": ["--job-name=whisper-gpu", "--gres=gpu:1", "--cpus-per-task=2", "--mem=8G", time, "--output=whisper-%j.log"],
        "array": ["--job-name=whisper-array", "--cpus-per-task=2", cpu_mem, time, "--output=whisper-%A_%a.log"],
    }[script] + ["--partition=batch", "--account=acct-1"]


def memory_request(model: str) -> str:
    from whisper_hpc import sizing

    return sizing.workload_memory(sizing.model_parameters_m(model)[0])


@pytest.mark.parametrize("script", ["cpu", "gpu", "array"])
def test_job_scripts_parse_and_hold_the_hostile_text_in_comments_only(installed, script):
    path = installed.script(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    lines = path.read_text(encoding="utf-8").split("\n")
    assert "\r" not in path.read_text(encoding="utf-8")
    header = lines[:lines.index("set -eo pipefail")]
    assert all(line.startswith("#") for line in header), header  # no line of code among the #SBATCH lines
    options = [line.removeprefix("#SBATCH ") for line in header if line.startswith("#SBATCH")]
    assert options == expected_sbatch(script)
    for line in lines:
        if "touch PWNED" in line or "os.execute(" in line:  # hostile text, not a variable made of it
            if not line.startswith("#"):
                assert shlex.split(line) == ["module", "use", str(installed.modulefiles)], line


def run_job(installation: Installation, script: str, arguments: list[str], record: Path, **env: str):
    record.unlink(missing_ok=True)
    return subprocess.run(["bash", str(installation.script(script)), *arguments],
                          env=installation.env(PATH=f"{installation.stubs}:{SYSTEM_PATH}", RECORD=str(record), **env),
                          cwd=installation.work, capture_output=True, text=True, timeout=300)


HOSTILE_FILE = "talk $(touch PWNED) `touch PWNED`; 'q' \"dq\" ]==] *.wav"
HOSTILE_FLAGS = ["--initial_prompt", ONE_LINE + LINE_BREAKS, "--output_dir", "out $(touch PWNED)"]


@pytest.mark.parametrize("script, extra, model, image", [
    ("cpu", [], CPU_MODEL, "whisper.sif"),
    ("cpu", ["--diarize"], CPU_MODEL, "whisper-diarization.sif"),
    ("gpu", [], GPU_MODEL, "whisper.sif"),
    ("array", [], CPU_MODEL, "whisper.sif"),
])
def test_job_scripts_run_with_hostile_values_and_pass_them_whole(installed, script, extra, model, image, lmod_installed):
    record = installed.base / f"job-{script}.record"
    flags = HOSTILE_FLAGS + extra
    if script == "array":
        files = installed.work / ("list " + ONE_LINE)
        files.write_text(f"first.wav\n{HOSTILE_FILE}\r\nthird.wav\n", encoding="utf-8")
        result = run_job(installed, script, [str(files), *flags], record, SLURM_ARRAY_TASK_ID="2")
    else:
        result = run_job(installed, script, [HOSTILE_FILE, *flags], record)
    assert result.returncode == 0, result.stderr
    assert "command not found" not in result.stderr and "Lmod has detected" not in result.stderr, result.stderr
    device = ["--device", "cuda"] if script == "gpu" else []
    wrapper = ["run", "--model_directory", str(installed.model_root / model), *device, *flags, "--", HOSTILE_FILE]
    assert recorded(record) == [
        ["srun", "singularity_wrapper", *wrapper],
        ["singularity_wrapper", *wrapper],
        ["environment", str(installed.images / image), str(installed.model_root),
         str(installed.prefix / "etc" / "site.toml")],
    ]
    installed.no_sentinel()


def test_job_scripts_of_a_site_with_no_models_pass_the_users_flags_whole(bare, lmod_installed):
    record = bare.base / "bare.record"
    result = run_job(bare, "cpu", [HOSTILE_FILE, *HOSTILE_FLAGS], record)
    assert result.returncode == 0, result.stderr
    assert recorded(record)[0] == ["srun", "singularity_wrapper", "run", *HOSTILE_FLAGS, "--", HOSTILE_FILE]
    assert '--model_directory "$' not in bare.script("gpu").read_text()
    bare.no_sentinel()


# ----- what the schema refuses ---------------------------------------------------------------------

REFUSALS = [
    ("site", "module_version", '0.1.0"); os.execute("touch PWNED") --'),
    ("site", "module_version", "0.1.0\nos.execute('touch PWNED')"),
    ("site", "module_version", "0.1.0 $(touch PWNED)"),
    ("paths", "prefix", "/opt/whisper\n$(touch PWNED)"),
    ("paths", "model_root", "/models\r$(touch PWNED)"),
    ("paths", "model_root", "/models,/etc"),
    ("paths", "images", "/images:/opt"),
    ("paths", "images", "images"),
    ("wrapper", "data_areas", ["/home", "/scratch\n$(touch PWNED)"]),
    ("wrapper", "data_areas", ["/home:/etc"]),
    ("wrapper", "scratch_variables", ["TMPDIR; touch PWNED"]),
    ("wrapper", "apptainer", "apptainer $(touch PWNED)"),
    ("slurm", "partition", "batch;touch PWNED"),
    ("slurm", "partition", "batch\n#SBATCH --account=evil"),
    ("slurm", "partition", "$(touch PWNED)"),
    ("slurm", "account", "a b"),
    ("slurm", "account", "`touch PWNED`"),
    ("slurm", "account", "acct|tee PWNED"),
    ("slurm", "gpu_gres", "gpu:1 --wrap=touch"),
    ("slurm", "gpu_gres", "gpu:1\n#SBATCH --account=evil"),
    ("slurm", "max_time", "01:00:00\n#SBATCH --account=evil"),
    ("slurm", "max_time", "01:00:00 && touch PWNED"),
    ("ondemand", "lmod_init", "/usr/share/lmod/lmod/init/bash\ntouch PWNED"),
    ("ondemand", "allowed_roots", ["/home,/etc"]),
    ("ondemand", "cluster", "cluster; touch PWNED"),
]


def write_site_with(path: Path, prefix: Path, model_root: Path, table: str, key: str, value) -> None:
    tables = {"site": {"name": "Refusal test"}, "paths": {"prefix": str(prefix), "model_root": str(model_root)}}
    tables.setdefault(table, {})[key] = value
    path.write_text("\n".join(f"[{name}]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in values.items())
                              for name, values in tables.items()), encoding="utf-8")


@pytest.mark.parametrize("table, key, value", REFUSALS, ids=[f"{t}.{k}={v!r}" for t, k, v in REFUSALS])
def test_a_value_the_schema_refuses_stops_the_install_before_anything_is_written(tmp_path, model_root, table, key, value):
    from whisper_hpc.install import install
    from whisper_hpc.site import SiteError

    prefix = tmp_path / "prefix"
    site = tmp_path / "site.toml"
    write_site_with(site, prefix, model_root, table, key, value)
    messages = []
    with pytest.raises(SiteError) as refused:
        install(site, prefix, tmp_path / "no-images", venv=Path(sys.prefix), say=messages.append)
    assert f"[{table}] {key}" in str(refused.value)
    assert not prefix.exists()
    assert not sentinels(tmp_path)


def test_make_install_refuses_a_line_break_in_a_path_with_one_message_and_writes_nothing(tmp_path, model_root):
    prefix = tmp_path / "prefix"
    site = tmp_path / "site.toml"
    write_site_with(site, prefix, model_root, "paths", "model_root", "/models\n$(touch PWNED)")
    result = subprocess.run([sys.executable, "-m", "whisper_hpc.install", "--site", str(site), "--prefix", str(prefix),
                             "--images", str(tmp_path / "no-images")], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert "[paths] model_root must be an absolute path without ',', ':' or control characters" in result.stderr
    assert "Traceback" not in result.stderr
    assert not prefix.exists() and not sentinels(tmp_path)


# ----- the command line's prefix, and the installed site file --------------------------------------

@pytest.mark.parametrize("name", ["prefix\n$(touch PWNED)", "prefix:with,separators"])
def test_a_command_line_prefix_the_schema_would_refuse_is_refused_too(tmp_path, model_root, name):
    from whisper_hpc.errors import WhisperHpcError
    from whisper_hpc.install import install

    prefix = tmp_path / name
    site = tmp_path / "site.toml"
    write_site_with(site, tmp_path / "elsewhere", model_root, "site", "name", "Prefix test")
    try:
        with pytest.raises(WhisperHpcError):
            install(site, prefix, tmp_path / "no-images", venv=Path(sys.prefix), say=lambda message: None)
    finally:
        written = prefix.exists()
        shutil.rmtree(prefix, ignore_errors=True)
    assert not written


def test_a_delete_character_in_the_site_name_survives_into_the_installed_site_file(tmp_path, model_root):
    from whisper_hpc.install import install

    prefix = tmp_path / "prefix"
    site = tmp_path / "site.toml"
    write_site_with(site, prefix, model_root, "site", "support", "help\x7fdesk")
    install(site, prefix, tmp_path / "no-images", venv=Path(sys.prefix), say=lambda message: None)
    installed = tomllib.loads((prefix / "etc" / "site.toml").read_text(encoding="utf-8"))
    assert installed["site"]["support"] == "help\x7fdesk"


def test_a_site_name_that_is_lua_and_shell_at_once_runs_in_neither(polyglot, lmod_installed):
    result = polyglot.bash(f"module load whisper/{VERSION} && module help whisper/{VERSION}")
    polyglot.no_sentinel()
    assert result.returncode == 0, result.stderr
    assert f"({POLYGLOT})" in result.stderr
    record = polyglot.base / "polyglot.record"
    job = run_job(polyglot, "cpu", ["talk.wav"], record)
    polyglot.no_sentinel()
    assert job.returncode == 0, job.stderr
    assert recorded(record)[0] == ["srun", "singularity_wrapper", "run", "--model_directory",
                                   str(polyglot.model_root / "tiny.en"), "--", "talk.wav"]
