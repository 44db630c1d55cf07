"""Decoding (whisper_hpc.audio), on the real recordings in the shared data folder.

Every test runs with both decoders: in-process (PyAV, the default) and the ffmpeg processes
(WHISPER_HPC_DECODER=ffmpeg, also the fallback); the same files give the same answers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from whisper_hpc import audio
from whisper_hpc.audio import SAMPLE_RATE, AudioError, decode, probe, quietest_cut, stream_windows

ODD_NAME = "-it's \"odd\" ünï 日本 $(touch pwned).flac"


def need_ffmpeg() -> None:
    if not (shutil.which("ffmpeg") and shutil.which("ffprobe")):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the audio tests, but ffmpeg/ffprobe are not on PATH")
        pytest.skip(reason="ffmpeg/ffprobe are not on PATH")


@pytest.fixture(autouse=True, params=["pyav", "ffmpeg"])
def decoder(request, monkeypatch) -> str:
    monkeypatch.setenv(audio.DECODER_VARIABLE, request.param)
    return request.param


@pytest.fixture
def data(shared_data: Path) -> Path:
    need_ffmpeg()
    return shared_data


@lru_cache(maxsize=None)
def video_encoder() -> str:
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return "libx264" if " libx264 " in encoders else "mpeg4"


def ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *arguments],
                   check=True, capture_output=True, timeout=60)


def no_pwned(*roots: Path) -> None:
    for root in roots:
        assert [p for p in root.rglob("pwned")] == []


# ----------------------------------------------------------------------------- pure: quietest_cut


def test_quietest_cut_lands_in_the_silent_gap():
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.3, 30 * SAMPLE_RATE).astype(np.float32)
    gap = slice(int(22.0 * SAMPLE_RATE), int(22.7 * SAMPLE_RATE))
    samples[gap] = 0.0
    cut = quietest_cut(samples)
    assert gap.start <= cut < gap.stop


def test_quietest_cut_prefers_the_latest_quiet_frame():
    samples = np.ones(30 * SAMPLE_RATE, dtype=np.float32)
    samples[int(17 * SAMPLE_RATE):int(17.5 * SAMPLE_RATE)] = 0.0
    samples[int(26 * SAMPLE_RATE):int(26.5 * SAMPLE_RATE)] = 0.0
    cut = quietest_cut(samples)
    assert 26 * SAMPLE_RATE <= cut < 26.5 * SAMPLE_RATE


def test_quietest_cut_only_searches_the_end():
    samples = np.ones(60 * SAMPLE_RATE, dtype=np.float32)
    samples[5 * SAMPLE_RATE:6 * SAMPLE_RATE] = 0.0  # far before the search region: must be ignored
    cut = quietest_cut(samples, search_seconds=20.0)
    assert 40 * SAMPLE_RATE <= cut < 60 * SAMPLE_RATE


def test_quietest_cut_of_tiny_signal_keeps_everything():
    samples = np.zeros(100, dtype=np.float32)
    assert quietest_cut(samples) == 100


def test_file_url_protects_names_from_ffmpeg():
    assert audio.ffmpeg_url(Path("-i.wav")) == "file:-i.wav"
    assert audio.ffmpeg_url(Path("concat:a|b.wav")) == "file:concat:a|b.wav"


# ----------------------------------------------------------------------------- real recordings


@pytest.mark.system
def test_probe_jfk(data):
    info = probe(data / "jfk.flac")
    assert info.duration == pytest.approx(11.0, abs=0.01)
    assert info.channels == 2
    assert info.format_name == "flac"


@pytest.mark.system
def test_decode_jfk_is_16k_mono_float32(data):
    samples = decode(data / "jfk.flac")
    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert len(samples) / SAMPLE_RATE == pytest.approx(11.0, abs=0.05)
    assert 0.01 < float(np.sqrt(np.mean(samples ** 2))) < 1.0  # real speech, not silence
    assert np.isfinite(samples).all()


@pytest.mark.system
def test_channels_of_a_stereo_file_differ(data):
    path = data / "stereo_diarization.wav"
    assert probe(path).channels == 2
    left, right = decode(path, channel=0), decode(path, channel=1)
    assert len(left) == len(right) == 5 * SAMPLE_RATE
    assert np.sqrt(np.mean(left ** 2)) > 0.005 and np.sqrt(np.mean(right ** 2)) > 0.005
    assert abs(np.corrcoef(left, right)[0, 1]) < 0.5  # two different speakers


@pytest.mark.system
def test_windows_cover_the_whole_file_without_gaps_or_overlaps(data):
    path = data / "multilingual.mp3"
    info = probe(path)
    assert info.duration == pytest.approx(59.95, abs=0.1)
    windows = list(stream_windows(info, window_seconds=20))
    assert len(windows) >= 3
    position = 0
    for window in windows:
        assert round(window.offset * SAMPLE_RATE) == position
        assert 0 < window.duration <= 20 * 1.1
        assert window.samples.dtype == np.float32
        position += len(window.samples)
    assert position / SAMPLE_RATE == pytest.approx(info.duration, abs=0.1)
    whole = decode(path)
    assert np.array_equal(np.concatenate([w.samples for w in windows]), whole)


@pytest.mark.system
def test_windows_of_one_channel(data):
    info = probe(data / "stereo_diarization.wav")
    windows = list(stream_windows(info, channel=1, window_seconds=2))
    assert sum(len(w.samples) for w in windows) == 5 * SAMPLE_RATE
    assert np.array_equal(np.concatenate([w.samples for w in windows]), decode(info.path, channel=1))


# ----------------------------------------------------------------------------- bad inputs


def expect_audio_error(path: Path, *words: str) -> str:
    with pytest.raises(AudioError) as error:
        decode(path)
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message
    return message


@pytest.mark.system
def test_missing_file(data, tmp_path):
    expect_audio_error(tmp_path / "absent.wav", "no such file")


@pytest.mark.system
def test_zero_byte_file(data, tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_audio_error(path, "empty")


@pytest.mark.system
def test_text_file_named_wav(data, tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are my meeting notes, not a recording\n" * 20)
    expect_audio_error(path, "not an audio or video file")


@pytest.mark.system
def test_truncated_mp3(data, tmp_path):
    path = tmp_path / "truncated.mp3"
    path.write_bytes((data / "multilingual.mp3").read_bytes()[:30000])
    expect_audio_error(path, "truncated or damaged")


@pytest.mark.system
def test_truncated_mp3_decodes_with_ignore_errors(data, tmp_path):
    path = tmp_path / "truncated.mp3"
    path.write_bytes((data / "multilingual.mp3").read_bytes()[:30000])
    windows = list(stream_windows(probe(path), strict=False))
    decoded = sum(len(w.samples) for w in windows) / SAMPLE_RATE
    assert 3 < decoded < 20


@pytest.mark.system
def test_video_without_audio(data, tmp_path):
    path = tmp_path / "silent film.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=5", "-c:v", video_encoder(), str(path))
    expect_audio_error(path, "no audio stream")


@pytest.mark.system
def test_directory(data, tmp_path):
    expect_audio_error(tmp_path, "directory")


@pytest.mark.system
def test_video_with_audio_decodes(data, tmp_path):
    path = tmp_path / "lecture.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=11:size=64x64:rate=5", "-i", str(data / "jfk.flac"),
           "-c:v", video_encoder(), "-c:a", "aac", "-shortest", str(path))
    info = probe(path)
    assert info.channels == 2 and info.format_name.startswith("mov")
    samples = decode(path)
    assert len(samples) / SAMPLE_RATE == pytest.approx(11.0, abs=0.2)
    assert np.sqrt(np.mean(samples ** 2)) > 0.01


@pytest.mark.system
def test_video_with_shorter_audio_track_decodes(data, tmp_path):
    path = tmp_path / "slides.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=20:size=64x64:rate=5", "-i", str(data / "jfk.flac"),
           "-c:v", video_encoder(), "-c:a", "aac", str(path))
    samples = decode(path)
    assert len(samples) / SAMPLE_RATE == pytest.approx(11.0, abs=0.2)


@pytest.mark.system
def test_odd_file_name_decodes_and_runs_nothing(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(data / "jfk.flac", tmp_path / ODD_NAME)
    relative = Path(ODD_NAME)  # relative, so the name really starts with '-'
    assert probe(relative).channels == 2
    samples = decode(relative)
    assert len(samples) / SAMPLE_RATE == pytest.approx(11.0, abs=0.05)
    no_pwned(tmp_path, Path.cwd())


@pytest.mark.system
def test_odd_name_in_error_message(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(ODD_NAME).write_text("not audio")
    message = expect_audio_error(Path(ODD_NAME))
    assert ODD_NAME in message
    no_pwned(tmp_path)


@pytest.mark.system
def test_missing_ffmpeg_is_an_audio_error(data, tmp_path, monkeypatch):
    monkeypatch.setenv(audio.DECODER_VARIABLE, "ffmpeg")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AudioError, match="ffprobe is not installed"):
        probe(data / "jfk.flac")


@pytest.mark.system
def test_without_ffmpeg_the_in_process_decoder_still_reads_audio(data, tmp_path, monkeypatch):
    monkeypatch.setenv(audio.DECODER_VARIABLE, "pyav")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert len(decode(data / "jfk.flac")) == 11 * SAMPLE_RATE
    (tmp_path / "notes.wav").write_text("not audio\n" * 20)  # the fallback needs ffmpeg: the present message
    with pytest.raises(AudioError, match="ffprobe is not installed"):
        probe(tmp_path / "notes.wav")


DEADLOCK_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from whisper_hpc.audio import AudioError, probe, stream_windows
    try:
        for _ in stream_windows(probe(Path(sys.argv[1]))):
            pass
    except AudioError as error:
        print("AudioError:", error)
    """
)


@pytest.mark.system
def test_very_damaged_file_fails_instead_of_hanging(data, tmp_path):
    clean = tmp_path / "long.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=150", "-ar", "8000", "-b:a", "8k", str(clean))
    damaged = bytearray(clean.read_bytes())
    for index in range(2000, len(damaged), 97):
        damaged[index] ^= 0xFF
    path = tmp_path / "damaged.mp3"
    path.write_bytes(bytes(damaged))
    child = subprocess.Popen([sys.executable, "-c", DEADLOCK_CHILD, str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        output, errors = child.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, 9)
        child.communicate()
        pytest.fail("decoding a damaged file hung (ffmpeg blocked on a full stderr pipe)")
    assert child.returncode == 0, errors
    assert "AudioError:" in output and "damaged" in output
