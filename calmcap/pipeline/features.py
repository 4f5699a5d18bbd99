"""Decoded clips through the model's image tower: frame features for captioning, search and explanation."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Union

from calmcap.errors import VideoDecodeError
from calmcap.pipeline.loading import frame_settings, model_device
from calmcap.pipeline.prefetch import DecodedClip, decode_clip
from calmcap.pipeline.stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from calmcap.models.calm import CALMModel

PathLike = Union[str, "os.PathLike[str]"]


def encode_clips(
    model: CALMModel, clips: list[DecodedClip], stats: PipelineStats | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features [B, T, D] and mask [B, T] bool of decodable clips (image tower, timed into ``stats``)."""
    import torch

    device = model_device(model)
    start = time.perf_counter()
    video = torch.stack([c.video for c in clips]).to(device)  # type: ignore[misc]
    mask = torch.stack([c.mask for c in clips]).to(device)  # type: ignore[misc]
    with torch.inference_mode():
        frames = model.encode_frames(video)
    if stats is not None:
        stats.tower_seconds += time.perf_counter() - start
    return frames, mask.bool()


def encode_video_file(model: CALMModel, video: PathLike, num_frames: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame features [1, T, D] and mask [1, T] of one video file; VideoDecodeError if unreadable."""
    frames, image_size = frame_settings(model, num_frames)
    clip = decode_clip(video, frames, image_size)
    if clip.error is not None:
        raise VideoDecodeError(str(video), clip.error)
    return encode_clips(model, [clip], None)
