"""Passes over a manifest's videos: check_videos, cache_frames, cache_features, their CLIs, crash isolation.

A small manifest holds generated videos (brightness videos whose frame index is recoverable
from the pixel values, one textured non-square video so resizing and cropping matter) and three
bad entries: a missing file, a text file named .mp4 and a truncated mp4.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from calmcap.cli import main
from calmcap.constants import BAD_VIDEOS_FILE, CHECK_PROGRESS_FILE, CHECK_SUMMARY_FILE
from calmcap.data import feature_cache, frame_cache, video_check
from calmcap.data.cache import FEATURES, FRAMES, cache_file, load_array, read_cache_meta
from calmcap.data.feature_cache import cache_features, check_feature_cache, tower_fingerprint
from calmcap.data.frame_cache import cache_frames
from calmcap.data.manifest import ManifestEntry, read_manifest, write_manifest
from calmcap.data.video import encode_video, sample_indices
from calmcap.data.video_check import check_videos
from calmcap.data.worker_pool import run_tasks
from calmcap.errors import CalmcapError

from .conftest import brightness_frames, decoded_indices

IMAGE_SIZE = 64  # calmcap-tiny's input size, so one frames cache serves the features tests too
MAX_FRAMES = 32
FPS = 10
GOOD = ["plain", "clip", "long", "texture"]
BAD = {"missing": "file not found", "text": "not a video", "truncated": "truncated"}


def textured_frames(num_frames: int, height: int = 48, width: int = 80) -> np.ndarray:
    """uint8 [N, H, W, 3]: a moving smooth pattern with fine detail (antialiasing has work to do)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(num_frames):
        r = 127 + 120 * np.sin((x + 2 * i) / 5.0)
        g = 127 + 120 * np.cos((y - i) / 3.0)
        b = 127 + 120 * np.sin((x + y + 3 * i) / 7.0)
        frames.append(np.stack([r, g, b], axis=-1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prep")
    videos = root / "videos"
    encode_video(videos / "plain.mp4", brightness_frames(30), fps=FPS, crf=4)
    encode_video(videos / "clip.mp4", brightness_frames(40), fps=FPS, crf=4, keyframe_interval=10)
    encode_video(videos / "long.mp4", brightness_frames(80), fps=FPS, crf=4, keyframe_interval=10)
    encode_video(videos / "texture.mp4", textured_frames(20), fps=FPS, crf=10)
    (videos / "text.mp4").write_text("this is not a video\n" * 10)
    data = (videos / "long.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(data[: len(data) // 2])
    shutil.copyfile(videos / "plain.mp4", videos / "other_split.mp4")

    def entry(video_id: str, split: str = "train", **kwargs) -> ManifestEntry:
        return ManifestEntry(video_id=video_id, video=f"videos/{video_id}.mp4", captions=[f"a video called {video_id}"],
                             split=split, **kwargs)

    entries = [
        entry("plain"),
        entry("clip", start_seconds=1.0, end_seconds=2.5),  # frames [10, 25)
        entry("missing"),
        entry("long"),
        entry("text"),
        entry("texture"),
        entry("truncated"),
        entry("other_split", split="test"),
    ]
    write_manifest(root / "manifest.jsonl", entries)
    return root


@pytest.fixture(scope="module")
def manifest(dataset_dir: Path) -> Path:
    return dataset_dir / "manifest.jsonl"


@pytest.fixture(scope="module")
def frames_cache(manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    cache_dir = tmp_path_factory.mktemp("cache")
    report = cache_frames(manifest, cache_dir, IMAGE_SIZE, splits="train", max_frames=MAX_FRAMES, workers=0,
                          progress=False)
    return cache_dir, report


# ---------------------------------------------------------------------------------------------
# check_videos
# ---------------------------------------------------------------------------------------------


def test_check_videos_lists_exactly_the_bad_videos_and_resumes(manifest: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "check"
    report = check_videos(manifest, splits="train", workers=2, out=out, progress=False)
    assert report.num_videos == 7 and report.num_checked == 7 and report.num_resumed == 0
    assert report.num_ok == 4
    assert [b["video_id"] for b in report.bad] == ["missing", "text", "truncated"]  # manifest order
    for record in report.bad:
        assert BAD[record["video_id"]] in record["reason"], record
        assert record["video"] == f"videos/{record['video_id']}.mp4"
    on_disk = [json.loads(line) for line in (out / BAD_VIDEOS_FILE).read_text().splitlines()]
    assert on_disk == report.bad
    assert all(set(r) == {"video_id", "video", "reason"} for r in on_disk)
    summary = json.loads((out / CHECK_SUMMARY_FILE).read_text())
    assert summary["num_ok"] == 4 and summary["num_bad"] == 3 and summary["complete"]
    assert summary["resolutions"] == {"64x48": 3, "80x48": 1}
    assert sum(summary["bad_reasons"].values()) == 3
    assert len((out / CHECK_PROGRESS_FILE).read_text().splitlines()) == 7

    # A second run does no work: every video comes from the progress file.
    def fail(task):
        raise AssertionError(f"{task.video_id} was checked again")

    monkeypatch.setattr(video_check, "_check_one", fail)
    again = check_videos(manifest, splits="train", workers=0, out=out, progress=False)
    assert again.num_checked == 0 and again.num_resumed == 7
    assert again.bad == report.bad and again.num_ok == 4
    monkeypatch.undo()

    # An interrupted run leaves a torn last line; a changed file and a forgotten video are re-checked.
    lines = (out / CHECK_PROGRESS_FILE).read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["video_id"] != "texture"]
    (out / CHECK_PROGRESS_FILE).write_text("\n".join(kept) + '\n{"video_id": "tex')
    plain = manifest.parent / "videos" / "plain.mp4"
    os.utime(plain, ns=(plain.stat().st_atime_ns, plain.stat().st_mtime_ns + 10**9))
    seen: list[str] = []
    original = video_check._check_one
    monkeypatch.setattr(video_check, "_check_one", lambda task: seen.append(task.video_id) or original(task))
    third = check_videos(manifest, splits="train", workers=0, out=out, progress=False)
    assert sorted(seen) == ["plain", "texture"]
    assert third.num_checked == 2 and third.num_resumed == 5 and third.num_ok == 4 and third.num_bad == 3


def test_check_cli_exit_status_and_summary(manifest: Path, tmp_path: Path, capsys):
    assert main(["check", str(manifest), "--split", "test", "--workers", "0", "--out", str(tmp_path / "a"),
                 "--no-progress"]) == 0
    assert "good: 1  bad: 0" in capsys.readouterr().out
    assert main(["check", str(manifest), "--split", "train", "--workers", "0", "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "bad: 3" in printed and "missing" in printed and "file not found" in printed


def _crash_on_three(x: int) -> dict:
    """Module level so spawned workers can import it; kills its process on task 3."""
    if x == 3:
        os._exit(3)
    return {"x": x * 10}


def test_run_tasks_survives_a_worker_crash():
    results: dict[int, dict] = {}
    run_tasks(_crash_on_three, range(8), workers=2,
              on_result=lambda task, result: results.__setitem__(task, result),
              on_crash=lambda task, reason: {"crashed": reason})
    assert sorted(results) == list(range(8))
    assert "crashed" in results[3] and "worker process died" in results[3]["crashed"]
    assert all(results[i] == {"x": i * 10} for i in range(8) if i != 3)


# ---------------------------------------------------------------------------------------------
# cache_frames
# ---------------------------------------------------------------------------------------------


def test_cache_frames_shapes_clip_windows_and_bad_videos(frames_cache, manifest: Path):
    cache_dir, report = frames_cache
    assert report.num_written == 4 and report.num_skipped == 0 and report.num_videos == 7
    assert [b["video_id"] for b in report.bad] == ["missing", "text", "truncated"]
    assert [json.loads(line)["video_id"] for line in (cache_dir / FRAMES / BAD_VIDEOS_FILE).read_text().splitlines()] \
        == ["missing", "text", "truncated"]
    frames = {v: load_array(cache_file(cache_dir, FRAMES, v)) for v in GOOD}
    for v, array in frames.items():
        assert array.dtype == np.uint8 and array.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3), v
    assert decoded_indices(frames["plain"]).tolist() == list(range(30))  # every frame
    assert decoded_indices(frames["clip"]).tolist() == list(range(10, 25))  # the clip's window only
    assert decoded_indices(frames["long"]).tolist() == sample_indices(80, MAX_FRAMES)[0].tolist()  # uniform
    assert len(frames["texture"]) == 20
    assert not cache_file(cache_dir, FRAMES, "other_split").exists()  # another split
    meta = read_cache_meta(cache_dir, FRAMES)
    assert meta["image_size"] == IMAGE_SIZE and meta["max_frames"] == MAX_FRAMES and meta["count"] == 4
    assert meta["complete"] and meta["manifest"] == str(manifest.resolve())


def test_cache_frames_resumes_and_refuses_other_settings(frames_cache, manifest: Path, monkeypatch):
    cache_dir, _ = frames_cache
    target = cache_file(cache_dir, FRAMES, "plain")
    before = target.stat().st_mtime_ns
    decoded: list[str] = []
    original = frame_cache._cache_frames_one
    monkeypatch.setattr(frame_cache, "_cache_frames_one", lambda task: decoded.append(task.video_id) or original(task))
    again = cache_frames(manifest, cache_dir, IMAGE_SIZE, splits="train", max_frames=MAX_FRAMES, workers=0,
                         progress=False)
    assert again.num_written == 0 and again.num_skipped == 4
    assert sorted(decoded) == ["missing", "text", "truncated"]  # only the uncached (bad) ones are retried
    assert target.stat().st_mtime_ns == before
    with pytest.raises(CalmcapError, match="image_size"):
        cache_frames(manifest, cache_dir, 32, splits="train", max_frames=MAX_FRAMES, workers=0, progress=False)


def test_dataset_from_frames_cache_matches_decoding(frames_cache, manifest: Path):
    from calmcap.data.dataset import VideoCaptionDataset, VideoSource

    cache_dir, _ = frames_cache
    # "long" is left out: its cache keeps 32 of 80 frames, so 8 sampled from those differ.
    entries = [e for e in read_manifest(manifest, "train") if e.video_id in ("plain", "clip", "texture")]
    kwargs = dict(num_frames=8, image_size=IMAGE_SIZE, mode="videos", entries=entries)
    cached = VideoCaptionDataset(manifest, "train", source=VideoSource(frame_cache=str(cache_dir)), **kwargs)
    decoded = VideoCaptionDataset(manifest, "train", **kwargs)
    for i in range(len(entries)):
        a, b = cached[i], decoded[i]
        assert a["valid"] and b["valid"]
        assert a["video"].shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert a["video_mask"].tolist() == b["video_mask"].tolist()
        diff = (a["video"] - b["video"]).abs()
        # Same decoded pixels, same uint8 resize: at most one uint8 step (~0.015 normalised).
        assert diff.max().item() <= 0.02 and diff.mean().item() < 1e-3, entries[i].video_id


# ---------------------------------------------------------------------------------------------
# cache_features
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(make_model):
    return make_model(seed=3).eval()


def _expected_features(model, frames: np.ndarray):
    import torch

    from calmcap.data.transforms import clip_transform

    with torch.no_grad():
        return model.encode_frames(clip_transform(frames, IMAGE_SIZE)[None])[0].numpy()


def test_cache_features_match_encode_frames_and_resume(frames_cache, manifest: Path, tiny_model, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    shutil.copytree(frames_cache[0], cache_dir)
    # batch_size 16 frames: videos are split over several forwards and share others.
    report = cache_features(tiny_model, manifest, cache_dir, splits="train", batch_size=16, progress=False)
    assert report.num_written == 4 and [b["video_id"] for b in report.bad] == ["missing", "text", "truncated"]
    for v in GOOD:
        frames = load_array(cache_file(cache_dir, FRAMES, v))
        features = load_array(cache_file(cache_dir, FEATURES, v))
        assert features.dtype == np.float16 and features.shape == (len(frames), 128), v
        np.testing.assert_allclose(features.astype(np.float32), _expected_features(tiny_model, frames), atol=1e-2,
                                   rtol=1e-2)
    meta = read_cache_meta(cache_dir, FEATURES)
    assert meta["tower"]["fingerprint"] == tower_fingerprint(tiny_model)
    assert meta["tower"]["arch"] == "calmcap-tiny-clip" and meta["image_size"] == IMAGE_SIZE
    assert meta["embed_dim"] == 128 and meta["count"] == 4 and meta["frames_from"] == "frames cache"
    assert check_feature_cache(cache_dir, tiny_model) == meta

    # Resume: cached videos are skipped; only the bad ones (no frames, no features) are tried again.
    decoded: list[str] = []
    original = feature_cache.decode_for_cache
    monkeypatch.setattr(feature_cache, "decode_for_cache",
                        lambda path, *a, **k: decoded.append(Path(path).stem) or original(path, *a, **k))
    again = cache_features(tiny_model, manifest, cache_dir, splits="train", batch_size=16, progress=False)
    assert again.num_written == 0 and again.num_skipped == 4 and len(again.bad) == 3
    assert sorted(decoded) == ["missing", "text", "truncated"]


def test_cache_features_decodes_without_frames_cache_and_detects_another_tower(
    frames_cache, manifest: Path, tiny_model, make_model, tmp_path
):
    cache_dir = tmp_path / "features_only"
    report = cache_features(tiny_model, manifest, cache_dir, splits="train", batch_size=64, progress=False,
                            max_frames=MAX_FRAMES)
    assert report.num_written == 4 and report.meta["frames_from"] == "decoded"
    assert not (cache_dir / FRAMES).exists()
    for v in GOOD:  # decoding gives the frames the frames cache holds, hence the same features
        frames = load_array(cache_file(frames_cache[0], FRAMES, v))
        np.testing.assert_allclose(load_array(cache_file(cache_dir, FEATURES, v)).astype(np.float32),
                                   _expected_features(tiny_model, frames), atol=1e-2, rtol=1e-2)
    again = cache_features(tiny_model, manifest, cache_dir, splits="train", progress=False, max_frames=MAX_FRAMES)
    assert again.num_written == 0 and again.num_skipped == 4

    other = make_model(seed=4).eval()
    assert tower_fingerprint(other) != tower_fingerprint(tiny_model)
    with pytest.raises(CalmcapError, match="another image tower"):
        check_feature_cache(cache_dir, other)
    with pytest.raises(CalmcapError, match="another image tower"):
        cache_features(other, manifest, cache_dir, splits="train", progress=False, max_frames=MAX_FRAMES)


def test_dataset_with_feature_cache_yields_frame_features(frames_cache, manifest: Path, tiny_model, tmp_path):
    import torch

    from calmcap.data.dataset import Collator, VideoCaptionDataset, VideoSource

    cache_dir = tmp_path / "cache"
    shutil.copytree(frames_cache[0], cache_dir)
    cache_features(tiny_model, manifest, cache_dir, splits="train", progress=False)
    entries = [e for e in read_manifest(manifest, "train") if e.video_id in GOOD]
    dataset = VideoCaptionDataset(manifest, "train", num_frames=8, image_size=IMAGE_SIZE, mode="one_per_video",
                                  train=True, entries=entries, source=VideoSource(feature_cache=str(cache_dir)))
    batch = Collator()([dataset[i] for i in range(len(dataset))])
    assert "video" not in batch and batch["frame_features"].shape == (4, 8, 128)
    assert batch["frame_features"].dtype == torch.float32 and batch["video_mask"].all()
    stored = load_array(cache_file(cache_dir, FEATURES, "plain")).astype(np.float32)
    rows = batch["frame_features"][0].numpy()
    assert all(any(np.array_equal(row, s) for s in stored) for row in rows)  # sampled rows of the cache
    with torch.no_grad():
        out = tiny_model({"frame_features": batch["frame_features"], "video_mask": batch["video_mask"]})
    assert out["video_embeds"].shape == (4, 128)


# ---------------------------------------------------------------------------------------------
# calmcap cache
# ---------------------------------------------------------------------------------------------


def test_cache_cli_with_checkpoint_and_refuses_random_tower_names(
    manifest: Path, tiny_model, tmp_path, capsys, monkeypatch
):
    checkpoint = tiny_model.save_pretrained(tmp_path / "ckpt")
    cache_dir = tmp_path / "cli_cache"
    assert main(["cache", str(manifest), "--cache-dir", str(cache_dir), "--split", "test", "--workers", "0",
                 "--max-frames", "16", "--features", "--model", str(checkpoint), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "frames: 1/1 videos cached at 64px" in printed and "features: 1/1" in printed
    assert load_array(cache_file(cache_dir, FRAMES, "other_split")).shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert load_array(cache_file(cache_dir, FEATURES, "other_split")).shape == (16, 128)
    # The checkpoint's tower is this model's tower: same fingerprint.
    assert read_cache_meta(cache_dir, FEATURES)["tower"]["fingerprint"] == tower_fingerprint(tiny_model)
    # A registered name builds its pretrained image tower (calmcap-tiny: the shipped synth tag)...
    assert main(["cache", str(manifest), "--cache-dir", str(tmp_path / "by_name"), "--split", "test", "--workers", "0",
                 "--max-frames", "16", "--features", "--model", "calmcap-tiny", "--no-progress"]) == 0
    assert "features: 1/1" in capsys.readouterr().out
    # ...and a name whose tower would be random is refused.
    import calmcap.config

    random_tower = calmcap.config.get_model_config("calmcap-tiny", ["clip.pretrained=null"])
    monkeypatch.setattr(calmcap.config, "get_model_config", lambda name, overrides=None: random_tower)
    assert main(["cache", str(manifest), "--cache-dir", str(cache_dir), "--features", "--model", "calmcap-tiny"]) == 2
    assert "randomly initialised image tower" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cache", str(manifest), "--cache-dir", str(cache_dir), "--features"])  # no --model
