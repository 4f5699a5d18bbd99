"""Bad videos through every command (issue #7, items 1 and 6).

The inputs come from ``video_zoo`` (tests/robustness/conftest.py): a missing path, a directory,
an empty file, a text file named .mp4, a truncated mp4, an audio-only mp4, a zero-frame mp4,
and the good videos that are easy to get wrong (one frame, 8K, a non-ASCII name, AV1).
Each command must name every bad file on one line with its reason, never show a traceback
(unless --debug), keep going with the good ones, and say in its exit status that some failed.
docs/ROBUSTNESS.md is the table of what each input produces.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
from pathlib import Path

import pytest

from calmcap.cli import main
from calmcap.errors import VideoDecodeError
from tests.robustness.conftest import HUGE_HEIGHT, HUGE_WIDTH, VideoCase, VideoZoo
from tests.test_pipeline import checkpoint_dirs, manifest_videos
from tests.test_training import CONFIG, RECIPE, REPO, _env, _launch_args, _overrides, _records

BAD = ["missing", "directory", "empty", "text", "truncated", "audio_only", "zero_frames"]
GOOD = ["one_frame", "huge", "non_ascii", "av1"]
FAST_DECODING = ["--num-beams", "1", "--max-length", "5"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_model) -> str:
    return str(checkpoint_dirs(tmp_path_factory, make_model)["calm"])


def _lines_naming(text: str, case: VideoCase) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{case.path}: ")]


def _manifest(path: Path, synth_manifest: Path, zoo: VideoZoo, zoo_split: str, synth_splits: dict[str, int]) -> Path:
    """A manifest with the first ``synth_splits[split]`` videos of each split of the small
    benchmark plus every zoo input in ``zoo_split`` (ids ``zoo_<name>``, bad ones first);
    video paths are absolute."""
    lines = []
    taken: dict[str, int] = {}
    for text in synth_manifest.read_text().splitlines():
        entry = json.loads(text)
        split = entry["split"]
        if taken.get(split, 0) < synth_splits.get(split, 0):
            taken[split] = taken.get(split, 0) + 1
            entry["video"] = str((synth_manifest.parent / entry["video"]).resolve())
            lines.append(entry)
    for case in zoo.values():
        lines.append({"video_id": f"zoo_{case.name}", "video": str(case.path),
                      "captions": [f"a clip that is {case.what}"], "split": zoo_split})
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    return path


# ============================================================================ the inputs themselves


def test_the_zoo_holds_what_it_claims(video_zoo):
    import av

    from calmcap.data.video import probe_video, read_frames

    assert [c.name for c in video_zoo.bad] == BAD and [c.name for c in video_zoo.good] == GOOD
    for case in video_zoo.bad:
        with pytest.raises(VideoDecodeError) as excinfo:
            read_frames(case.path, 4)
        assert excinfo.value.path == str(case.path), case.name
        assert case.reason in excinfo.value.reason, (case.name, excinfo.value.reason)
        assert "\n" not in str(excinfo.value)
    # The zero-frame file is a real H.264 stream without a frame, not another kind of damage;
    # the audio-only file is a valid container with audio and nothing else.
    with av.open(str(video_zoo["zero_frames"].path)) as container:
        (stream,) = container.streams.video
        assert stream.codec_context.name == "h264"
        assert sum(1 for packet in container.demux(stream) if packet.size) == 0
    with av.open(str(video_zoo["audio_only"].path)) as container:
        assert not container.streams.video and len(container.streams.audio) == 1

    frames, mask = read_frames(video_zoo["one_frame"].path, 4)
    assert frames.shape == (4, 48, 64, 3) and mask.tolist() == [True, False, False, False]
    frames, mask = read_frames(video_zoo["non_ascii"].path, 4)
    assert frames.shape == (4, 48, 64, 3) and mask.all()
    assert probe_video(video_zoo["av1"].path).backend == "pyav"
    if importlib.util.find_spec("decord") is not None:
        with pytest.raises(VideoDecodeError):
            read_frames(video_zoo["av1"].path, 4, backend="decord")
    frames, mask = read_frames(video_zoo["av1"].path, 4)
    assert frames.shape == (4, 64, 64, 3) and mask.all()


def test_huge_video_is_downscaled_inside_the_decoder(video_zoo, monkeypatch):
    """An 8K clip decoded with the default bound never holds T full-size frames."""
    import tracemalloc

    from calmcap.constants import MAX_FRAME_SIDE
    from calmcap.data import video as video_lib
    from calmcap.data.dataset import VideoSource
    from calmcap.pipeline import decode_clip

    path = video_zoo["huge"].path
    info = video_lib.probe_video(path, backend="pyav")
    assert (info.width, info.height, info.num_frames) == (HUGE_WIDTH, HUGE_HEIGHT, 2)
    assert VideoSource().max_side == MAX_FRAME_SIDE  # training reads with the same bound

    shapes = []
    real_read_frames = video_lib.read_frames

    def spy(*args, **kwargs):
        frames, mask = real_read_frames(*args, **kwargs)
        shapes.append(frames.shape)
        return frames, mask

    monkeypatch.setattr(video_lib, "read_frames", spy)
    full_frame_bytes = HUGE_WIDTH * HUGE_HEIGHT * 3  # 99.5 MB
    tracemalloc.start()
    try:
        clip = decode_clip(path, 8, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert clip.error is None, clip.error
    assert tuple(clip.video.shape) == (8, 3, 64, 64) and int(clip.mask.sum()) == 2
    (shape,) = shapes
    assert shape[0] == 8 and max(shape[1:3]) == MAX_FRAME_SIDE
    assert shape[2] / shape[1] == pytest.approx(HUGE_WIDTH / HUGE_HEIGHT, rel=0.01)
    # 8 frames (2 real + 6 padding copies) at full size would be ~800 MB of numpy arrays.
    assert peak < 2 * full_frame_bytes, f"peak {peak / 1e6:.0f} MB"


# ============================================================================ caption


def test_caption_batch_names_each_bad_file_once_and_captions_the_rest(model_dir, synth_small, video_zoo, capsys):
    synth = [str(v) for v in manifest_videos(synth_small, "test")[:2]]
    bad = [str(c.path) for c in video_zoo.bad]
    good = [str(c.path) for c in video_zoo.good]
    # Good and bad interleaved: synth0, missing, one_frame, directory, huge, ..., synth1, audio_only, zero_frames
    args = [synth[0]]
    for bad_one, good_one in zip(bad, good + [synth[1]] + [None] * len(bad), strict=False):
        args += [bad_one] + ([good_one] if good_one else [])
    assert sorted(args) == sorted(synth + bad + good)
    code = main(["caption", *args, "--model", model_dir, *FAST_DECODING, "--batch-size", "3"])
    captured = capsys.readouterr()
    assert code == 1
    expected_good = [a for a in args if a not in bad]
    lines = [line.split("\t") for line in captured.out.splitlines()]
    assert [line[0] for line in lines] == expected_good  # every good one, in argument order
    assert all(len(line) == 2 for line in lines)  # (the random model's caption may be empty)
    err = captured.err.splitlines()
    for case in video_zoo.bad:
        (line,) = _lines_naming(captured.err, case)
        assert case.reason_as_argument in line, line
    assert len(err) == len(bad) + 1  # one line per bad video and the summary
    assert err[-1].startswith(f"captioned {len(expected_good)} of {len(args)} videos")
    assert f"{len(bad)} failed" in err[-1]
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("name", BAD)
def test_caption_one_bad_video_is_one_line_and_exit_1(name, model_dir, video_zoo, capsys):
    case = video_zoo[name]
    assert main(["caption", str(case.path), "--model", model_dir, *FAST_DECODING]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"{case.path}: ") and case.reason_as_argument in line


@pytest.mark.parametrize("name", GOOD)
def test_caption_one_hard_but_good_video(name, model_dir, video_zoo, capsys):
    case = video_zoo[name]
    assert main(["caption", str(case.path), "--model", model_dir, *FAST_DECODING, "--json"]) == 0
    captured = capsys.readouterr()
    (item,) = json.loads(captured.out)
    assert item["video"] == str(case.path) and isinstance(item["caption"], str) and math.isfinite(item["score"])
    assert captured.err == ""


def test_a_single_video_command_fails_in_one_line_and_debug_shows_the_traceback(model_dir, video_zoo, capsys):
    case = video_zoo["truncated"]
    assert main(["explain", str(case.path), "--model", model_dir]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"calmcap: error: {case.path}: ") and case.reason in line
    with pytest.raises(VideoDecodeError, match="truncated"):
        main(["--debug", "explain", str(case.path), "--model", model_dir])


# ============================================================================ evaluate, index, check


def test_evaluate_skips_counts_and_lists_bad_videos(model_dir, synth_small, video_zoo, tmp_path, capsys):
    """Bad videos are not captioned, and stay in the retrieval gallery as misses (issue #12)."""
    manifest = _manifest(tmp_path / "with_bad.jsonl", synth_small, video_zoo, "test", {"test": 5})
    out = tmp_path / "report"
    code = main(["evaluate", "--model", model_dir, "--data", str(manifest), "--split", "test", "--out", str(out),
                 "--num-workers", "0", "--batch-size", "8", "--no-java", "--no-plots", "--no-progress", *FAST_DECODING])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{len(BAD)} video(s) could not be decoded: not captioned, and ranked last in retrieval" in captured.err
    assert "Traceback" not in captured.err
    (row,) = json.loads((out / "report.json").read_text(encoding="utf-8"))["evaluations"]
    num_videos, num_captions = 5 + len(GOOD) + len(BAD), 5 * 5 + len(GOOD) + len(BAD)
    assert row["counts"] == {"videos": num_videos, "videos_skipped": len(BAD), "captions": num_captions}
    # Each bad video ranks last for its own caption (t2v) and, as a query, ranks its caption last (v2t).
    ids = [json.loads(line)["video_id"] for line in manifest.read_text(encoding="utf-8").splitlines()]
    caption_owner = [i for i, line in enumerate(manifest.read_text(encoding="utf-8").splitlines())
                     for _ in json.loads(line)["captions"]]
    for name in BAD:
        v = ids.index(f"zoo_{name}")
        assert row["ranks"]["v2t"][v] == num_captions
        assert [row["ranks"]["t2v"][t] for t, owner in enumerate(caption_owner) if owner == v] == [num_videos]
    assert row["metrics"]["t2v/R@10"] <= 100 * (num_captions - len(BAD)) / num_captions
    # Attribute accuracy covers the benchmark's videos; the zoo's carry no ground truth.
    assert row["protocol"]["attributes"]["videos"] == 5
    assert len(row["bad_videos"]) == len(BAD)
    for case in video_zoo.bad:
        (message,) = [m for m in row["bad_videos"] if m.startswith(f"{case.path}: ")]
        assert case.reason in message
    assert all(math.isfinite(v) for v in row["metrics"].values())
    predictions = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert {p["image_id"] for p in predictions} >= {f"zoo_{name}" for name in GOOD}
    assert not {p["image_id"] for p in predictions} & {f"zoo_{name}" for name in BAD}
    report_md = (out / "report.md").read_text(encoding="utf-8")
    assert all(f"{case.path}: " in report_md for case in video_zoo.bad)
    assert f"**undecodable videos in this report**: {len(BAD)} " in report_md

    # A split where nothing decodes has no metrics: one line, no report.
    only_bad = tmp_path / "only_bad.jsonl"
    only_bad.write_text("".join(line for line in manifest.read_text(encoding="utf-8").splitlines(keepends=True)
                                if any(f'"zoo_{name}"' in line for name in BAD)), encoding="utf-8")
    code = main(["evaluate", "--model", model_dir, "--data", str(only_bad), "--split", "test",
                 "--out", str(tmp_path / "none"),
                 "--num-workers", "0", "--no-java", "--no-plots", "--no-progress", *FAST_DECODING])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"calmcap: error: {only_bad} split test: none of the {len(BAD)} videos of the split "
                           "could be decoded (first: ")
    assert not (tmp_path / "none" / "report.json").exists()


def test_index_lists_bad_videos_and_indexes_the_good_ones(model_dir, synth_small, video_zoo, tmp_path, capsys):
    import numpy as np

    synth = [str(v) for v in manifest_videos(synth_small, "test")[:2]]
    args = [str(c.path) for c in video_zoo.values()] + synth
    index = tmp_path / "index"
    for attempt in range(2):  # the bad ones are tried again on a re-run, the good ones are not
        code = main(["index", *args, "--out", str(index), "--model", model_dir, "--no-progress"])
        captured = capsys.readouterr()
        assert code == 1
        for case in video_zoo.bad:
            (line,) = _lines_naming(captured.err, case)
            assert case.reason_as_argument in line
        assert "Traceback" not in captured.err
        new, old = (len(GOOD) + 2, 0) if attempt == 0 else (0, len(GOOD) + 2)
        assert f"indexed {new} new video(s) ({old} already indexed, {len(BAD)} failed)" in captured.out
    good = [str(c.path) for c in video_zoo.good] + synth
    ids = json.loads((index / "ids.json").read_text(encoding="utf-8"))
    assert sorted(ids) == sorted(str(Path(p).resolve()) for p in good)
    assert np.load(index / "embeddings.npy").shape[0] == len(good)
    listed = json.loads((index / "bad_videos.json").read_text(encoding="utf-8"))
    decoded_bad = [c for c in video_zoo.bad if c.argument_reason is None]  # missing/folder never reach a decoder
    assert sorted(item["video"] for item in listed) == sorted(str(c.path) for c in decoded_bad)


def test_check_lists_exactly_the_bad_videos_with_reasons(synth_small, video_zoo, tmp_path, capsys):
    manifest = _manifest(tmp_path / "with_bad.jsonl", synth_small, video_zoo, "test", {"test": 3})
    out = tmp_path / "check"
    assert main(["check", str(manifest), "--workers", "0", "--no-progress", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"good: {3 + len(GOOD)}  bad: {len(BAD)}" in printed
    listed = [json.loads(line) for line in (out / "bad_videos.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [item["video_id"] for item in listed] == [f"zoo_{name}" for name in BAD]  # manifest order
    for item, case in zip(listed, video_zoo.bad, strict=True):
        assert case.reason in item["reason"], item
        assert f"zoo_{case.name}  {case.path}: {item['reason']}" in printed


# ============================================================================ prepare


def test_prepare_reports_missing_videos_and_strict_refuses(synth_small, video_zoo, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    source = manifest_videos(synth_small, "test")[0]
    (videos / "a.mp4").write_bytes(source.read_bytes())
    non_ascii = video_zoo["non_ascii"].path
    (videos / non_ascii.name).write_bytes(non_ascii.read_bytes())
    table = tmp_path / "captions.csv"
    table.write_text(f"video,caption\na.mp4,a shape moves\n{non_ascii.name},a square slides\n"
                     "gone.mp4,never downloaded\nsub/also_gone.mp4,lost too\n", encoding="utf-8")

    out = tmp_path / "loose" / "manifest.jsonl"
    args = ["prepare", "generic", "--annotations", str(table), "--videos", str(videos)]
    assert main([*args, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "missing videos: 2" in captured.err and "Traceback" not in captured.err
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4  # kept, at their expected paths
    sidecar = json.loads(out.with_name("manifest.jsonl.protocol.json").read_text(encoding="utf-8"))
    assert sidecar["missing_videos"] == {"count": 2, "videos": ["gone.mp4", "sub/also_gone.mp4"]}

    strict_out = tmp_path / "strict" / "manifest.jsonl"
    assert main([*args, "--out", str(strict_out), "--strict"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("calmcap: error: ") and "2 of 4 videos not found" in line and "gone.mp4" in line
    assert not strict_out.exists()


# ============================================================================ training


def test_training_skips_bad_videos_and_writes_them_down(synth_small, video_zoo, tmp_path):
    # 13 + 4 good and 7 bad training videos: 24 = 3 batches of 8, so 3 steps are one epoch and
    # every bad video is asked for once.
    manifest = _manifest(tmp_path / "train_with_bad.jsonl", synth_small, video_zoo, "train", {"train": 13, "val": 7})
    out = tmp_path / "run"
    settings = {"optim.max_steps": 3, "eval.every_steps": 0, "eval.at_end": "false", "checkpoint.every_steps": 0}
    command = _launch_args(1) + [str(RECIPE), "--config", str(CONFIG)] + _overrides(manifest, out, **settings)
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "step skipped" not in result.stderr and "Traceback" not in result.stderr
    train = _records(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3]
    for record in train:
        numbers = {k: v for k, v in record.items() if isinstance(v, float)}
        assert numbers and all(math.isfinite(v) for v in numbers.values()), record
    lines = (out / "bad_videos.txt").read_text(encoding="utf-8").splitlines()
    for case in video_zoo.bad:
        named = _lines_naming("\n".join(lines), case)
        assert named and all(case.reason in line for line in named), (case.name, lines)
    bad_paths = tuple(f"{c.path}: " for c in video_zoo.bad)
    assert all(line.startswith(bad_paths) for line in lines)  # no good video (8K, AV1, ...) listed
    assert (out / "model" / "model.safetensors").is_file()


def test_training_data_gives_up_after_a_run_of_unreadable_videos(video_zoo, tmp_path):
    from calmcap.data.dataset import MAX_SKIPS, VideoCaptionDataset
    from calmcap.errors import CalmcapError

    # A manifest whose videos are all gone (a wrong --videos folder): skipping would spin forever.
    folder = video_zoo["missing"].path.parent
    manifest = tmp_path / "all_gone.jsonl"
    entries = [{"video_id": f"v{i}", "video": str(folder / f"gone_{i}.mp4"), "captions": ["x"], "split": "train"}
               for i in range(MAX_SKIPS + 5)]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    dataset = VideoCaptionDataset(manifest, "train", 4, 32, mode="one_per_video", train=True)
    with pytest.raises(CalmcapError, match=rf"^{MAX_SKIPS} unreadable videos in a row "
                                           rf"\(last: .*gone_{MAX_SKIPS + 2}\.mp4: "
                                           r"file not found\); check the manifest with `calmcap check`$"):
        dataset[3]
