"""Every bad video input of issue #7 (item 1), built once per session in a temporary folder.

``video_zoo`` holds, by name, a :class:`VideoCase` per input: the bad ones (a missing path, a
directory, an empty file, a text file named ``.mp4``, the first third of a real mp4, an
audio-only ``.mp4``, an mp4 whose video stream holds no frame) and the good ones that are
easy to get wrong (one frame, 7680x4320, a name with spaces and non-ASCII characters, AV1,
which decord cannot decode). Everything is written with the FFmpeg binary of imageio-ffmpeg
(:func:`calmcap.data.video.encode_video` or a direct call), in a few seconds.

tests/robustness/test_bad_videos.py runs every command over them; docs/ROBUSTNESS.md lists
what each produces.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from calmcap.data import video as video_lib

# The largest frame of the zoo: 8K UHD, two frames (x264 level 6.x allows up to 8192x4320).
HUGE_WIDTH, HUGE_HEIGHT = 7680, 4320
NON_ASCII_NAME = "clip with spaces – ünïcødé 視頻.mp4"


@dataclass(frozen=True)
class VideoCase:
    """One input. ``reason`` is a substring of the one-line reason a decoder gives for a bad
    input (None: a good video that must decode). ``argument_reason`` is the reason when the
    path is named on the command line of ``caption``/``index`` and never reaches a decoder
    (a missing path, a folder with no video in it)."""

    name: str
    path: Path
    reason: str | None
    what: str
    argument_reason: str | None = None

    @property
    def good(self) -> bool:
        return self.reason is None

    @property
    def reason_as_argument(self) -> str | None:
        return self.argument_reason or self.reason


class VideoZoo(dict):
    """``name -> VideoCase`` in a fixed order (bad ones first), plus ``root``."""

    def __init__(self, root: Path, cases: list[VideoCase]) -> None:
        super().__init__((case.name, case) for case in cases)
        self.root = root

    @property
    def bad(self) -> list[VideoCase]:
        return [case for case in self.values() if not case.good]

    @property
    def good(self) -> list[VideoCase]:
        return [case for case in self.values() if case.good]


def _ffmpeg(*args: str) -> subprocess.CompletedProcess:
    command = [video_lib.ffmpeg_executable(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def _moving_square(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 [N, H, W, 3]: a bright square moving over a noisy background (real H.264 payload)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, size=(num_frames, height, width, 3), dtype=np.uint8)
    side = max(4, height // 4)
    for i in range(num_frames):
        x = (i * 3) % (width - side)
        frames[i, height // 3 : height // 3 + side, x : x + side] = (230, 40, 40)
    return frames


def _zero_frame_mp4(path: Path) -> None:
    """An MP4 whose video stream exists (H.264, 64x48, 25 fps) but holds no frame.

    ``-frames:v 0`` makes FFmpeg open the encoder (so the stream gets its codec parameters) and
    write no packet. A plain MP4 then drops the empty track (a file with no stream at all, the
    audio-only case's reason); ``empty_moov`` writes the track into the header up front, as a
    fragmented MP4's init segment, so the file keeps a video stream with zero samples.
    """
    result = _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x48:r=25", "-frames:v", "0", "-c:v", "libx264",
                     "-pix_fmt", "yuv420p", "-movflags", "frag_keyframe+empty_moov", str(path))
    if result.returncode != 0 or not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"ffmpeg could not write a zero-frame mp4: {result.stderr.strip()[-500:]}")


def _audio_only_mp4(path: Path) -> None:
    """Half a second of a 440 Hz sine in AAC, in an .mp4 container: no video stream at all."""
    result = _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000:duration=0.5", "-c:a", "aac", str(path))
    if result.returncode != 0:
        # No lavfi or no AAC encoder: a WAV file (python's wave module) under an .mp4 name.
        import wave

        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(8000)
            tone = (8000 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)).astype("<i2")
            handle.writeframes(tone.tobytes())


def _av1(path: Path, frames: np.ndarray) -> None:
    errors = []
    for codec in ("libaom-av1", "libsvtav1"):
        try:
            video_lib.encode_video(path, frames, fps=25, codec=codec, crf=30)
            return
        except RuntimeError as error:
            errors.append(str(error))
    raise RuntimeError("this FFmpeg encodes no AV1: " + " | ".join(errors))


@pytest.fixture(scope="session")
def video_zoo(tmp_path_factory: pytest.TempPathFactory) -> VideoZoo:
    root = tmp_path_factory.mktemp("video_zoo")
    bad_dir = root / "bad"
    good_dir = root / "good"
    bad_dir.mkdir()
    good_dir.mkdir()

    (bad_dir / "a_folder.mp4").mkdir()
    (bad_dir / "empty.mp4").write_bytes(b"")
    (bad_dir / "notes.mp4").write_text("this is a text file with a video's name\n" * 40, encoding="utf-8")
    whole = root / "whole.mp4"  # moov box at the end (FFmpeg's default): a third of it has no index
    video_lib.encode_video(whole, _moving_square(30), fps=25, keyframe_interval=10)
    data = whole.read_bytes()
    (bad_dir / "first_third.mp4").write_bytes(data[: len(data) // 3])
    _audio_only_mp4(bad_dir / "audio_only.mp4")
    _zero_frame_mp4(bad_dir / "zero_frames.mp4")

    video_lib.encode_video(good_dir / "one_frame.mp4", _moving_square(1, seed=1), fps=25)
    # A horizontal gradient (cheap to build, cheap to encode), two frames.
    row = np.linspace(0, 255, HUGE_WIDTH, dtype=np.float32).astype(np.uint8)
    huge = np.broadcast_to(row[None, :, None], (HUGE_HEIGHT, HUGE_WIDTH, 3))
    video_lib.encode_video(good_dir / "huge_8k.mp4", (huge, 255 - huge), fps=25, crf=35)
    video_lib.encode_video(good_dir / NON_ASCII_NAME, _moving_square(8, seed=2), fps=25)
    _av1(good_dir / "av1.mp4", _moving_square(8, height=64, width=64, seed=3))

    cases = [
        VideoCase("missing", bad_dir / "missing.mp4", "file not found", "a path that does not exist",
                  argument_reason="no such file or directory"),
        VideoCase("directory", bad_dir / "a_folder.mp4", "is a directory", "a directory (named .mp4, empty)",
                  argument_reason="directory holds no video files"),
        VideoCase("empty", bad_dir / "empty.mp4", "empty file (0 bytes)", "an empty file"),
        VideoCase("text", bad_dir / "notes.mp4", "not a video", "a text file named .mp4"),
        VideoCase("truncated", bad_dir / "first_third.mp4", "truncated", "the first third of a real H.264 mp4"),
        VideoCase("audio_only", bad_dir / "audio_only.mp4", "no video stream", "an .mp4 with only an AAC audio stream"),
        VideoCase("zero_frames", bad_dir / "zero_frames.mp4", "zero frames",
                  "an mp4 whose H.264 stream holds no frame (ffmpeg -frames:v 0 -movflags empty_moov)"),
        VideoCase("one_frame", good_dir / "one_frame.mp4", None, "a one-frame H.264 mp4"),
        VideoCase("huge", good_dir / "huge_8k.mp4", None, f"{HUGE_WIDTH}x{HUGE_HEIGHT}, 2 frames"),
        VideoCase("non_ascii", good_dir / NON_ASCII_NAME, None,
                  "a good video whose name has spaces and non-ASCII characters"),
        VideoCase("av1", good_dir / "av1.mp4", None, "AV1 (decord cannot decode it; PyAV can)"),
    ]
    return VideoZoo(root, cases)
