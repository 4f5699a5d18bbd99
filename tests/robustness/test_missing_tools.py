"""Missing tools: no Java, no ffmpeg, no PyAV give clear messages (issue #7)."""

import builtins
import logging

import pytest

from calmcap.errors import CalmcapError
from calmcap.metrics import CIDER, METEOR, caption_metrics, java_available

PREDICTIONS = {"a": "a red circle moves left", "b": "a blue square grows"}
REFERENCES = {"a": ["a red circle moves to the left"], "b": ["the blue square grows bigger"]}


def test_no_java_gives_the_metrics_that_do_not_need_it(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not java_available()
    with caplog.at_level(logging.WARNING):
        scores = caption_metrics(PREDICTIONS, REFERENCES)
    assert CIDER in scores and "caption/BLEU-4" in scores and METEOR not in scores
    assert "java not found: METEOR skipped" in caplog.text


def test_no_ffmpeg_binary(monkeypatch, tmp_path):
    import numpy as np

    from calmcap.data.video import encode_video

    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-ffmpeg-here"))
    with pytest.raises(CalmcapError, match="no ffmpeg binary for encoding videos"):
        encode_video(tmp_path / "x.mp4", np.zeros((2, 16, 16, 3), dtype=np.uint8), fps=5)


def test_no_pyav_backend(monkeypatch, tmp_path):
    from calmcap.data import video

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CalmcapError, match=r"PyAV is not installed .*pip install av"):
        video.read_frames(path, 4, backend="pyav")
