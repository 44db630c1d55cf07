"""Helpers for the Open OnDemand app tests: install the app for a test site, submit a form through
tests/ood_render.rb (real Ruby ERB, as OnDemand does), and run the rendered job with stand-ins."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from whisper_hpc import ondemand
from whisper_hpc.site import Site, site_from_dict

HARNESS = Path(__file__).with_name("ood_render.rb")
REFUSED = 3  # ood_render.rb's exit status when the app refuses the form

# Stand-ins for a job run without Slurm: Lmod's init defines `module`, which records its
# arguments; `whisper-batch` records its argv. Both write NUL-separated fields, so a newline or a
# quote inside a value shows up exactly as the program received it.
STUB_LMOD_INIT = """\
module () { printf '%s\\0' "$@" >> "$WHISPER_TEST_RECORD/module.args"; printf '\\n' >> "$WHISPER_TEST_RECORD/module.args"; }
"""
STUB_BATCH = """\
#!/bin/sh
for argument in "$@"; do printf '%s\\0' "$argument"; done > "$WHISPER_TEST_RECORD/whisper-batch.argv"
"""


def site_dict(model_root: Path, allowed: list[Path], **overrides) -> dict:
    """A site.toml as a dict, valid under the strict schema (whisper_hpc/site.py): the staged
    models, the given allowed roots, small jobs. Each keyword names a table whose keys it sets."""
    data = {
        "site": {"name": "Test HPC", "support": "help@example.org", "module_version": "0.1.0"},
        "paths": {"model_root": str(model_root)},
        "models": {"default": "tiny.en"},
        "slurm": {"max_time": "2:00:00", "gpu_gres": "gpu:1"},
        "ondemand": {"allowed_roots": [str(p) for p in allowed], "cpus_per_task": 2},
    }
    for table, values in overrides.items():
        data.setdefault(table, {}).update(values)
    return data


def make_site(model_root: Path, allowed: list[Path], **overrides) -> Site:
    """site_dict, read through the schema (a SiteError names a key it refuses)."""
    return site_from_dict(site_dict(model_root, allowed, **overrides))


def with_ondemand(site: Site, **keys) -> Site:
    """The site with some [ondemand] keys changed (e.g. allowed_roots=(...,), cpus_per_task=2)."""
    return dataclasses.replace(site, ondemand=dataclasses.replace(site.ondemand, **keys))


def install_app(site_data: dict, prefix: Path) -> Path:
    return ondemand.install(site_from_dict(site_data), prefix)


@dataclass
class Submission:
    returncode: int
    stdout: str
    stderr: str
    session: Path

    @property
    def refused(self) -> bool:
        return self.returncode == REFUSED

    @property
    def job(self) -> dict:
        assert self.returncode == 0, f"the app refused or failed: {self.stderr}"
        return json.loads(self.stdout)

    @property
    def native(self) -> list[str]:
        return self.job["submit"]["script"]["native"]

    @property
    def environment(self) -> dict[str, str]:
        """script.job_environment as OnDemand hands it to sbatch (and so to the job)."""
        return self.job["environment"]


def submit_form(app: Path, session: Path, values: dict, home: Path) -> Submission:
    """Render the app for one form submission the way OnDemand would; nothing is sent to Slurm."""
    values_file = session.with_name(session.name + ".form.json")
    values_file.parent.mkdir(parents=True, exist_ok=True)
    values_file.write_text(json.dumps(values), encoding="utf-8")
    result = subprocess.run(
        ["ruby", str(HARNESS), "submit", str(app), str(session), str(values_file)],
        capture_output=True, text=True, timeout=120, env=clean_env(home), cwd=home,
    )
    return Submission(result.returncode, result.stdout, result.stderr, session)


def render_completed(app: Path, session: Path, home: Path) -> str:
    result = subprocess.run(
        ["ruby", str(HARNESS), "completed", str(app), str(session)],
        capture_output=True, text=True, timeout=60, env=clean_env(home), cwd=home, check=True,
    )
    return result.stdout


def clean_env(home: Path, **extra: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", **extra}


def stub_tools(folder: Path) -> tuple[Path, Path]:
    """A fake Lmod init and a fake whisper-batch in `folder`: (init file, bin folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    init = folder / "lmod-init.sh"
    init.write_text(STUB_LMOD_INIT, encoding="utf-8")
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    batch = bin_dir / "whisper-batch"
    batch.write_text(STUB_BATCH, encoding="utf-8")
    batch.chmod(0o755)
    return init, bin_dir


def run_job_locally(job: dict, home: Path, stubs: Path, record: Path) -> subprocess.CompletedProcess:
    """Run the rendered job script with bash (no Slurm), `module` and `whisper-batch` stubbed.

    The job gets script.job_environment, as sbatch --export gives it, on top of a clean PATH and
    HOME (where Slurm would start a login shell)."""
    record.mkdir(parents=True, exist_ok=True)
    _init, bin_dir = stub_tools(stubs)
    env = clean_env(home, **job.get("environment", {}), WHISPER_TEST_RECORD=str(record))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return subprocess.run(["bash", job["script"]], capture_output=True, text=True, timeout=120, env=env, cwd=home)


def recorded_fields(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\0")[:-1] if path.exists() else []


def bash_syntax_ok(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)


def ruby_yaml(path: Path) -> object:
    """Parse a YAML file with Ruby's Psych (what OnDemand uses), returned through JSON."""
    result = subprocess.run(
        ["ruby", "-rpsych", "-rjson", "-e", "puts JSON.generate(Psych.safe_load(File.read(ARGV[0])))", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(result.stdout)


def python_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def ruby_available() -> bool:
    return shutil.which("ruby") is not None


def sentinels_in(*folders: Path, names: tuple[str, ...]) -> list[Path]:
    """Every file under the folders named exactly like a sentinel (what an injected `touch` makes)."""
    found = []
    for folder in folders:
        for root, _dirs, files in os.walk(folder):
            found.extend(Path(root) / f for f in files if f in names)
    return found
