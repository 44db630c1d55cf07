"""`whisper-hpc doctor`: what this process would run on, with what, and whether it is offline."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Sequence

from whisper_hpc import runtime
from whisper_hpc.devices import engine_cuda_status, explain_cuda_unusable, gather_gpu_report
from whisper_hpc.engines.base import installed_version
from whisper_hpc.model_store import list_staged
from whisper_hpc.result_cache import CacheUnusable, cache_settings, prepared_root
from whisper_hpc.site import Site, SiteError, load_site, model_root

NETWORK_VARIABLES = ("HF_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def section(title: str) -> None:
    print(f"\n{title}")


def row(label: str, value: object) -> None:
    print(f"  {label:<30} {value}")


def doctor(argv: Sequence[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("usage: whisper-hpc doctor\n\nPrint devices, engine builds, threads, staged models and offline settings.")
        return 0
    threads = runtime.available_cpus()
    runtime.pin_threads(threads)
    runtime.start_run()
    problems: list[str] = []

    section("whisper-hpc")
    row("version", installed_version("whisper-hpc"))
    row("python", sys.version.split()[0])
    try:
        site = load_site()
        row("site file", site.described_source())
    except SiteError as error:
        site = Site()
        row("site file", f"UNUSABLE, built-in defaults used: {error}")
        problems.append(str(error))

    section("threads")
    row("SLURM_CPUS_PER_TASK", os.environ.get("SLURM_CPUS_PER_TASK", "unset"))
    row("CPUs this process may use", len(os.sched_getaffinity(0)))
    row("threads used", threads)
    for name in runtime.THREAD_VARIABLES:
        row(name, os.environ.get(name))

    section("devices")
    report = gather_gpu_report()
    row("CUDA_VISIBLE_DEVICES", report.visible_devices if report.visible_devices is not None else "unset")
    row("NVIDIA device nodes", "yes" if report.device_nodes else "no")
    row("nvidia-smi", "found" if report.nvidia_smi else "not found")
    row("driver version", report.driver_version or "-")
    row("driver CUDA version", report.driver_cuda or "-")
    row("GPUs", ", ".join(report.gpu_names) or "-")
    row("cuDNN library", report.cudnn or "not found")

    section("engines")
    for backend, packages in (("faster-whisper", ("faster-whisper", "ctranslate2")), ("openai-whisper", ("openai-whisper", "torch"))):
        versions = ", ".join(f"{p} {installed_version(p)}" for p in packages)
        if importlib.util.find_spec(packages[0].replace("-", "_") if backend == "faster-whisper" else "whisper") is None:
            row(backend, f"not installed ({versions})")
            continue
        built, count = engine_cuda_status(backend)
        usable = f"CUDA usable ({count} GPU)" if count else "CPU only"
        row(backend, f"{versions}; built for CUDA {built or 'none'}; {usable}")
        if count == 0 and (report.device_nodes or report.nvidia_smi):
            problems.append(explain_cuda_unusable(report, backend, built, count))
    if backend_supports_cpu_int8():
        row("CTranslate2 CPU types", ", ".join(sorted(cpu_compute_types())))

    section("models")
    root = model_root(site)
    row("model root", root)
    staged = list_staged(root)
    if not root.is_dir():
        problems.append(f"model root {root} does not exist: set WHISPER_MODELS or the site's paths.model_root")
    for model in staged:
        engines = [e for e, ok in (("faster-whisper", model.ctranslate2_dir), ("openai-whisper", model.openai_checkpoint)) if ok]
        row(model.name, ", ".join(engines))
    for path, missing in incomplete_models(root):
        row(path.name, f"incomplete: no {', '.join(missing)}")
        problems.append(f"{path} lacks {', '.join(missing)}, so faster-whisper cannot load it (and would look for "
                        f"it on the hub); an administrator re-stages it: whisper-models fetch {path.name}")
    if root.is_dir() and not staged:
        problems.append(f"no models are staged in {root}; an administrator runs `whisper-models fetch NAME`")

    section("diarization")
    for label, state in diarization_pipelines(root):
        row(label, state)

    section("result cache")
    cache = cache_settings(site)
    if not cache.directory:
        row("result cache", "off (the site's [cache] directory is empty)")
    else:
        try:
            where = f"{prepared_root(cache)}, {'shared by its group' if cache.shared else 'yours alone'}"
        except CacheUnusable as error:
            where = f"UNUSABLE: {error}"
            problems.append(f"result cache off: {error}")
        row("result cache", where)
        row("size limit", f"{cache.max_bytes >> 20} MB")

    section("network")
    for name in runtime.OFFLINE_VARIABLES:
        row(name, os.environ.get(name))
    for name in NETWORK_VARIABLES:
        if os.environ.get(name):
            row(name, os.environ[name])
    online = [name for name in runtime.OFFLINE_VARIABLES if os.environ.get(name) != runtime.OFFLINE_VARIABLES[name]]
    row("would try the network", "yes: " + ", ".join(online) if online else
        "no: hub, telemetry and downloads are off; models are local paths")
    row("caches", os.environ.get("XDG_CACHE_HOME"))

    section("problems")
    for problem in problems or ["none found"]:
        print(f"  {problem}")
    return 1 if problems else 0


def incomplete_models(root) -> list[tuple[object, list[str]]]:
    """Folders with a CTranslate2 model.bin but not everything faster-whisper needs beside it."""
    from whisper_hpc.model_store import CTRANSLATE2_FILES

    found = []
    for path in sorted(root.glob("*/model.bin")) if root.is_dir() else []:
        missing = [f for f in CTRANSLATE2_FILES if not (path.parent / f).is_file()]
        if missing and not path.parent.name.startswith("."):
            found.append((path.parent, missing))
    return found


def backend_supports_cpu_int8() -> bool:
    return importlib.util.find_spec("ctranslate2") is not None


def cpu_compute_types() -> set[str]:
    import ctranslate2

    return ctranslate2.get_supported_compute_types("cpu")


def diarization_pipelines(root) -> list[tuple[str, str]]:
    """(name, state) for pyannote.audio and every pipeline staged under ROOT/diarization/."""
    from whisper_hpc.diarization import DiarizationError
    from whisper_hpc.diarization.staged import check_pipeline, pipelines_root, staged_pipelines

    try:
        pyannote = importlib.util.find_spec("pyannote.audio") is not None
    except ModuleNotFoundError:
        pyannote = False
    rows = [("pyannote.audio", installed_version("pyannote.audio") if pyannote
             else "not installed (--diarize needs the whisper-diarization module or image)")]
    pipelines = staged_pipelines(root)
    if not pipelines:
        rows.append(("pipelines", f"none staged in {pipelines_root(root)}"))
    for directory in pipelines:
        try:
            check_pipeline(directory)
            state = "ready (every file local)"
        except DiarizationError as error:
            state = f"unusable: {error}"
        rows.append((f"pipeline {directory.name}", state))
    return rows
