"""Which files to transcribe and where their transcripts go (whisper_hpc.inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_hpc.inputs import Job, collect_jobs, media_in, read_file_list

NASTY_NAMES = [
    "with space.wav",
    "it's \"quoted\".wav",
    "ünïcødé 日本語.flac",
    "$(touch pwned).wav",
    "`touch pwned`; rm -rf x.mp3",
    "-leading-dash.wav",
    "semi;colon & pipe|.ogg",
]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


def no_pwned(*roots: Path) -> None:
    for root in roots:
        assert not (root / "pwned").exists()
        assert [p for p in root.rglob("pwned")] == []


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    root = tmp_path / "rec"
    for name in ["b/talk.wav", "a/talk.wav", "a/notes.txt", "a/.hidden.wav", ".cache/x.wav", "z.MP3",
                 "c/d/deep.flac", "c/readme", "c/d/cover.jpg", "a/interview.m4a"]:
        touch(root / name)
    return root


def test_directory_walk_is_recursive_sorted_and_skips_non_media(recordings):
    found = [p.relative_to(recordings).as_posix() for p in media_in(recordings)]
    assert found == ["z.MP3", "a/interview.m4a", "a/talk.wav", "b/talk.wav", "c/d/deep.flac"]


def test_directory_keeps_relative_folders_so_names_do_not_collide(recordings, tmp_path):
    out = tmp_path / "out"
    jobs = collect_jobs([str(recordings)], out)
    assert [(j.source.relative_to(recordings).as_posix(), j.output_base.relative_to(out).as_posix()) for j in jobs] == [
        ("z.MP3", "z"),
        ("a/interview.m4a", "a/interview"),
        ("a/talk.wav", "a/talk"),
        ("b/talk.wav", "b/talk"),
        ("c/d/deep.flac", "c/d/deep"),
    ]
    assert len({j.output_base for j in jobs}) == len(jobs)


def test_duplicates_are_removed_first_occurrence_wins(recordings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    jobs = collect_jobs(["rec", "rec/a/talk.wav", "./rec/a/../a/talk.wav", str(recordings / "z.MP3"), "rec/"], out)
    assert [j.source.as_posix() for j in jobs] == [
        "rec/z.MP3", "rec/a/interview.m4a", "rec/a/talk.wav", "rec/b/talk.wav", "rec/c/d/deep.flac",
    ]
    assert jobs[2].output_base == out / "a" / "talk"


def test_missing_files_still_become_jobs(tmp_path):
    out = tmp_path / "out"
    jobs = collect_jobs(["gone/missing.wav", "gone/missing.wav", "nosuffix"], out)
    assert jobs == [Job(Path("gone/missing.wav"), out / "missing"), Job(Path("nosuffix"), out / "nosuffix")]


def test_a_single_file_goes_straight_under_the_output_dir(tmp_path):
    source = touch(tmp_path / "deep" / "dir" / "talk.en.wav")
    (job,) = collect_jobs([str(source)], tmp_path / "out")
    assert job.source == source
    assert job.output_base == tmp_path / "out" / "talk.en"


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    touch(tmp_path / "talk.wav")
    (job,) = collect_jobs(["~/talk.wav"], tmp_path / "out")
    assert job.source == tmp_path / "talk.wav"


def test_job_outputs_and_channel_bases(tmp_path):
    job = Job(tmp_path / "call.wav", tmp_path / "out" / "call.v1")
    assert job.outputs(("txt", "srt")) == [tmp_path / "out" / "call.v1.txt", tmp_path / "out" / "call.v1.srt"]
    assert job.outputs(("json",), "left") == [tmp_path / "out" / "call.v1.left.json"]
    assert job.channel_base(None) == job.output_base
    assert job.channel_base("right") == tmp_path / "out" / "call.v1.right"


def test_files_given_one_by_one_with_the_same_name_do_not_collide(tmp_path):
    first, second = touch(tmp_path / "a" / "talk.wav"), touch(tmp_path / "b" / "talk.wav")
    jobs = collect_jobs([str(first), str(second)], tmp_path / "out")
    assert len(jobs) == 2
    assert jobs[0].output_base != jobs[1].output_base


def test_same_stem_different_suffix_do_not_collide(tmp_path):
    touch(tmp_path / "rec" / "talk.wav")
    touch(tmp_path / "rec" / "talk.mp3")
    jobs = collect_jobs([str(tmp_path / "rec")], tmp_path / "out")
    assert len(jobs) == 2
    assert jobs[0].output_base != jobs[1].output_base


# ----------------------------------------------------------------------------- file lists


def test_file_list_ignores_blank_and_comment_lines(tmp_path):
    listing = tmp_path / "todo.txt"
    listing.write_text("# recordings for Monday\n\na.wav\n   \n  # indented comment\nb/c.flac\r\n\t\nlast.mp3", "utf-8")
    assert read_file_list(listing) == ["a.wav", "b/c.flac", "last.mp3"]


def test_file_list_keeps_odd_names_verbatim_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "todo.txt"
    listing.write_text("\n".join(NASTY_NAMES + ["dir with # hash/x.wav"]) + "\n", "utf-8")
    names = read_file_list(listing)
    assert names == NASTY_NAMES + ["dir with # hash/x.wav"]
    for name in names:
        touch(tmp_path / name)
    jobs = collect_jobs(names, tmp_path / "out")
    assert [str(j.source) for j in jobs] == names
    assert [j.output_base.name for j in jobs] == [Path(n).stem for n in names]
    assert all(j.source.is_file() for j in jobs)
    no_pwned(tmp_path)


def test_directory_with_odd_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in NASTY_NAMES:
        touch(tmp_path / "odd dir $(touch pwned)" / name)
    jobs = collect_jobs(["odd dir $(touch pwned)"], tmp_path / "out")
    assert sorted(j.source.name for j in jobs) == sorted(NASTY_NAMES)
    assert {j.output_base.parent for j in jobs} == {tmp_path / "out"}
    no_pwned(tmp_path)


def test_missing_file_list_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        read_file_list(tmp_path / "absent.txt")


def test_file_list_with_byte_order_mark(tmp_path):
    listing = tmp_path / "todo.txt"
    listing.write_bytes("a.wav\r\nb.wav\r\n".encode("utf-8-sig"))
    assert read_file_list(listing) == ["a.wav", "b.wav"]
