"""A CLIP image tower on its own, standing in for a whole CALM model where only frames are encoded.

``calmcap cache --features --model NAME`` builds just the image tower of a registered
architecture (:func:`calmcap.models.encoders.build_clip`) in an :class:`ImageTower`: no caption
tokenizer, anchors or decoder are needed to cache the features a frozen tower computes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


class ImageTower:
    """The part of a CALM model that :func:`calmcap.data.feature_cache.cache_features` needs: a CLIP model's
    image tower.

    Built from a registered model name without a caption tokenizer (see the module docstring).
    ``encode_frames(video [B, T, 3, H, W] float) -> [B, T, D]``, as :meth:`CALMModel.encode_frames`.
    """

    def __init__(self, config: Any, clip_model: nn.Module) -> None:
        self.config = config
        self.clip = clip_model

    @classmethod
    def from_config(cls, config: Any) -> ImageTower:
        from calmcap.models.encoders import build_clip

        clip_model = build_clip(config.clip, config.image_size)
        clip_model.eval()
        return cls(config, clip_model)

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        batch, num_frames = video.shape[:2]
        return self.clip.encode_image(video.flatten(0, 1)).view(batch, num_frames, -1)

    # The small slice of nn.Module that cache_features uses.
    def parameters(self) -> Iterable[torch.nn.Parameter]:
        return self.clip.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.clip.state_dict()

    @property
    def training(self) -> bool:
        return self.clip.training

    def train(self, mode: bool = True) -> ImageTower:
        self.clip.train(mode)
        return self

    def eval(self) -> ImageTower:
        return self.train(False)

    def to(self, device: Any) -> ImageTower:
        self.clip.to(device)
        return self
