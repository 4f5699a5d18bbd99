"""Pictures for the page: the frames the model saw, and one frame per indexed video, as JPEG.

The frames the model saw are its input itself: a decoded clip (:func:`calmcap.pipeline.decode_clip`:
T sampled frames, shorter side resized, center-cropped, normalised) mapped back to pixels, so the
crop and the sampling the page shows are the model's, not a re-decode of the file.
"""

from __future__ import annotations

import base64
import io
import os
from typing import TYPE_CHECKING, Union

# decode_clip preprocesses with clip_transform's default normalisation (OpenAI CLIP's); undone here.
from calmcap.data.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from calmcap.pipeline import DecodedClip

PathLike = Union[str, "os.PathLike[str]"]

JPEG_QUALITY = 85
# Side of an index thumbnail: a search result shows a frame, not the video.
THUMBNAIL_SIDE = 320


def clip_pixels(clip: DecodedClip) -> np.ndarray:
    """The real frames of a decoded clip as the model saw them: uint8 [T', S, S, 3] (padding slots left out).

    ``clip.video`` float [T, 3, S, S] normalised, ``clip.mask`` bool [T].
    """
    import torch

    if clip.video is None or clip.mask is None:
        raise ValueError(f"{clip.path}: the clip was not decoded ({clip.error})")
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    video = clip.video[clip.mask.bool()].float()
    pixels = (video * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def jpeg_bytes(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """uint8 [H, W, 3] RGB -> JPEG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def data_url(jpeg: bytes) -> str:
    """A JPEG as a ``data:image/jpeg;base64,...`` URL (an <img> source needing no second request)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def clip_frame_urls(clip: DecodedClip) -> list[str]:
    """The frames the model saw, as JPEG data URLs, in time order."""
    return [data_url(jpeg_bytes(frame)) for frame in clip_pixels(clip)]


def video_thumbnail(path: PathLike, side: int = THUMBNAIL_SIDE) -> bytes:
    """The middle frame of a video as a JPEG whose larger side is at most ``side``.

    Raises :class:`~calmcap.errors.VideoDecodeError` when the video cannot be read.
    """
    from calmcap.data.video import read_frames

    # One uniformly sampled frame is the middle one; the decoder downscales it (max_side).
    frames, _ = read_frames(path, 1, mode="uniform", max_side=side)
    return jpeg_bytes(frames[0])
