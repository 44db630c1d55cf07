"""In-process decoding (PyAV) against the ffmpeg processes it replaces, on the real recordings:
the same samples, the same transcripts, the fallback, damaged files, and the samples hash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BIN, need
from whisper_hpc import audio
from whisper_hpc.audio import SAMPLE_RATE, AudioError, SamplesDigest, decode, probe, samples_sha256, stream_windows

# Lossless files (and hotwords.mp3) decode to identical samples: the mix to mono and the
# resampling are libswresample's in both. multilingual.mp3 (MPEG-2, 24 kHz) differs in some
# frames between the mp3 decoders of Debian's ffmpeg and PyAV's newer libavcodec; same length.
RECORDINGS = {
    "jfk.flac": (None, 0, 1),
    "multilingual.mp3": (None,),
    "hotwords.mp3": (None, 0, 1),
    "sample.wav": (None,),
    "stereo_diarization.wav": (None, 0, 1),
}
LOSSLESS_MAX_DIFFERENCE = 1e-4  # libswresample rounding; measured: 0.0
LOSSY_MIN_CORRELATION = 0.999
LENGTH_TOLERANCE = 420  # samples at 16 kHz: one MP3 frame (1152 samples at 44.1 kHz)


def need_ffmpeg() -> None:
    need(bool(shutil.which("ffmpeg") and shutil.which("ffprobe")), "ffmpeg/ffprobe are not on PATH")


@pytest.fixture
def data(shared_data: Path) -> Path:
    need_ffmpeg()
    return shared_data


@pytest.fixture
def in_process(monkeypatch):
    """The default decoder, with no process allowed to start: proof that nothing falls back."""
    monkeypatch.setenv(audio.DECODER_VARIABLE, "pyav")

    def refused(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(audio.subprocess, "Popen", refused)
    monkeypatch.setattr(audio.subprocess, "run", refused)


def with_decoder(monkeypatch, name: str, path: Path, channel: int | None = None) -> np.ndarray:
    monkeypatch.setenv(audio.DECODER_VARIABLE, name)
    info = probe(path)
    assert info.decoder == name
    return decode(path, channel)


def ffmpeg(*arguments: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *arguments],
                   check=True, capture_output=True, timeout=60)


# ----------------------------------------------------------------------------- the same samples


@pytest.mark.system
@pytest.mark.parametrize("name,channel", [(n, c) for n, channels in RECORDINGS.items() for c in channels])
def test_in_process_samples_equal_ffmpegs(data, monkeypatch, name, channel):
    ours = with_decoder(monkeypatch, "pyav", data / name, channel)
    theirs = with_decoder(monkeypatch, "ffmpeg", data / name, channel)
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert abs(len(ours) - len(theirs)) <= LENGTH_TOLERANCE
    n = min(len(ours), len(theirs))
    if name == "multilingual.mp3":
        assert np.corrcoef(ours[:n], theirs[:n])[0, 1] > LOSSY_MIN_CORRELATION
        assert np.sqrt(np.mean(ours[:n] ** 2)) == pytest.approx(np.sqrt(np.mean(theirs[:n] ** 2)), rel=0.01)
    else:
        assert float(np.max(np.abs(ours[:n] - theirs[:n]))) <= LOSSLESS_MAX_DIFFERENCE


@pytest.mark.system
def test_probe_answers_as_ffprobe_does(data, monkeypatch):
    for name in RECORDINGS:
        monkeypatch.setenv(audio.DECODER_VARIABLE, "pyav")
        ours = probe(data / name)
        monkeypatch.setenv(audio.DECODER_VARIABLE, "ffmpeg")
        theirs = probe(data / name)
        assert (ours.decoder, theirs.decoder) == ("pyav", "ffmpeg")
        assert (ours.channels, ours.format_name, ours.claimed_duration) == \
            (theirs.channels, theirs.format_name, theirs.claimed_duration)
        # MP3: PyAV's newer libavformat leaves out the encoder's delay and padding (what decodes).
        assert ours.duration == pytest.approx(theirs.duration, abs=0.06)


@pytest.mark.system
def test_more_channels_mix_to_mono_as_ffmpegs_ac_1(data, tmp_path, monkeypatch):
    """Six channels (5.1): libswresample's downmix, not a plain mean, in both decoders."""
    path = tmp_path / "surround.flac"
    tones = ";".join(f"sine=frequency={200 + 100 * k}:duration=2[t{k}]" for k in range(6))
    ffmpeg("-filter_complex", f"{tones};" + "".join(f"[t{k}]" for k in range(6)) + "amerge=inputs=6,"
           "aformat=channel_layouts=5.1", "-ar", "48000", str(path))
    assert probe(path).channels == 6
    ours, theirs = (with_decoder(monkeypatch, name, path) for name in ("pyav", "ffmpeg"))
    assert len(ours) == len(theirs) == 2 * SAMPLE_RATE
    assert float(np.max(np.abs(ours - theirs))) <= LOSSLESS_MAX_DIFFERENCE


@pytest.mark.system
@pytest.mark.engine
@pytest.mark.parametrize("name", ["jfk.flac", "sample.wav"])
def test_the_transcript_is_the_same_through_either_decoder(cli, data, tmp_path, name):
    texts = {}
    for decoder, path in (("pyav", str(BIN)), ("ffmpeg", f"{BIN}:/usr/bin:/bin")):
        out = tmp_path / decoder
        # In-process, with no ffmpeg on PATH at all: no process is needed.
        result = cli(str(data / name), "--model", "tiny.en", "--output_dir", str(out), "--output_format", "txt",
                     env={audio.DECODER_VARIABLE: decoder, "PATH": path})
        assert result.returncode == 0, result.stderr
        texts[decoder] = (out / f"{Path(name).stem}.txt").read_text(encoding="utf-8")
    assert texts["pyav"].strip()
    assert texts["pyav"] == texts["ffmpeg"]


# ----------------------------------------------------------------------------- odd names, no spill


@pytest.mark.system
@pytest.mark.parametrize("name", ["a:b.wav", "http:x.wav", "-i.wav", "concat:x|y.wav", "$(touch pwned).wav"])
def test_names_that_look_like_protocols_or_options_open_as_local_files(data, tmp_path, monkeypatch, in_process, name):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(data / "stereo_diarization.wav", tmp_path / name)
    relative = Path(name)
    info = probe(relative)
    assert (info.decoder, info.channels) == ("pyav", 2)
    assert len(decode(relative, channel=1)) == 5 * SAMPLE_RATE
    assert list(tmp_path.rglob("pwned")) == []


@pytest.mark.system
def test_libav_messages_stay_off_stderr_and_the_log_level_is_restored(data, tmp_path, capfd, in_process):
    import av.logging

    path = tmp_path / "holed.mp3"
    damaged = bytearray((data / "multilingual.mp3").read_bytes())
    damaged[100_000:110_000] = bytes(10_000)
    path.write_bytes(bytes(damaged))
    before = av.logging.get_level()
    with pytest.raises(AudioError, match="damaged audio"):
        decode(path)
    assert av.logging.get_level() == before
    assert capfd.readouterr().err == ""


def test_av_is_imported_only_when_a_file_is_decoded():
    code = "import sys, whisper_hpc.audio, whisper_hpc.runner; sys.exit('av' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_an_unknown_decoder_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(audio.DECODER_VARIABLE, "gstreamer")
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(AudioError, match="WHISPER_HPC_DECODER=gstreamer: no such decoder; set it to pyav or ffmpeg"):
        probe(tmp_path / "a.wav")


# ----------------------------------------------------------------------------- the fallback


@pytest.mark.system
def test_a_codec_pyav_lacks_falls_back_to_ffmpeg(data, tmp_path, monkeypatch):
    import av

    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    need(" libcodec2 " in encoders, "this ffmpeg cannot write codec2 (no libcodec2)")
    if "codec2" in av.codecs_available or "libcodec2" in av.codecs_available:
        pytest.skip(reason="this PyAV decodes codec2 itself: no codec it lacks to fall back for")
    path = tmp_path / "radio.c2"  # Codec 2, a speech codec of amateur radio
    ffmpeg("-i", str(data / "jfk.flac"), "-t", "5", "-ac", "1", "-ar", "8000", "-c:a", "libcodec2", "-mode", "3200",
           str(path))
    monkeypatch.setenv(audio.DECODER_VARIABLE, "pyav")
    info = probe(path)
    assert info.decoder == "ffmpeg" and info.duration == pytest.approx(5.0, abs=0.05)
    samples = decode(path)
    speech = decode(data / "jfk.flac")[:5 * SAMPLE_RATE]
    assert len(samples) == 5 * SAMPLE_RATE and np.sqrt(np.mean(samples ** 2)) > 0.3 * np.sqrt(np.mean(speech ** 2))
    assert samples_sha256(info) == digest_of_windows(info)


def refuse_av_open(monkeypatch) -> list[str]:
    import av

    opened: list[str] = []

    def open_refused(file, *args, **kwargs):
        opened.append(file)
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input", str(file))

    monkeypatch.setattr(av, "open", open_refused)
    return opened


@pytest.mark.system
def test_a_file_pyav_cannot_open_goes_to_ffmpeg_for_everything(data, monkeypatch):
    monkeypatch.setenv(audio.DECODER_VARIABLE, "ffmpeg")
    path = data / "jfk.flac"
    expected = decode(path, channel=1), samples_sha256(probe(path), (None, 0, 1))
    monkeypatch.setenv(audio.DECODER_VARIABLE, "pyav")
    opened = refuse_av_open(monkeypatch)
    info = probe(path)
    assert opened == [f"file:{path}"] and info.decoder == "ffmpeg"
    assert np.array_equal(decode(path, channel=1), expected[0])
    assert samples_sha256(info, (None, 0, 1)) == expected[1]


@pytest.mark.system
def test_a_file_pyav_opens_in_probe_but_not_later_still_decodes(data, monkeypatch):
    monkeypatch.setenv(audio.DECODER_VARIABLE, "pyav")
    info = probe(data / "sample.wav")
    assert info.decoder == "pyav"
    refuse_av_open(monkeypatch)
    assert sum(len(w.samples) for w in stream_windows(info)) == 30 * SAMPLE_RATE


@pytest.mark.system
def test_a_file_neither_reads_gets_the_present_message(data, tmp_path, monkeypatch):
    path = tmp_path / "notes.wav"
    path.write_text("these are my meeting notes, not a recording\n" * 20)
    messages = []
    for decoder in ("pyav", "ffmpeg"):
        monkeypatch.setenv(audio.DECODER_VARIABLE, decoder)
        with pytest.raises(AudioError) as error:
            probe(path)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{path}: not an audio or video file ffmpeg can read (")
    assert messages[0].endswith("); convert it to WAV, FLAC or MP3")


# ----------------------------------------------------------------------------- damaged mid-stream


def cut_copy(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


@pytest.mark.system
@pytest.mark.parametrize("name,keep,decoded", [("jfk.flac", 400_000, 3.66), ("multilingual.mp3", 60_000, 14.9)])
def test_a_cut_file_is_refused_under_strict_and_decoded_in_part_without(data, tmp_path, in_process, name, keep,
                                                                        decoded):
    path = cut_copy(data / name, tmp_path / f"cut-{name}", keep)
    info = probe(path)
    assert info.decoder == "pyav"
    with pytest.raises(AudioError) as error:
        list(stream_windows(info))
    assert str(error.value).startswith(f"{path}: truncated or damaged: decoded ")
    assert "re-copy the file, or pass --ignore_decode_errors True" in str(error.value)
    kept = sum(len(w.samples) for w in stream_windows(info, strict=False)) / SAMPLE_RATE
    assert kept == pytest.approx(decoded, abs=0.3)


@pytest.mark.system
def test_a_hole_in_the_middle_is_damaged_audio_and_the_rest_decodes(data, tmp_path, in_process):
    path = tmp_path / "holed.flac"
    damaged = bytearray((data / "jfk.flac").read_bytes())
    damaged[500_000:520_000] = bytes(20_000)
    path.write_bytes(bytes(damaged))
    with pytest.raises(AudioError, match=r"damaged audio \(\[flac\] .*\); re-copy the file, or pass "
                                         r"--ignore_decode_errors True to transcribe what can be decoded"):
        list(stream_windows(probe(path)))
    kept = sum(len(w.samples) for w in stream_windows(probe(path), strict=False)) / SAMPLE_RATE
    assert 10.0 < kept < 11.0


@pytest.mark.system
def test_a_file_mostly_failing_to_decode_fails_as_ffmpeg_does(data, tmp_path, monkeypatch):
    """More than ffmpeg's -max_error_rate (2/3) of packets failing: ffmpeg exits 69, and so both refuse."""
    path = tmp_path / "ruined.flac"
    damaged = bytearray((data / "jfk.flac").read_bytes())
    for index in range(5000, len(damaged), 500):
        damaged[index] ^= 0x5A
    path.write_bytes(bytes(damaged))
    for decoder in ("pyav", "ffmpeg"):
        monkeypatch.setenv(audio.DECODER_VARIABLE, decoder)
        info = probe(path)
        with pytest.raises(AudioError, match=f"^{path}: ffmpeg could not decode the audio \\(.*flac"):
            list(stream_windows(info, strict=False))
        assert samples_sha256(info) is None


@pytest.mark.system
@pytest.mark.engine
def test_a_cut_flac_fails_the_run_or_is_transcribed_in_part(cli, data, tmp_path):
    path = cut_copy(data / "jfk.flac", tmp_path / "cut.flac", 400_000)
    refused = cli(str(path), "--model", "tiny.en", "-o", str(tmp_path / "out"), "--output_format", "txt",
                  env={"PATH": str(BIN)})
    assert refused.returncode == 1 and f"error: {path}: truncated or damaged: decoded 3.7 s of 11.0 s" in refused.stderr
    assert not (tmp_path / "out" / "cut.txt").exists()
    kept = cli(str(path), "--model", "tiny.en", "-o", str(tmp_path / "out"), "--output_format", "txt",
               "--ignore_decode_errors", "True", env={"PATH": str(BIN)})
    assert kept.returncode == 0, kept.stderr
    assert "fellow Americans" in (tmp_path / "out" / "cut.txt").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- the samples hash


def digest_of_windows(info: audio.AudioInfo, channels=(None,), window_seconds: float = audio.WINDOW_SECONDS,
                      seconds: float | None = None) -> str:
    digest = SamplesDigest()
    for channel in channels:
        digest.channel(channel)
        samples = np.concatenate([w.samples for w in stream_windows(info, channel, window_seconds)])
        digest.add(samples if seconds is None else samples[:round(seconds * SAMPLE_RATE)])
    return digest.hexdigest()


@pytest.mark.system
@pytest.mark.parametrize("decoder", ["pyav", "ffmpeg"])
def test_samples_sha256_hashes_what_stream_windows_yields(data, monkeypatch, decoder):
    monkeypatch.setenv(audio.DECODER_VARIABLE, decoder)
    stereo = probe(data / "jfk.flac")
    assert samples_sha256(stereo, (None, 0, 1)) == digest_of_windows(stereo, (None, 0, 1), window_seconds=4)
    long = probe(data / "multilingual.mp3")
    assert samples_sha256(long) == digest_of_windows(long, window_seconds=20)
    if decoder == "pyav":  # the start: exactly the first 30 s of what is transcribed
        assert samples_sha256(long, seconds=30) == digest_of_windows(long, seconds=30)


@pytest.mark.system
def test_windows_stay_bounded_in_process(data, in_process):
    info = probe(data / "multilingual.mp3")
    windows = list(stream_windows(info, window_seconds=10))
    assert len(windows) >= 5 and max(w.duration for w in windows) <= 11.0
    assert sum(len(w.samples) for w in windows) == len(decode(info.path))
