"""The retrieval head: cosine similarity scaled by a learnable, clamped temperature."""

from __future__ import annotations

import math

import torch
from torch import nn

from calmcap.config import RetrievalConfig


class RetrievalHead(nn.Module):
    """Holds ``log_logit_scale``; features are L2-normalised before they reach it."""

    def __init__(self, config: RetrievalConfig) -> None:
        super().__init__()
        self.max_log_scale = math.log(config.max_logit_scale)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.init_logit_scale)))

    @property
    def logit_scale(self) -> torch.Tensor:
        """The temperature, clamped at ``max_logit_scale`` (CLIP clamps at 100)."""
        return self.log_logit_scale.clamp(max=self.max_log_scale).exp()

    def forward(self, video_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scaled similarities ``[B_t, B_v]`` of normalised text [B_t, D] vs video [B_v, D]."""
        return self.logit_scale * text_embeds @ video_embeds.t()
