"""Device choice and the CUDA diagnosis (whisper_hpc.devices), with hand-made GPU reports."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from whisper_hpc import devices
from whisper_hpc.devices import (
    DeviceError,
    GpuReport,
    explain_cuda_unusable,
    gather_gpu_report,
    resolve_device,
    version_tuple,
)

NVIDIA_SMI = """\
+---------------------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |
|-----------------------------------------+----------------------+----------------------+
"""


def gpu_node(**changes) -> GpuReport:
    """A healthy GPU node: every check passes unless a test breaks one."""
    fields = dict(
        visible_devices="0", device_nodes=True, nvidia_smi=True, driver_version="535.104.05",
        driver_cuda="12.2", gpu_names=("NVIDIA A100-SXM4-40GB",), cudnn="libcudnn.so.9",
    )
    fields.update(changes)
    return GpuReport(**fields)


def machine_has_no_gpu() -> bool:
    return not shutil.which("nvidia-smi") and not any(os.path.exists(f"/dev/nvidia{i}") for i in range(16))


# ----------------------------------------------------------------------------- explain_cuda_unusable


def test_healthy_node_has_nothing_to_explain():
    assert explain_cuda_unusable(gpu_node(), "faster-whisper", "12.0", 1) == ""
    assert explain_cuda_unusable(gpu_node(visible_devices=None), "openai-whisper", "12.1", 4) == ""


@pytest.mark.parametrize("engine", ["faster-whisper", "openai-whisper"])
def test_cpu_only_build(engine):
    message = explain_cuda_unusable(gpu_node(), engine, None, 0)
    assert "no CUDA support" in message and "CPU-only" in message
    assert engine in message
    assert "--device cpu" in message


@pytest.mark.parametrize("visible", ["", "NoDevFiles", "-1", "  "])
def test_no_gpu_allocated_by_slurm(visible):
    message = explain_cuda_unusable(gpu_node(visible_devices=visible), "faster-whisper", "12.0", 0)
    assert "no GPU is allocated" in message
    assert f"CUDA_VISIBLE_DEVICES={visible!r}" in message
    assert "--gres=gpu:1" in message


def test_cpu_only_build_is_reported_before_slurm_allocation():
    message = explain_cuda_unusable(gpu_node(visible_devices=""), "openai-whisper", None, 0)
    assert "CPU-only" in message and "allocated" not in message


def test_no_device_nodes_and_no_nvidia_smi():
    report = gpu_node(visible_devices=None, device_nodes=False, nvidia_smi=False, driver_version=None,
                      driver_cuda=None, gpu_names=(), cudnn=None)
    message = explain_cuda_unusable(report, "faster-whisper", "12.0", 0)
    assert "no NVIDIA GPU is visible" in message
    assert "/dev/nvidia" in message and "--nv" in message


@pytest.mark.parametrize("nodes, smi", [(True, False), (False, True)])
def test_either_nodes_or_nvidia_smi_is_enough_to_look_further(nodes, smi):
    message = explain_cuda_unusable(gpu_node(device_nodes=nodes, nvidia_smi=smi), "faster-whisper", "12.0", 0)
    assert "no NVIDIA GPU is visible" not in message
    assert "sees no usable GPU" in message


def test_driver_older_than_the_engine_build():
    report = gpu_node(driver_version="470.57.02", driver_cuda="11.4")
    message = explain_cuda_unusable(report, "faster-whisper", "12.0", 0)
    assert "driver 470.57.02" in message
    assert "CUDA up to 11.4" in message and "built for CUDA 12.0" in message


def test_driver_minor_versions_compare_numerically():
    # 12.10 is newer than 12.2: a string comparison would get this wrong.
    assert explain_cuda_unusable(gpu_node(driver_cuda="12.10"), "openai-whisper", "12.2", 1) == ""
    assert "supports CUDA up to 12.1 " in explain_cuda_unusable(gpu_node(driver_cuda="12.1"), "openai-whisper", "12.4", 0)


def test_unknown_driver_cuda_skips_the_version_check():
    message = explain_cuda_unusable(gpu_node(driver_cuda=None, driver_version=None), "openai-whisper", "12.1", 0)
    assert "driver" not in message.split(";")[0]
    assert "sees no usable GPU" in message


def test_missing_cudnn_for_faster_whisper():
    message = explain_cuda_unusable(gpu_node(cudnn=None), "faster-whisper", "12.0", 0)
    assert "cuDNN" in message and "LD_LIBRARY_PATH" in message


def test_missing_cudnn_does_not_matter_to_openai_whisper():
    message = explain_cuda_unusable(gpu_node(cudnn=None), "openai-whisper", "12.1", 0)
    assert "cuDNN" not in message
    assert "openai-whisper sees no usable GPU" in message


def test_engine_sees_zero_gpus():
    message = explain_cuda_unusable(gpu_node(), "faster-whisper", "12.0", 0)
    assert "faster-whisper sees no usable GPU" in message
    assert "NVIDIA A100-SXM4-40GB" in message
    assert "whisper-hpc doctor" in message
    assert "unknown model" in explain_cuda_unusable(gpu_node(gpu_names=()), "faster-whisper", "12.0", 0)


def test_version_tuple():
    assert version_tuple("12.2") == (12, 2)
    assert version_tuple("535.104.05") == (535, 104)
    assert version_tuple("12.10") > version_tuple("12.2")


# ----------------------------------------------------------------------------- gathering the report


def test_gather_gpu_report_parses_nvidia_smi(monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    outputs = {
        ("/usr/bin/nvidia-smi",): NVIDIA_SMI,
        ("/usr/bin/nvidia-smi", "--query-gpu=name", "--format=csv,noheader"): "NVIDIA A100\n\nNVIDIA H100\n",
    }
    monkeypatch.setattr(devices, "run_quietly", lambda command: outputs[tuple(command)])
    monkeypatch.setattr(devices.os.path, "exists", lambda path: path == "/dev/nvidia3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    report = gather_gpu_report()
    assert report.nvidia_smi and report.device_nodes
    assert (report.driver_version, report.driver_cuda) == ("535.104.05", "12.2")
    assert report.gpu_names == ("NVIDIA A100", "NVIDIA H100")
    assert report.visible_devices == "3"


def test_gather_gpu_report_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(devices.shutil, "which", lambda name: None)
    monkeypatch.setattr(devices.os.path, "exists", lambda path: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    report = gather_gpu_report()
    assert (report.nvidia_smi, report.device_nodes, report.driver_cuda, report.gpu_names) == (False, False, None, ())
    assert report.visible_devices is None


def test_run_quietly_survives_a_missing_program():
    assert devices.run_quietly(["/nonexistent/nvidia-smi"]) == ""


# ----------------------------------------------------------------------------- resolve_device


def test_cpu_is_cpu_without_looking(monkeypatch):
    monkeypatch.setattr(devices, "gather_gpu_report", lambda: pytest.fail("cpu must not probe the GPU"))
    assert resolve_device("cpu", "faster-whisper") == "cpu"
    assert resolve_device("cpu", "openai-whisper") == "cpu"


def test_auto_on_this_machine_is_cpu():
    if not machine_has_no_gpu():
        pytest.skip(reason="this machine has an NVIDIA GPU: the no-GPU path cannot be shown here")
    assert resolve_device("auto", "faster-whisper") == "cpu"


def test_auto_without_gpu_does_not_import_an_engine(monkeypatch):
    monkeypatch.setattr(devices, "gather_gpu_report",
                        lambda: gpu_node(device_nodes=False, nvidia_smi=False))
    monkeypatch.setattr(devices, "engine_cuda_status", lambda backend: pytest.fail("engine imported"))
    assert resolve_device("auto", "openai-whisper") == "cpu"


def test_cuda_on_this_machine_says_the_gpu_is_absent(monkeypatch):
    if not machine_has_no_gpu():
        pytest.skip(reason="this machine has an NVIDIA GPU: the no-GPU path cannot be shown here")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(DeviceError) as error:
        resolve_device("cuda", "faster-whisper")
    message = str(error.value)
    assert re.search(r"no (NVIDIA )?GPU", message), message
    assert "--device cpu" in message


def test_cuda_with_working_engine(monkeypatch):
    monkeypatch.setattr(devices, "gather_gpu_report", gpu_node)
    monkeypatch.setattr(devices, "engine_cuda_status", lambda backend: ("12.0", 2))
    assert resolve_device("cuda", "faster-whisper") == "cuda"
    assert resolve_device("auto", "faster-whisper") == "cuda"


def test_gpu_present_but_unusable(monkeypatch):
    monkeypatch.setattr(devices, "gather_gpu_report", lambda: gpu_node(driver_cuda="11.8", driver_version="520.1"))
    monkeypatch.setattr(devices, "engine_cuda_status", lambda backend: ("12.0", 0))
    assert resolve_device("auto", "faster-whisper") == "cpu"
    with pytest.raises(DeviceError, match="driver 520.1 supports CUDA up to 11.8"):
        resolve_device("cuda", "faster-whisper")
