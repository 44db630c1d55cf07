"""`whisper-batch`: transcribe many files as a Slurm array, see where they stand, finish what is left."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from whisper_hpc.batch import plan, slurm
from whisper_hpc.batch.manifest import Manifest, find_by_job, manifest_path, new_name
from whisper_hpc.batch.request import Parser, Refusal, Request, batch_parser, explicit_settings, parse_request
from whisper_hpc.batch.schedule import ArrayPlan, describe, plan_array, probe_durations, render_script, say
from whisper_hpc.batch.selection import group_key, groups, select, whole_groups
from whisper_hpc.errors import WhisperHpcError

if TYPE_CHECKING:
    from whisper_hpc.batch.report.data import BatchReport

USAGE = """\
usage:
  whisper-batch submit PATH... [batch options] [whisper-hpc flags]   transcribe as a Slurm array job
  whisper-batch run PATH... [whisper-hpc flags]     transcribe inside the current allocation (no sbatch)
  whisper-batch status JOBID|MANIFEST [--json]      done / failed / running / pending per file
  whisper-batch resume MANIFEST [batch options]     resubmit only what is not done
  whisper-batch report JOBID|MANIFEST [--html FILE] [--png FILE]
                                                    failures, times, tasks, CPU and memory advice: a
                                                    summary, and an HTML page (default: .whisper-batch/
                                                    NAME/report.html); --png: the plots in one image
  whisper-batch task [--submission N] MANIFEST      what each array task runs (Slurm calls this)

batch options (defaults: from the model and the audio, and the site configuration):
  --output_dir DIR       where transcripts go (default: .); the manifest goes in DIR/.whisper-batch/
  --chunk_size N         files per array task (each task loads the model once)
  --mem SIZE             memory per task, e.g. 4G       --time HH:MM:SS   time limit per task
  --throttle N           at most N tasks at once (%N)   --cpus N          CPUs per task (default 2)
  --partition P  --account A  --gpus N  --mail_user EMAIL  --mail_type END,FAIL
  --dry_run              show the plan and the sbatch command; submit and write nothing

examples:
  whisper-batch submit interviews/ --model small --language en --output_dir transcripts/
  whisper-batch status 123456
  whisper-batch resume transcripts/.whisper-batch/20250101-120000-1a2b3c.json
  whisper-batch report 123456 --html ~/batch-report.html

Any whisper-hpc flag (whisper-hpc --help) is passed on to every task. Files whose transcripts
exist are skipped. Exit status: submit/run/resume 0 ok; status 0 when every file is done, else 1;
report 0 when it wrote the report; 2 when nothing could be submitted or written (the message says why).
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    handlers = {"submit": submit, "run": run, "status": status, "resume": resume, "report": report, "task": task}
    handler = handlers.get(argv[0])
    if handler is None:
        say(f"unknown command '{argv[0]}'; choose submit, run, status, resume, report or task (whisper-batch --help)")
        return 2
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(USAGE, end="")
        return 0
    try:
        return handler(argv[1:])
    except WhisperHpcError as error:
        say(str(error))
        return error.exit_code


# ---- submit / run / resume ----------------------------------------------------------------------

def new_manifest(request: Request) -> Manifest:
    wanted = request.transcription
    try:
        entries = select(list(wanted.inputs), wanted.output_dir)
    except ValueError as error:
        raise Refusal(str(error)) from None
    if not entries:
        raise Refusal(f"no input files: {', '.join(wanted.inputs)} hold no audio or video files")
    name = new_name()
    return Manifest(
        path=manifest_path(wanted.output_dir, name),
        name=name,
        output_dir=str(wanted.output_dir),
        engine_args=request.engine_args,
        formats=list(wanted.formats),
        split_channels=wanted.split_channels,
        overwrite=wanted.redo,
        model=wanted.model.name,
        entries=entries,
    )


def new_work(request: Request, verb: str) -> tuple[Manifest, list[int], int] | None:
    """(manifest, the files not done, how many are done), or None, said, when all are done."""
    manifest = new_manifest(request)
    todo = manifest.unfinished()
    if not todo:
        print(f"nothing to {verb}: all {len(manifest.entries)} files are done (pass --overwrite True to redo them)")
        return None
    return manifest, todo, len(manifest.entries) - len(todo)


def to_run(manifest: Manifest, wanted: list[int]) -> list[int]:
    """`wanted` plus the files named relative to them, which must run in the same whisper-hpc run
    (whisper-hpc skips those already done)."""
    return whole_groups(manifest.entries, wanted)


def submit(argv: Sequence[str]) -> int:
    request = parse_request(argv)
    work = new_work(request, "submit")
    if work is None:
        return 0
    manifest, todo, skipped = work
    if not request.dry_run and not slurm.available("sbatch"):
        raise Refusal("sbatch not found: submit from a login node with Slurm, or use `whisper-batch run` inside a job")
    everything = to_run(manifest, todo)
    probe_durations(manifest, everything)
    array = plan_array(manifest, everything, request.transcription, request.settings)
    return send(manifest, array, len(todo), request.dry_run, skipped, new=True)


def sbatch_options(manifest: Manifest, array: ArrayPlan, submission: int) -> list[str]:
    """Logs beside the manifest, one per task; the job works in the output folder (bound into the container)."""
    return array.request.options(str(manifest.work_dir), manifest.log_path(submission, "%a").name, manifest.output_dir)


def send(manifest: Manifest, array: ArrayPlan, count: int, dry_run: bool, skipped: int, new: bool) -> int:
    """sbatch the array of `count` files; the manifest records the submission before and the job id after."""
    if dry_run:
        print(f"dry run: would submit {describe(array, manifest, count)}")
        options = sbatch_options(manifest, array, 0)
        print("sbatch " + " ".join(shlex.quote(o) for o in options) + f" {shlex.quote(str(manifest.script_path(0)))}")
        return 0
    resources = {**array.request.__dict__, "settings": array.settings}
    submission = manifest.add_submission("array", array.tasks, resources)
    try:
        manifest.save()
        script = render_script(manifest, submission.number)
    except OSError as error:
        raise Refusal(f"cannot write the manifest in {manifest.state_dir}: {error.strerror}")
    options = sbatch_options(manifest, array, submission.number)
    try:
        submission.job_id = slurm.submit(options, script)
    except slurm.SlurmError:
        manifest.submissions.remove(submission)
        script.unlink(missing_ok=True)
        if new:
            manifest.path.unlink(missing_ok=True)
            shutil.rmtree(manifest.work_dir, ignore_errors=True)
        else:
            manifest.save()
        raise
    manifest.save()
    print(f"submitted job {submission.job_id}: {count} files in {len(array.tasks)} tasks, manifest {manifest.path}",
          flush=True)
    if skipped:
        say(f"skipped {skipped} files already done (their transcripts exist; --overwrite True redoes them)")
    return 0


def run(argv: Sequence[str]) -> int:
    """Everything in this process (inside an existing allocation): same manifest, same outputs."""
    from whisper_hpc.batch.status import file_statuses, report
    from whisper_hpc.batch.task import TERMINATED, run_task

    request = parse_request(argv)
    if request.dry_run:
        raise Refusal("--dry_run is for submit and resume; run transcribes right away")
    work = new_work(request, "do")
    if work is None:
        return 0
    manifest, todo, skipped = work
    everything = to_run(manifest, todo)
    chunk_size = request.settings.get("chunk_size")
    tasks = plan.make_chunks(groups(manifest.entries, everything), dict.fromkeys(everything, 0.0), float("inf"), chunk_size)
    submission = manifest.add_submission("run", tasks, {"settings": request.settings})
    submission.job_id = os.environ.get("SLURM_JOB_ID") or None
    manifest.save()
    say(f"manifest {manifest.path}: {len(todo)} files" + (f" ({skipped} already done, skipped)" if skipped else ""))
    for number in range(len(tasks)):
        if run_task(manifest, submission.number, number, submission.job_id) == TERMINATED:
            return TERMINATED
    statuses = file_statuses(manifest, states_of=lambda job_id: {})
    sys.stderr.write(report(manifest, statuses, unfinished_only=True))
    return 0 if all(s.state == "done" for s in statuses) else 1


def resume(argv: Sequence[str]) -> int:
    from whisper_hpc.assemble import check_request
    from whisper_hpc.batch.status import file_statuses
    from whisper_hpc.options import parse

    batch, rest = batch_parser().parse_known_args(list(argv))
    flags = [a for a in rest if a.startswith("-")]
    if flags:
        raise Refusal(f"resume keeps the batch's whisper-hpc flags ({flags[0]} given); "
                      "to change them, start a new batch with submit")
    if len(rest) != 1:
        raise Refusal("resume takes one manifest: whisper-batch resume OUTPUT_DIR/.whisper-batch/NAME.json")
    manifest = Manifest.load(Path(rest[0]))
    if not batch.dry_run and not slurm.available("sbatch"):
        raise Refusal("sbatch not found: resume from a login node with Slurm")
    statuses = file_statuses(manifest)
    live = {s.index for s in statuses if s.live}
    wanted = [s.index for s in statuses if s.state != "done" and not s.live]
    todo = to_run(manifest, wanted)
    # A file named relative to one still being transcribed waits for the next resume.
    blocked = {group_key(manifest.entries[i]) for i in todo if i in live}
    todo = [i for i in todo if group_key(manifest.entries[i]) not in blocked]
    count = len(set(todo) & set(wanted))
    if not count:
        done = sum(1 for s in statuses if s.state == "done")
        print(f"nothing to resume: {done} of {len(statuses)} files done, {len(live)} still queued or running")
        return 0
    try:
        transcription = check_request(parse([*manifest.engine_args, "--output_dir", manifest.output_dir]),
                                      create_output=False, need_inputs=False)
    except WhisperHpcError as error:
        raise Refusal(f"{manifest.path}: {error}") from None
    previous = manifest.submissions[-1].resources.get("settings", {}) if manifest.submissions else {}
    settings = {**previous, **explicit_settings(batch)}
    probe_durations(manifest, todo)
    array = plan_array(manifest, todo, transcription, settings)
    if live:
        say(f"{len(live)} files are still queued or running in earlier jobs and are left to them")
    done = sum(1 for s in statuses if s.state == "done")
    return send(manifest, array, count, batch.dry_run, done, new=False)


# ---- status / task ------------------------------------------------------------------------------

def locate(argument: str) -> Path:
    """A manifest path, or a job id whose manifest is found through the job's working directory."""
    path = Path(argument)
    if path.is_file() or not argument.split("_")[0].isdigit():
        return path
    job_id = argument.split("_")[0]
    directory = slurm.job_work_dir(job_id)
    for candidate in [directory, directory / ".whisper-batch" if directory else None]:
        if candidate is not None and candidate.is_dir():
            found = find_by_job(candidate, job_id)
            if found:
                return found
    raise Refusal(f"cannot find the manifest of job {job_id} (Slurm does not know it, or it is not a "
                  "whisper-batch job); pass the manifest: OUTPUT_DIR/.whisper-batch/NAME.json")


def status(argv: Sequence[str]) -> int:
    from whisper_hpc.batch.status import as_json, file_statuses, report

    arguments = [a for a in argv if a != "--json"]
    if len(arguments) != 1:
        raise Refusal("status takes one job id or manifest: whisper-batch status JOBID|MANIFEST [--json]")
    manifest = Manifest.load(locate(arguments[0]))
    statuses = file_statuses(manifest)
    sys.stdout.write(as_json(manifest, statuses) if "--json" in argv else report(manifest, statuses))
    return 0 if all(s.state == "done" for s in statuses) else 1


def report(argv: Sequence[str]) -> int:
    """Print the text summary; write the HTML page (and, with --png, the figures in one PNG)."""
    from whisper_hpc.batch.report import data, html, text

    parser = Parser(prog="whisper-batch report", add_help=False, allow_abbrev=False)
    parser.add_argument("target")
    parser.add_argument("--html", type=Path)
    parser.add_argument("--png", type=Path)
    arguments = parser.parse_args(list(argv))
    manifest = Manifest.load(locate(arguments.target))
    gathered = data.gather(manifest)
    summary = text.summary(gathered)
    sys.stdout.write(summary)
    sys.stdout.flush()
    pictures, plots_note = draw(gathered)
    page = html.page(gathered, pictures, summary, plots_note)
    destination = arguments.html or manifest.work_dir / "report.html"
    written = [write_report(destination, page.encode("utf-8", "backslashreplace"), "--html")]
    if arguments.png:
        from whisper_hpc.batch.report.plots import sheet_png

        if plots_note:
            raise Refusal(f"cannot draw {arguments.png}: {plots_note.removeprefix('no plots: ')}")
        written.append(write_report(arguments.png, sheet_png(gathered), "--png"))
    for path in written:
        print(f"report written: {path}")
    return 0


def draw(gathered: "BatchReport") -> tuple[dict[str, bytes], str]:
    """The report's figures, or none and why (a report without plots beats no report)."""
    from whisper_hpc.batch.report.plots import pictures

    try:
        return pictures(gathered), ""
    except ImportError as error:
        return {}, f"no plots: matplotlib cannot be imported here ({error})"


def write_report(path: Path, content: bytes, option: str) -> Path:
    from whisper_hpc.files import write_atomically

    try:
        write_atomically(path, content)
    except OSError as error:
        raise Refusal(f"cannot write the report {path}: {error.strerror or error}; "
                      f"pass {option} FILE in a folder you can write") from None
    return path


def task(argv: Sequence[str]) -> int:
    from whisper_hpc.batch.task import run_task

    parser = Parser(prog="whisper-batch task", add_help=False, allow_abbrev=False)
    parser.add_argument("--submission", type=int)
    parser.add_argument("manifest")
    arguments = parser.parse_args(list(argv))
    index = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not index.isdigit():
        raise Refusal("task is what each array task runs (it needs SLURM_ARRAY_TASK_ID); "
                      "to transcribe inside an allocation use `whisper-batch run`")
    manifest = Manifest.load(Path(arguments.manifest))
    return run_task(manifest, arguments.submission, int(index), os.environ.get("SLURM_ARRAY_JOB_ID"))


if __name__ == "__main__":
    raise SystemExit(main())
