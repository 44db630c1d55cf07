"""The one sizing module: Slurm's time and memory syntax, the workload model, one rounding rule."""

from __future__ import annotations

import pytest

from whisper_hpc import sizing

# ---- Slurm time and memory ------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("30", 1800), ("05:30", 330), ("01:00:00", 3600), ("1-00", 86400), ("2-03:04", 2 * 86400 + 3 * 3600 + 240),
    ("1-02:03:04", 86400 + 7384), ("24:00:00", 86400),
])
def test_slurm_times_parse(text, seconds):
    assert sizing.parse_time(text) == seconds


@pytest.mark.parametrize("text", ["UNLIMITED", "infinite", ""])
def test_unlimited_time_is_none(text):
    assert sizing.parse_time(text) is None


@pytest.mark.parametrize("text", ["1h", "1:2:3:4", "abc", "-5"])
def test_bad_times_are_refused(text):
    with pytest.raises(ValueError, match="not a Slurm time"):
        sizing.parse_time(text)


def test_time_formatting_round_trips():
    for seconds in (60, 3599, 86399, 86400 + 61, 3 * 86400):
        assert sizing.parse_time(sizing.format_time(seconds)) == seconds
    assert sizing.format_time(90061) == "1-01:01:01"


@pytest.mark.parametrize("text, megabytes", [("4G", 4096), ("4000M", 4000), ("4000", 4000), ("2048K", 2), ("1T", 1048576), ("8gb", 8192)])
def test_memory_sizes(text, megabytes):
    assert sizing.parse_memory(text) == megabytes


@pytest.mark.parametrize("text", ["4.5G", "lots", "0", "-1G"])
def test_bad_memory_refused(text):
    with pytest.raises(ValueError):
        sizing.parse_memory(text)


def test_memory_formatting():
    assert sizing.format_memory(2048) == "2G"
    assert sizing.format_memory(1280) == "1280M"


# ---- model size, memory, time -----------------------------------------------------------------------


@pytest.mark.parametrize("name, parameters", [
    ("tiny.en", 39), ("tiny", 39), ("base.en", 74), ("small", 244), ("medium.en", 769), ("large-v3", 1550),
    ("large-v3-turbo", 809), ("distil-large-v3", 756), ("my-finetuned-medium", 769),
])
def test_model_parameters_from_name(name, parameters):
    assert sizing.model_parameters_m(name) == (parameters, True)


def test_unknown_model_sized_by_counting_its_staged_weights_else_assumed_large(model_root, tmp_path):
    """openai-whisper.pt holds float16, model.bin what its header says: the real tiny.en (39 M)
    either way; nothing to count (or a file that is no model) and no size in the name: the largest."""
    staged = model_root / "tiny.en"
    alone = tmp_path / "model-bin-alone"
    alone.mkdir()
    (alone / "model.bin").symlink_to(staged / "model.bin")
    for folder in (staged, alone):
        parameters, known = sizing.model_parameters_m("my-model", folder)
        assert not known and 0.9 * 39 <= parameters <= 1.1 * 39, folder
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"{}")
    for folder in (tmp_path / "empty", broken, None):
        assert sizing.model_parameters_m("custom", folder) == (sizing.UNKNOWN_MODEL_PARAMETERS_M, False)
    assert sizing.model_parameters_m("kb-whisper-small", broken) == (244, True)  # the size its name says
    assert sizing.model_parameters_m("tiny.en", tmp_path / "empty") == (39, True)


def test_memory_grows_with_model_and_covers_what_was_measured():
    sizes = [sizing.Workload(sizing.MODEL_PARAMETERS_M[m]).memory_mb() for m in ("tiny", "base", "small", "medium", "large")]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    # Peak RSS measured here (docs/batch.rst): tiny.en int8 266 MB, base int8 327 MB, base float32 623 MB,
    # openai-whisper tiny.en 674 MB. The request must exceed each by a margin.
    assert sizing.Workload(39).memory_mb() >= 266 * 1.3
    assert sizing.Workload(74).memory_mb() >= 327 * 1.3
    assert sizing.Workload(74, compute_type="float32").memory_mb() >= 623 * 1.3
    assert sizing.Workload(39, backend="openai-whisper").memory_mb() >= 674 * 1.3
    assert all(size % sizing.MEMORY_STEP_MB == 0 and size >= sizing.MEMORY_FLOOR_MB for size in sizes)


def test_openai_whisper_and_diarization_need_more():
    plain = sizing.Workload(244)
    assert sizing.Workload(244, backend="openai-whisper").memory_mb() > plain.memory_mb()
    assert sizing.Workload(244, diarize=True).memory_mb() >= plain.memory_mb() + sizing.DIARIZATION_MEMORY_MB
    assert sizing.Workload(244, backend="openai-whisper").rtf_bound() > plain.rtf_bound()
    assert sizing.Workload(244, diarize=True).rtf_bound() > plain.rtf_bound()


def test_rtf_bound_is_pessimistic_and_follows_device_and_threads():
    tiny = sizing.Workload(39)
    assert tiny.rtf_bound() >= 0.061 * 2  # at least twice the measured RTF
    assert sizing.Workload(1550).rtf_bound() > sizing.Workload(244).rtf_bound() > tiny.rtf_bound()
    assert sizing.Workload(1550, gpu=True).rtf_bound() < sizing.Workload(1550).rtf_bound()
    assert sizing.Workload(1550, threads=8).rtf_bound() < sizing.Workload(1550, threads=2).rtf_bound()
    assert sizing.Workload(39, compute_type="float32").rtf_bound() > tiny.rtf_bound()


def test_memory_counts_a_lane_per_thread_where_files_run_at_once():
    intercept, slope = sizing.LANE_MEMORY_FIT_MB
    one, four = sizing.Workload(74, threads=1), sizing.Workload(74, threads=4)
    assert four.peak_mb() == pytest.approx(one.peak_mb() + 3 * (intercept + slope * 74))
    assert 85 <= intercept + slope * 39 <= 90 and 87 <= intercept + slope * 74 <= 93  # 87 and 90 MB measured
    for alone in (sizing.Workload(74, threads=4, gpu=True), sizing.Workload(74, threads=4, backend="openai-whisper"),
                  sizing.Workload(74, threads=4, diarize=True)):
        assert alone.lanes == 1
        assert alone.peak_mb() == pytest.approx(
            sizing.Workload(74, threads=1, gpu=alone.gpu, backend=alone.backend, diarize=alone.diarize).peak_mb())


def test_task_time_counts_each_model_load_and_unknown_durations():
    work = sizing.Workload(74)
    one_load = work.task_seconds([10.0, 20.0])
    assert work.task_seconds([10.0, 20.0], loads=2) == pytest.approx(one_load + work.load_seconds())
    assert work.task_seconds([None]) == pytest.approx(work.load_seconds() + work.file_seconds(sizing.UNKNOWN_DURATION_SECONDS))


def test_time_limit_has_a_floor_a_margin_and_the_site_cap():
    assert sizing.time_limit_seconds(5, cap=None) == sizing.TIME_FLOOR_SECONDS
    assert sizing.time_limit_seconds(3600, cap=None) >= 3600 + sizing.TASK_MARGIN_SECONDS
    assert sizing.time_limit_seconds(3600, cap=None) % 60 == 0
    assert sizing.time_limit_seconds(10 * 3600, cap=4 * 3600) == 4 * 3600




# ---- one rule for every consumer --------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("1-12", 129_600), ("0-02", 7_200), ("0-02:30", 9_000), ("2", 120)])
def test_days_hours_forms_read_as_slurm_reads_them(text, seconds):
    assert sizing.parse_time(text) == seconds


@pytest.mark.parametrize("max_time, job_time", [("0-02", "02:00:00"), ("1-12", "04:00:00"), ("UNLIMITED", "04:00:00"),
                                                ("00:30:00", "00:30:00")])
def test_the_example_job_scripts_ask_for_at_most_the_sites_limit(max_time, job_time, tmp_path):
    from whisper_hpc.install import install_context
    from whisper_hpc.site import Site, SlurmTable

    site = Site(slurm=SlurmTable(max_time=max_time))
    assert install_context(site, tmp_path)["install"]["job_time"] == job_time


def test_module_help_advises_what_whisper_batch_requests():
    for row in sizing.memory_advice():
        parameters = sizing.MODEL_PARAMETERS_M[row["size"]]
        assert row["request"] == sizing.format_memory(sizing.Workload(parameters).memory_mb())
        assert row["request_openai"] == sizing.format_memory(
            sizing.Workload(parameters, backend="openai-whisper").memory_mb())
    large = {row["size"]: row for row in sizing.memory_advice()}["large"]
    assert sizing.parse_memory(large["request"]) >= 1.5 * sizing.Workload(1550).peak_mb()


def test_diarization_asks_for_the_longest_recordings_waveform_on_top():
    plain, diarized = sizing.Workload(39), sizing.Workload(39, diarize=True)
    assert plain.memory_mb(longest_seconds=4 * 3600) == plain.memory_mb()  # no pipeline: no waveform held
    hour = diarized.memory_mb(longest_seconds=3600) - diarized.memory_mb()
    assert hour == sizing.waveform_mb(3600) == 220  # 3600 s x 16000 x 4 bytes, in MiB, rounded up
