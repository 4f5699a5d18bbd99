"""Converters from official benchmark annotations to manifests (calmcap.data.converters).

Fixtures under tests/fixtures/annotations/<dataset>/ are a handful of videos in each dataset's
official file format.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from calmcap.cli import main
from calmcap.data.converters import CONVERTERS, prepare, read_protocol
from calmcap.data.converters.activitynet import convert_activitynet
from calmcap.data.converters.didemo import convert_didemo
from calmcap.data.converters.generic import convert_generic
from calmcap.data.converters.lsmdc import convert_lsmdc
from calmcap.data.converters.msrvtt import convert_msrvtt
from calmcap.data.converters.msvd import convert_msvd
from calmcap.data.manifest import read_manifest, resolve_video_path
from calmcap.errors import ManifestError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "annotations"
MSRVTT = FIXTURES / "msrvtt"
MSVD = FIXTURES / "msvd"
DIDEMO = FIXTURES / "didemo"
LSMDC = FIXTURES / "lsmdc"
ANET = FIXTURES / "activitynet"
GENERIC = FIXTURES / "generic"


def by_id(result):
    return {entry.video_id: entry for entry in result.entries}


def ids_in(result, split):
    return [entry.video_id for entry in result.entries if entry.split == split]


def touch(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- MSR-VTT ---------------------------------------------------------------------------------


def test_msrvtt_retrieval_9k_trains_on_everything_but_1k_a():
    result = convert_msrvtt([MSRVTT / "MSRVTT_data.json"], test_csv=MSRVTT / "MSRVTT_JSFUSION_test.csv")
    assert result.protocol == "retrieval-9k"
    assert ids_in(result, "train") == ["video0", "video1", "video2", "video3", "video4"]
    assert ids_in(result, "test") == ["video5"]
    entries = by_id(result)
    assert all(len(entries[v].captions) == 20 for v in ids_in(result, "train"))
    # 1k-A: the single JSFusion sentence, not the 20 references.
    assert entries["video5"].captions == ["people dance at a party with music playing"]
    assert entries["video5"].extra["jsfusion_key"] == "ret0"
    assert entries["video0"].video == "video0.mp4"
    assert result.options["train_list"] == "derived"


@pytest.mark.parametrize("protocol, csv_name, expected", [
    ("retrieval-9k", "MSRVTT_train.9k.csv", ["video0", "video1", "video2", "video3", "video4"]),
    ("retrieval-7k", "MSRVTT_train.7k.csv", ["video0", "video1", "video2", "video3"]),
])
def test_msrvtt_train_csv_and_derived_train_list_agree(protocol, csv_name, expected):
    kwargs = dict(protocol=protocol, test_csv=MSRVTT / "MSRVTT_JSFUSION_test.csv")
    derived = convert_msrvtt([MSRVTT / "MSRVTT_data.json"], **kwargs)
    from_csv = convert_msrvtt([MSRVTT / "MSRVTT_data.json"], train_csv=MSRVTT / csv_name, **kwargs)
    assert ids_in(derived, "train") == expected
    assert ids_in(from_csv, "train") == expected
    assert from_csv.options["train_list"].endswith(csv_name)


def test_msrvtt_captioning_uses_official_split_and_all_references():
    result = convert_msrvtt([MSRVTT / "MSRVTT_data.json"], protocol="captioning")
    assert ids_in(result, "train") == ["video0", "video1", "video2"]
    assert ids_in(result, "val") == ["video3"]
    assert ids_in(result, "test") == ["video4", "video5"]
    assert {len(e.captions) for e in result.entries} == {20}
    assert by_id(result)["video4"].captions[0] == "a woman explains a math problem in a kitchen"
    assert by_id(result)["video4"].extra == {"category": 4}


def test_msrvtt_challenge_files_equal_combined_file_and_do_not_double_captions():
    combined = convert_msrvtt([MSRVTT / "MSRVTT_data.json"], protocol="captioning")
    split_files = convert_msrvtt(
        [MSRVTT / "train_val_videodatainfo.json", MSRVTT / "test_videodatainfo.json"], protocol="captioning"
    )
    overlapping = convert_msrvtt(
        [MSRVTT / "MSRVTT_data.json", MSRVTT / "test_videodatainfo.json"], protocol="captioning"
    )
    as_tuples = lambda r: [(e.video_id, e.split, e.captions) for e in r.entries]  # noqa: E731
    assert as_tuples(split_files) == as_tuples(combined)
    assert as_tuples(overlapping) == as_tuples(combined)


def test_msrvtt_all_test_captions_option():
    result = convert_msrvtt(
        [MSRVTT / "MSRVTT_data.json"], test_csv=MSRVTT / "MSRVTT_JSFUSION_test.csv", test_captions="all"
    )
    assert len(by_id(result)["video5"].captions) == 20
    assert result.options["test_captions"] == "all"


def test_msrvtt_retrieval_without_1k_a_list_is_an_error():
    with pytest.raises(ManifestError, match="MSRVTT_JSFUSION_test.csv"):
        convert_msrvtt([MSRVTT / "MSRVTT_data.json"], protocol="retrieval-7k")


def test_msrvtt_train_list_that_contains_test_videos_is_an_error(tmp_path):
    train_csv = write(tmp_path / "train.csv", "video_id\nvideo0\nvideo5\n")
    with pytest.raises(ManifestError, match=r"train\.csv: 1 train videos are also 1k-A test videos"):
        convert_msrvtt(
            [MSRVTT / "MSRVTT_data.json"], train_csv=train_csv, test_csv=MSRVTT / "MSRVTT_JSFUSION_test.csv"
        )


def test_msrvtt_malformed_inputs_name_file_and_place(tmp_path):
    bad_json = write(tmp_path / "bad.json", '{"videos": [\n  {"video_id": "video0",,}\n]}')
    with pytest.raises(ManifestError, match=r"bad\.json:2: malformed JSON"):
        convert_msrvtt([bad_json], protocol="captioning")
    no_videos = write(tmp_path / "no_videos.json", '{"sentences": []}')
    with pytest.raises(ManifestError, match=r"no_videos\.json: top level: missing key 'videos'"):
        convert_msrvtt([no_videos], protocol="captioning")
    no_split = write(tmp_path / "no_split.json", '{"videos": [{"video_id": "video0"}], "sentences": []}')
    with pytest.raises(ManifestError, match=r"no_split\.json: videos\[0\]: missing key 'split'"):
        convert_msrvtt([no_split], protocol="captioning")
    bad_csv = write(tmp_path / "test.csv", "key,vid_key,video_id\nret0,msr5,video5\n")
    with pytest.raises(ManifestError, match=r"test\.csv:1: missing column 'sentence'"):
        convert_msrvtt([MSRVTT / "MSRVTT_data.json"], test_csv=bad_csv)
    with pytest.raises(ManifestError, match=r"nope\.json: annotation file not found"):
        convert_msrvtt([tmp_path / "nope.json"], protocol="captioning")


# --- MSVD ------------------------------------------------------------------------------------


def test_msvd_splits_by_vid_index_and_keeps_all_references():
    result = convert_msvd([MSVD / "AllVideoDescriptions.txt", MSVD / "youtube_mapping.txt"])
    assert ids_in(result, "train") == ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208"]  # vid1, vid2
    assert ids_in(result, "val") == ["bQJQGoJF7_k_162_169"]  # vid1201
    assert ids_in(result, "test") == ["fVWUaH2mCt4_1_7", "zzit5b_-ukg_5_20"]  # vid1301, vid1970
    entries = by_id(result)
    assert entries["-4wsuPCjDBc_5_15"].captions == [
        "a squirrel is eating a peanut in it's shell", "a chipmunk is eating", "a squirrel is eating a nut",
    ]
    assert entries["-4wsuPCjDBc_5_15"].video == "-4wsuPCjDBc_5_15.avi"
    assert entries["zzit5b_-ukg_5_20"].extra == {"vid": "vid1970"}
    # vid3 has no description and the unmapped clip has no vid: neither becomes an entry.
    assert "-8y1Q0rA3n8_108_115" not in entries and "unmappedClip_1_2" not in entries


def test_msvd_custom_split_sizes():
    result = convert_msvd([MSVD / "youtube_mapping.txt", MSVD / "AllVideoDescriptions.txt"], split_sizes=(1, 1, 1968))
    assert ids_in(result, "train") == ["-4wsuPCjDBc_5_15"]
    assert ids_in(result, "val") == ["-7KMZQEsJW4_205_208"]
    assert len(ids_in(result, "test")) == 3


def test_msvd_malformed_mapping_and_missing_file(tmp_path):
    mapping = write(tmp_path / "youtube_mapping.txt", "-4wsuPCjDBc_5_15 vid1\n-7KMZQEsJW4_205_208 video2\n")
    with pytest.raises(ManifestError, match=r"youtube_mapping\.txt:2: expected '<clip> vid<N>'"):
        convert_msvd([MSVD / "AllVideoDescriptions.txt", mapping])
    with pytest.raises(ManifestError, match="youtube_mapping.txt"):
        convert_msvd([MSVD / "AllVideoDescriptions.txt"])


# --- DiDeMo ----------------------------------------------------------------------------------

V1 = "10015567@N08_3655084291_d8b58466fa.mov"


def test_didemo_paragraph_concatenates_descriptions_in_file_order():
    result = convert_didemo([DIDEMO / "train_data.json", DIDEMO / "val_data.json", DIDEMO / "test_data.json"])
    assert result.protocol == "paragraph"
    assert len(ids_in(result, "train")) == 2 and len(ids_in(result, "val")) == 1 and len(ids_in(result, "test")) == 2
    entry = by_id(result)[V1]
    assert entry.captions == ["the man starts to dance camera pans to the left the man stops dancing"]
    assert entry.start_seconds is None and entry.end_seconds is None  # whole video
    assert entry.video == V1
    assert all(len(e.captions) == 1 for e in result.entries)


def test_didemo_segment_times_are_annotator_means_in_seconds():
    result = convert_didemo([DIDEMO / "train_data.json"], protocol="segment")
    entries = by_id(result)
    assert len(result.entries) == 4
    first = entries[f"{V1}#0"]  # times [[0,0],[0,0],[0,1],[0,0]]
    assert (first.start_seconds, first.end_seconds) == (0.0, 6.25)
    pan = entries[f"{V1}#2"]  # times [[2,3],[2,3],[3,3],[2,2]]
    assert (pan.start_seconds, pan.end_seconds) == (11.25, 18.75)
    assert pan.captions == ["camera pans to the left"]
    assert pan.extra["parent_video"] == V1 and pan.video == V1


def test_didemo_split_names_and_explicit_split(tmp_path):
    result = convert_didemo([f"test={DIDEMO / 'val_data.json'}"])
    assert {e.split for e in result.entries} == {"test"}
    with pytest.raises(ManifestError, match="map to split 'train'"):
        convert_didemo([DIDEMO / "train_data.json", f"train={DIDEMO / 'val_data.json'}"])
    oddly_named = write(tmp_path / "moments.json", "[]")
    with pytest.raises(ManifestError, match=r"moments\.json: cannot tell .* SPLIT="):
        convert_didemo([oddly_named])


def test_didemo_annotation_without_times_is_an_error(tmp_path):
    bad = write(tmp_path / "train_data.json", json.dumps([{"video": "a.mov", "description": "x"}]))
    with pytest.raises(ManifestError, match=r"train_data\.json: \[0\]: missing key 'times'"):
        convert_didemo([bad])
    bad_pair = write(tmp_path / "val_data.json", json.dumps([{"video": "a.mov", "description": "x", "times": [[1]]}]))
    with pytest.raises(ManifestError, match=r"val_data\.json: \[0\]: bad 'times' pair"):
        convert_didemo([bad_pair])


# --- LSMDC -----------------------------------------------------------------------------------


def test_lsmdc_groups_sentences_per_clip_and_infers_splits():
    result = convert_lsmdc([
        LSMDC / "LSMDC16_annos_training.csv", LSMDC / "LSMDC16_annos_val.csv",
        LSMDC / "LSMDC16_challenge_1000_publictect.csv",
    ])
    assert len(ids_in(result, "train")) == 3 and len(ids_in(result, "val")) == 2 and len(ids_in(result, "test")) == 3
    clip = by_id(result)["0001_American_Beauty_00.00.56.224-00.00.59.867"]
    assert clip.captions == ["He glances at SOMEONE.", "SOMEONE smiles."]
    assert clip.video == "0001_American_Beauty/0001_American_Beauty_00.00.56.224-00.00.59.867.avi"
    assert clip.start_seconds is None  # clip files are already cut
    assert all(len(by_id(result)[v].captions) == 1 for v in ids_in(result, "test"))


def test_lsmdc_line_with_missing_fields_is_an_error(tmp_path):
    bad = write(tmp_path / "LSMDC16_annos_val.csv", "clip_a\t1\t2\t1\t2\tok\nclip_b\t1\t2\tno sentence\n")
    with pytest.raises(ManifestError, match=r"LSMDC16_annos_val\.csv:2: expected 6 tab-separated fields"):
        convert_lsmdc([bad])


# --- ActivityNet Captions --------------------------------------------------------------------


def test_activitynet_paragraph_uses_val_1_as_test():
    result = convert_activitynet([ANET / "train.json", ANET / "val_1.json", ANET / "val_2.json"])
    assert ids_in(result, "train") == ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]
    assert ids_in(result, "test") == ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0"]
    assert ids_in(result, "val") == ["v_FsS_NCZEfaI"]
    entry = by_id(result)["v_QOlSCBRmfWY"]
    assert entry.captions == [
        "A young woman is seen standing in a room. The girl dances around the room while the camera captures "
        "her movements. She continues dancing around the room and ends by laying on the floor."
    ]
    assert entry.start_seconds is None and entry.extra == {"duration": 82.73}
    assert entry.video == "v_QOlSCBRmfWY.mp4"
    swapped = convert_activitynet([ANET / "val_1.json", ANET / "val_2.json"], test_file="val_2")
    assert ids_in(swapped, "test") == ["v_FsS_NCZEfaI"]


def test_activitynet_segments_are_swapped_clamped_and_dropped():
    result = convert_activitynet([ANET / "val_1.json"], protocol="segment")
    entries = by_id(result)
    assert (entries["v_bXdq2zI1Ms0#0"].start_seconds, entries["v_bXdq2zI1Ms0#0"].end_seconds) == (6.94, 40.2)
    assert (entries["v_bXdq2zI1Ms0#1"].start_seconds, entries["v_bXdq2zI1Ms0#1"].end_seconds) == (37.97, 73.1)
    assert "v_bXdq2zI1Ms0#2" not in entries  # [74, 80] lies past the 73.1 s video
    coach = entries["v_uqiMw7tQ1Cc#1"]
    assert coach.captions == ["The coach helps the guy in red with the proper body placement and lifting."]
    assert coach.extra == {"duration": 55.15, "parent_video": "v_uqiMw7tQ1Cc"}
    assert coach.split == "test"


def test_activitynet_timestamps_must_match_sentences(tmp_path):
    record = {"duration": 5, "timestamps": [[0, 1]], "sentences": ["x", "y"]}
    bad = write(tmp_path / "train.json", json.dumps({"v_a": record}))
    with pytest.raises(ManifestError, match=r"train\.json: v_a: 1 timestamps for 2 sentences"):
        convert_activitynet([bad], protocol="segment")
    not_object = write(tmp_path / "val_2.json", "[]")
    with pytest.raises(ManifestError, match=r"val_2\.json: expected a JSON object"):
        convert_activitynet([not_object])


# --- generic ---------------------------------------------------------------------------------


def test_generic_csv_groups_rows_per_video():
    result = convert_generic([GENERIC / "captions.csv"], split_column="split")
    entries = by_id(result)
    assert list(entries) == ["clips/kitchen", "clips/park", "clips/beach"]
    assert entries["clips/kitchen"].captions == ["a man chops onions", "someone cooks in a kitchen"]
    assert entries["clips/kitchen"].video == "clips/kitchen.mp4"
    assert entries["clips/beach"].split == "test" and len(entries["clips/beach"].captions) == 2


def test_generic_json_with_configured_keys_and_clip_times():
    result = convert_generic(
        [GENERIC / "captions.json"], records_key="annotations", video_column="file", caption_column="text",
        video_id_column="id", start_column="start", end_column="end", default_split="val",
    )
    entries = by_id(result)
    goal = entries["match-goal"]
    assert goal.captions == ["a player scores a goal", "the crowd cheers", "a goal is scored"]
    assert (goal.start_seconds, goal.end_seconds, goal.split) == (12.5, 20.0, "val")
    assert (entries["match-card"].start_seconds, entries["match-card"].end_seconds) == (40.0, 44.0)


def test_generic_jsonl_and_errors(tmp_path):
    good = write(tmp_path / "a.jsonl", '{"video": "x.mp4", "caption": "one"}\n\n{"video": "x.mp4", "caption": "two"}\n')
    assert convert_generic([good]).entries[0].captions == ["one", "two"]
    broken = write(tmp_path / "b.jsonl", '{"video": "x.mp4", "caption": "one"}\n{"video": \n')
    with pytest.raises(ManifestError, match=r"b\.jsonl:2: malformed JSON"):
        convert_generic([broken])
    with pytest.raises(ManifestError, match=r"captions\.csv:1: missing column 'sentence'"):
        convert_generic([GENERIC / "captions.csv"], caption_column="sentence")
    conflict = write(tmp_path / "c.csv", "video,caption,split\nx.mp4,one,train\nx.mp4,two,test\n")
    with pytest.raises(ManifestError, match=r"c\.csv: line 3: video id 'x' was first seen at .*line 2"):
        convert_generic([conflict], split_column="split")
    ragged = write(tmp_path / "d.csv", "video,caption\nx.mp4,one,extra\n")
    with pytest.raises(ManifestError, match=r"d\.csv:2: expected 2 fields"):
        convert_generic([ragged])
    bad_time = write(tmp_path / "e.csv", "video,caption,start\nx.mp4,one,soon\n")
    with pytest.raises(ManifestError, match=r"e\.csv: line 2: column 'start' must be non-negative seconds"):
        convert_generic([bad_time], start_column="start")


# --- prepare: locating videos, writing manifest + sidecar, CLI -------------------------------


def test_prepare_writes_manifest_relative_paths_and_protocol_sidecar(tmp_path):
    videos = touch(tmp_path / "MSRVTT_Videos", *(f"video{i}.mp4" for i in range(5)))  # video5 missing
    out = tmp_path / "manifests" / "msrvtt.jsonl"
    report = prepare(
        "msrvtt", [MSRVTT / "MSRVTT_data.json"], videos, out, test_csv=MSRVTT / "MSRVTT_JSFUSION_test.csv",
    )
    entries = read_manifest(out)
    assert [e.video_id for e in entries] == [f"video{i}" for i in range(6)]
    assert entries[0].video == "../MSRVTT_Videos/video0.mp4"
    assert resolve_video_path(out, entries[0]).resolve() == (videos / "video0.mp4").resolve()
    assert resolve_video_path(out, entries[5]).resolve() == (videos / "video5.mp4").resolve()  # expected place
    assert report.missing_videos == ["video5.mp4"]
    assert report.splits == {"train": {"videos": 5, "captions": 100}, "test": {"videos": 1, "captions": 1}}
    sidecar = read_protocol(out)
    assert sidecar == json.loads((tmp_path / "manifests" / "msrvtt.jsonl.protocol.json").read_text())
    assert sidecar["dataset"] == "msrvtt" and sidecar["protocol"] == "retrieval-9k"
    assert sidecar["options"]["test_captions"] == "jsfusion"
    assert sidecar["missing_videos"] == {"count": 1, "videos": ["video5.mp4"]}
    assert any("JSFusion" in c for c in sidecar["conventions"])


def test_prepare_strict_fails_on_missing_videos_and_writes_nothing(tmp_path):
    videos = touch(tmp_path / "videos", "-4wsuPCjDBc_5_15.avi")
    out = tmp_path / "msvd.jsonl"
    with pytest.raises(ManifestError, match=r"4 of 5 videos not found"):
        prepare("msvd", [MSVD / "AllVideoDescriptions.txt", MSVD / "youtube_mapping.txt"], videos, out, strict=True)
    assert not out.exists() and not Path(str(out) + ".protocol.json").exists()


def test_prepare_finds_videos_in_release_layouts(tmp_path):
    # LSMDC clips live in movie folders; DiDeMo .mov re-encoded to .mp4; ActivityNet without "v_".
    lsmdc_videos = touch(
        tmp_path / "lsmdc",
        "0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.129.avi",
        "0002_As_Good_As_It_Gets_00.01.02.000-00.01.04.500.avi",  # flat layout works too
    )
    report = prepare("lsmdc", [LSMDC / "LSMDC16_annos_training.csv"], lsmdc_videos, tmp_path / "lsmdc.jsonl")
    assert report.missing_videos == ["0001_American_Beauty/0001_American_Beauty_00.00.56.224-00.00.59.867.avi"]

    didemo_videos = touch(tmp_path / "didemo", V1.replace(".mov", ".mp4"), "10130005@N08_2856413455_1d1b0d2a7c.mp4")
    report = prepare("didemo", [DIDEMO / "train_data.json"], didemo_videos, tmp_path / "didemo.jsonl")
    assert report.missing_videos == []
    assert by_video_id(tmp_path / "didemo.jsonl")[V1].video == f"didemo/{V1.replace('.mov', '.mp4')}"

    anet_videos = touch(tmp_path / "anet", "QOlSCBRmfWY.mkv", "v_ehGHCYKzyZ8.mp4")
    report = prepare("activitynet", [ANET / "train.json"], anet_videos, tmp_path / "anet.jsonl", protocol="segment")
    assert report.missing_videos == []
    segments = read_manifest(tmp_path / "anet.jsonl")
    assert len(segments) == 4 and segments[0].video == "anet/QOlSCBRmfWY.mkv"


def by_video_id(manifest):
    return {e.video_id: e for e in read_manifest(manifest)}


def test_prepare_rejects_duplicate_ids_and_missing_videos_dir(tmp_path):
    videos = touch(tmp_path / "videos")
    with pytest.raises(ManifestError, match="occurs in two splits or files"):
        same_file_twice = [f"train={ANET / 'val_2.json'}", f"test={ANET / 'val_2.json'}"]
        prepare("activitynet", same_file_twice, videos, tmp_path / "m.jsonl")
    with pytest.raises(ManifestError, match="videos directory not found"):
        msvd = [MSVD / "AllVideoDescriptions.txt", MSVD / "youtube_mapping.txt"]
        prepare("msvd", msvd, tmp_path / "nope", tmp_path / "m.jsonl")


def test_prepare_cli(tmp_path, capsys):
    videos = touch(tmp_path / "videos", "x.mp4")
    out = tmp_path / "didemo.jsonl"
    code = main([
        "prepare", "didemo", "--annotations", str(DIDEMO / "train_data.json"), str(DIDEMO / "test_data.json"),
        "--videos", str(videos), "--out", str(out), "--protocol", "segment",
    ])
    assert code == 0
    captured = capsys.readouterr()
    assert "didemo (segment)" in captured.out and "train: 4 videos, 4 captions" in captured.out
    assert "missing videos: 4" in captured.err  # distinct files; segments share their video
    assert read_protocol(out)["options"] == {"protocol": "segment"}
    assert len(read_manifest(out, "test")) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "didemo", "--annotations", "x.json", "--videos", str(videos)])  # no --out
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["prepare", "youcook2", "--annotations", "x.json", "--videos", str(videos), "--out", str(out)])


def test_every_cli_dataset_has_a_converter():
    assert set(CONVERTERS) == {"msrvtt", "msvd", "didemo", "lsmdc", "activitynet", "generic"}
