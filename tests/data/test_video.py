"""Decoding and sampling: exact frame indices, both backends, fallback, bad inputs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from calmcap.data import video as video_lib
from calmcap.data.video import (
    VideoInfo,
    encode_video,
    probe_video,
    read_frames,
    sample_indices,
    seconds_to_frame_window,
)
from calmcap.errors import VideoDecodeError

from .conftest import brightness_frames, decoded_indices

pytestmark = pytest.mark.usefixtures("fresh_probe_cache")

BACKENDS = ["decord", "pyav"]


# ---------------------------------------------------------------------------------------------
# sample_indices / seconds_to_frame_window (pure)
# ---------------------------------------------------------------------------------------------


def test_uniform_indices_are_segment_middles():
    indices, mask = sample_indices(80, 12, "uniform")
    # boundaries floor(k * 80 / 12) = 0 6 13 20 26 33 40 46 53 60 66 73 80
    assert indices.tolist() == [3, 9, 16, 23, 29, 36, 43, 49, 56, 63, 69, 76]
    assert indices.dtype == np.int64 and mask.dtype == bool and mask.all()
    # exactly divisible: middles of 10-frame segments
    assert sample_indices(120, 12)[0].tolist() == list(range(5, 120, 10))
    # as many frames as wanted: every frame
    assert sample_indices(12, 12)[0].tolist() == list(range(12))


def test_random_indices_stay_in_their_segments_and_follow_the_seed():
    bounds = (np.arange(13) * 80) // 12
    seen = set()
    for seed in range(50):
        indices, mask = sample_indices(80, 12, "random", rng=np.random.default_rng(seed))
        assert mask.all()
        assert np.all(indices >= bounds[:-1]) and np.all(indices < bounds[1:])
        seen.update(indices.tolist())
    assert len(seen) == 80  # every frame is reachable
    a = sample_indices(80, 12, "random", rng=np.random.default_rng(7))[0]
    b = sample_indices(80, 12, "random", rng=np.random.default_rng(7))[0]
    np.testing.assert_array_equal(a, b)


def test_indices_respect_the_window():
    indices, _ = sample_indices(100, 4, "uniform", start_frame=20, end_frame=60)
    assert indices.tolist() == [25, 35, 45, 55]
    for seed in range(20):
        indices, _ = sample_indices(100, 4, "random", 20, 60, np.random.default_rng(seed))
        assert indices.min() >= 20 and indices.max() < 60
        assert np.all(np.diff(indices) > 0)


def test_short_window_takes_every_frame_and_pads_with_the_last():
    indices, mask = sample_indices(5, 8, "random", rng=np.random.default_rng(0))
    assert indices.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert mask.tolist() == [True] * 5 + [False] * 3
    indices, mask = sample_indices(100, 6, "uniform", start_frame=50, end_frame=53)
    assert indices.tolist() == [50, 51, 52, 52, 52, 52]
    assert mask.tolist() == [True] * 3 + [False] * 3


@pytest.mark.parametrize(
    "args",
    [(0, 4), (10, 0), (10, 4, "middle"), (10, 4, "uniform", 5, 5), (10, 4, "uniform", 12, None)],
)
def test_sample_indices_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        sample_indices(*args)


def test_seconds_to_frame_window():
    assert seconds_to_frame_window(80, 25.0) == (0, 80)
    assert seconds_to_frame_window(80, 25.0, 1.0, 2.0) == (25, 50)  # exact frame times
    assert seconds_to_frame_window(80, 25.0, 1.01, 1.99) == (25, 50)  # overlapping frames kept
    assert seconds_to_frame_window(80, 25.0, None, 100.0) == (0, 80)  # clamped to the video
    assert seconds_to_frame_window(80, 25.0, 1.0, 1.0) == (25, 26)  # never empty
    with pytest.raises(ValueError):
        seconds_to_frame_window(80, 25.0, 2.0, 1.0)


def test_start_past_the_end_is_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="calmcap.data.video"):
        assert seconds_to_frame_window(80, 25.0, 10.0, 12.0) == (79, 80)
    assert "past the end" in caplog.text


# ---------------------------------------------------------------------------------------------
# read_frames on generated videos with known content
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS + ["auto"])
def test_uniform_sampling_decodes_the_exact_frames(brightness_video, backend):
    frames, mask = read_frames(brightness_video, 12, "uniform", backend=backend)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8 and frames.flags.c_contiguous
    assert mask.all()
    np.testing.assert_array_equal(decoded_indices(frames), sample_indices(80, 12)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_sampling_decodes_the_frames_the_rng_chose(brightness_video, backend):
    for seed in range(5):
        frames, mask = read_frames(brightness_video, 12, "random", backend=backend, rng=np.random.default_rng(seed))
        expected, _ = sample_indices(80, 12, "random", rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(decoded_indices(frames), expected)
        assert mask.all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_window_in_seconds(brightness_video, backend):
    # 25 fps: [1.0 s, 2.0 s) is frames 25..49
    frames, mask = read_frames(brightness_video, 5, "uniform", start_seconds=1.0, end_seconds=2.0, backend=backend)
    assert decoded_indices(frames).tolist() == [27, 32, 37, 42, 47]
    for seed in range(5):
        frames, _ = read_frames(
            brightness_video, 5, "random", 1.0, 2.0, backend=backend, rng=np.random.default_rng(seed)
        )
        got = decoded_indices(frames)
        assert got.min() >= 25 and got.max() <= 49 and np.all(np.diff(got) > 0)
    # open-ended windows
    frames, _ = read_frames(brightness_video, 4, start_seconds=2.4, backend=backend)  # frames 60..79
    assert decoded_indices(frames).tolist() == [62, 67, 72, 77]
    frames, _ = read_frames(brightness_video, 4, end_seconds=0.8, backend=backend)  # frames 0..19
    assert decoded_indices(frames).tolist() == [2, 7, 12, 17]


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_video_is_padded_with_copies_of_the_last_frame(short_video, backend):
    frames, mask = read_frames(short_video, 8, "uniform", backend=backend)
    assert frames.shape[0] == 8
    assert mask.tolist() == [True] * 5 + [False] * 3
    assert decoded_indices(frames).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    for i in range(5, 8):
        np.testing.assert_array_equal(frames[i], frames[4])
    frames[7] = 0  # padding slots are copies, not views of the last real frame
    assert frames[4].mean() > 0 and frames[6].mean() > 0


@pytest.mark.parametrize("mode", ["uniform", "random"])
def test_pyav_and_decord_agree_pixel_for_pixel(brightness_video, real_clips, mode):
    # bikes.mp4 has B-frames and irregular keyframes (0, 30, 76, 137, 187, 242): PyAV's
    # seek-and-decode-forward must land on the same frames as decord's index.
    for path in [brightness_video, real_clips["bikes"], real_clips["carphone_pristine"]]:
        a, mask_a = read_frames(path, 16, mode, backend="decord", rng=np.random.default_rng(3))
        b, mask_b = read_frames(path, 16, mode, backend="pyav", rng=np.random.default_rng(3))
        assert a.shape == b.shape
        np.testing.assert_array_equal(mask_a, mask_b)
        np.testing.assert_array_equal(a, b, err_msg=str(path))


def test_pyav_sequential_path_matches_seeking(real_clips, monkeypatch):
    path = real_clips["bikes"]
    seeking, _ = read_frames(path, 10, backend="pyav")

    def refuse(*args, **kwargs):
        raise video_lib._NeedSequential()

    monkeypatch.setattr(video_lib, "_decode_pyav_seeking", refuse)
    sequential, _ = read_frames(path, 10, backend="pyav")
    np.testing.assert_array_equal(seeking, sequential)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bikes", "bigbuckbunny", "carphone_pristine"])
def test_real_clips_every_frame_both_backends(real_clips, name):
    path = real_clips[name]
    info = probe_video(path, backend="pyav")
    assert probe_video(path, backend="decord").num_frames == info.num_frames
    a, mask = read_frames(path, info.num_frames, backend="decord")
    b, _ = read_frames(path, info.num_frames, backend="pyav")
    assert mask.all() and a.shape == (info.num_frames, info.height, info.width, 3)
    np.testing.assert_array_equal(a, b)


def test_real_clips_decode_with_both_backends(real_clips):
    expected = {"bikes": (250, 272, 640), "bigbuckbunny": (132, 720, 1280), "carphone_pristine": (120, 144, 176)}
    for name, path in real_clips.items():
        num, height, width = expected[name]
        for backend in BACKENDS:
            info = probe_video(path, backend=backend)
            assert (info.num_frames, info.height, info.width, info.backend) == (num, height, width, backend)
            frames, mask = read_frames(path, 4, backend=backend)
            assert frames.shape == (4, height, width, 3) and mask.all()
            assert frames.std() > 5  # real picture content, not a flat fill


# ---------------------------------------------------------------------------------------------
# Fallback to PyAV
# ---------------------------------------------------------------------------------------------


def test_auto_falls_back_to_pyav_when_decord_cannot_open(brightness_video, monkeypatch, caplog):
    import decord

    def broken_reader(*args, **kwargs):
        raise decord.DECORDError("[00:00:00] video_reader.cc:1: ERROR simulated failure")

    monkeypatch.setattr(decord, "VideoReader", broken_reader)
    with caplog.at_level(logging.INFO, logger="calmcap.data.video"):
        frames, _ = read_frames(brightness_video, 6, backend="auto")
    np.testing.assert_array_equal(decoded_indices(frames), sample_indices(80, 6)[0])
    assert "falling back to pyav" in caplog.text and "simulated failure" in caplog.text
    with pytest.raises(VideoDecodeError, match="simulated failure"):
        read_frames(brightness_video, 6, backend="decord")
    assert probe_video(brightness_video).backend == "pyav"


def test_auto_falls_back_when_decord_fails_while_reading(brightness_video, monkeypatch):
    import decord

    real_reader = decord.VideoReader

    class ReaderThatFailsOnRead:
        def __init__(self, *args, **kwargs):
            self._reader = real_reader(*args, **kwargs)

        def __len__(self):
            return len(self._reader)

        def get_avg_fps(self):
            return self._reader.get_avg_fps()

        def get_batch(self, indices):
            raise RuntimeError("simulated read failure")

    monkeypatch.setattr(decord, "VideoReader", ReaderThatFailsOnRead)
    # The fallback samples the same random frames decord would have (the rng is rewound).
    frames, _ = read_frames(brightness_video, 6, "random", backend="auto", rng=np.random.default_rng(11))
    expected, _ = sample_indices(80, 6, "random", rng=np.random.default_rng(11))
    np.testing.assert_array_equal(decoded_indices(frames), expected)


def test_av1_is_decoded_through_the_pyav_fallback(av1_video):
    with pytest.raises(VideoDecodeError) as excinfo:
        read_frames(av1_video, 4, backend="decord")
    assert str(av1_video) in str(excinfo.value)
    info = probe_video(av1_video)
    assert info.backend == "pyav" and info.num_frames == 40 and info.keyframe_indices == [0, 10, 20, 30]
    frames, mask = read_frames(av1_video, 8, backend="auto")
    np.testing.assert_array_equal(decoded_indices(frames), sample_indices(40, 8)[0])
    frames, _ = read_frames(av1_video, 8, "random", backend="auto", rng=np.random.default_rng(1))
    expected, _ = sample_indices(40, 8, "random", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(decoded_indices(frames), expected)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def _truncated(src: Path, dst: Path, fraction: float = 1 / 3) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, real_clips) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected reason substring for the auto and pyav backends)."""
    root = tmp_path_factory.mktemp("bad")
    (root / "a_directory.mp4").mkdir()
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    faststart = root / "faststart.mp4"
    encode_video(faststart, brightness_frames(80), fps=25, keyframe_interval=10, crf=4,
                 extra_args=["-movflags", "+faststart"])
    mkv = root / "whole.mkv"
    encode_video(mkv, brightness_frames(80), fps=25, keyframe_interval=10, crf=4)
    files = {
        "missing": (root / "missing.mp4", "file not found"),
        "directory": (root / "a_directory.mp4", "is a directory"),
        "empty": (root / "empty.mp4", "empty file"),
        "text": (root / "notes.mp4", "not a video"),
        # moov box at the end: the index is gone
        "truncated_mp4": (_truncated(real_clips["bikes"], root / "bikes_third.mp4"), "truncated"),
        # moov box first: the index promises 80 frames, the data holds fewer
        "truncated_faststart": (_truncated(faststart, root / "faststart_third.mp4"), "truncated"),
    }
    audio = root / "audio_only.m4a"
    result = subprocess.run(
        [video_lib.ffmpeg_executable(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "anullsrc=r=8000:cl=mono", "-t", "0.5", "-c:a", "aac", str(audio)],
        capture_output=True,
    )
    if result.returncode == 0:
        files["audio_only"] = (audio, "no video stream")
    files["truncated_mkv"] = (_truncated(mkv, root / "half.mkv", 0.5), "truncated")
    return files


@pytest.mark.parametrize(
    "name",
    ["missing", "directory", "empty", "text", "truncated_mp4", "truncated_faststart", "audio_only", "truncated_mkv"],
)
@pytest.mark.parametrize("backend", ["auto", "pyav", "decord"])
def test_bad_inputs_raise_a_one_line_error_naming_the_file(bad_files, name, backend):
    if name not in bad_files:
        pytest.skip(f"could not generate {name}")
    path, reason = bad_files[name]
    if name == "truncated_mkv" and backend != "pyav":
        # decord (and so "auto") reads the frames that are present in a cut Matroska file: the
        # container has no frame count to check against. PyAV compares with the DURATION tag.
        frames, mask = read_frames(path, 4, backend=backend)
        assert mask.all() and decoded_indices(frames).max() < 80
        return
    with pytest.raises(VideoDecodeError) as excinfo:
        read_frames(path, 4, backend=backend)
    message = str(excinfo.value)
    assert str(path) in message and "\n" not in message
    assert excinfo.value.path == str(path)
    if backend != "decord" or name in ("missing", "directory", "empty"):
        assert reason in message
    if backend != "decord":
        with pytest.raises(VideoDecodeError, match=reason):
            probe_video(path, backend=backend)


# ---------------------------------------------------------------------------------------------
# max_side
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_side_downscales_in_the_decoder_keeping_aspect(real_clips, backend):
    path = real_clips["bigbuckbunny"]  # 1280x720
    full, _ = read_frames(path, 3, backend=backend)
    small, mask = read_frames(path, 3, backend=backend, max_side=320)
    assert small.shape == (3, 180, 320, 3) and small.dtype == np.uint8 and mask.all()
    # the same pictures: block-average the full frames down 4x and compare
    pooled = full.reshape(3, 180, 4, 320, 4, 3).mean(axis=(2, 4))
    assert np.abs(pooled - small).mean() < 4.0
    # no upscaling: a bound above the size changes nothing
    same, _ = read_frames(path, 3, backend=backend, max_side=2000)
    np.testing.assert_array_equal(same, full)


def test_max_side_on_a_portrait_video(tmp_path):
    path = encode_video(tmp_path / "portrait.mp4", brightness_frames(10, height=96, width=48), fps=10, crf=4)
    for backend in BACKENDS:
        frames, _ = read_frames(path, 2, backend=backend, max_side=64)
        assert frames.shape == (2, 64, 32, 3)
        assert decoded_indices(frames).tolist() == [2, 7]


def test_decord_resize_bug_falls_back_to_pyav(tmp_path, caplog):
    # decord 0.6 fails for some output widths (16 here) with a buffer-size check; "auto" then
    # decodes with PyAV instead of failing.
    path = encode_video(tmp_path / "portrait.mp4", brightness_frames(10, height=96, width=48), fps=10, crf=4)
    with pytest.raises(VideoDecodeError, match="resized to 16x32"):
        read_frames(path, 2, backend="decord", max_side=32)
    with caplog.at_level(logging.INFO, logger="calmcap.data.video"):
        frames, _ = read_frames(path, 2, backend="auto", max_side=32)
    assert frames.shape == (2, 32, 16, 3) and decoded_indices(frames).tolist() == [2, 7]
    assert "falling back to pyav" in caplog.text


# ---------------------------------------------------------------------------------------------
# probe_video and its caches
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_reports_size_rate_and_keyframes(brightness_video, backend):
    info = probe_video(brightness_video, backend=backend)
    assert info == VideoInfo(64, 48, 80, 25.0, 3.2, [0, 10, 20, 30, 40, 50, 60, 70], backend)


def test_probe_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = encode_video(tmp_path / "v.mp4", brightness_frames(20), fps=10, crf=4)
    calls = []
    real = video_lib._probe_backend

    def counting(abs_path, name):
        calls.append(name)
        return real(abs_path, name)

    monkeypatch.setattr(video_lib, "_probe_backend", counting)
    first = probe_video(path)
    first.keyframe_indices.append(999)  # callers get copies: the cache is not corrupted
    second = probe_video(Path(os.path.relpath(path)))  # same file through another spelling
    assert len(calls) == 1 and second.keyframe_indices == [0]

    encode_video(path, brightness_frames(30), fps=10, crf=4)  # rewrite: new size and mtime
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert probe_video(path).num_frames == 30 and len(calls) == 2


def test_probe_disk_cache(tmp_path, monkeypatch):
    path = encode_video(tmp_path / "v.mp4", brightness_frames(20), fps=10, crf=4)
    cache = tmp_path / "probe_cache"
    info = probe_video(path, cache_dir=cache)
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["num_frames"] == 20

    video_lib._clear_caches()  # as a new process would start

    def no_probe(*args):
        raise AssertionError("the disk cache should have answered")

    monkeypatch.setattr(video_lib, "_probe_backend", no_probe)
    assert probe_video(path, cache_dir=cache) == info
    files[0].write_text("{broken json")  # a corrupt cache file is ignored, not fatal
    monkeypatch.undo()
    assert probe_video(path, cache_dir=cache) == info


# ---------------------------------------------------------------------------------------------
# encode_video
# ---------------------------------------------------------------------------------------------


def test_encode_video_from_an_iterable_with_exact_keyframes(tmp_path):
    frames = (frame for frame in brightness_frames(30, 32, 32))
    path = encode_video(tmp_path / "sub" / "gen.mp4", frames, fps=15, keyframe_interval=7, crf=4)
    info = probe_video(path, backend="pyav")
    assert (info.num_frames, info.width, info.height, info.fps) == (30, 32, 32, 15.0)
    assert info.keyframe_indices == [0, 7, 14, 21, 28]
    got, _ = read_frames(path, 30)
    assert decoded_indices(got).tolist() == list(range(30))
    assert sorted(p.name for p in path.parent.iterdir()) == ["gen.mp4"]  # no temporary left


def test_encode_video_rejects_bad_frames_and_reports_ffmpeg_errors(tmp_path):
    with pytest.raises(ValueError, match="even"):
        encode_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8), fps=10)
    with pytest.raises(ValueError, match="uint8"):
        encode_video(tmp_path / "f.mp4", np.zeros((2, 32, 32, 3), np.float32), fps=10)
    with pytest.raises(ValueError, match="at least one"):
        encode_video(tmp_path / "none.mp4", iter([]), fps=10)
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        encode_video(tmp_path / "bad.mp4", np.zeros((2, 32, 32, 3), np.uint8), fps=10, codec="no-such-codec")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# ---------------------------------------------------------------------------------------------
# Import cost
# ---------------------------------------------------------------------------------------------


def test_importing_the_data_modules_imports_no_decoder_or_torch():
    code = (
        "import sys, calmcap.data.video, calmcap.data.transforms; "
        "heavy = [m for m in ('decord', 'av', 'torch', 'open_clip', 'cv2') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
