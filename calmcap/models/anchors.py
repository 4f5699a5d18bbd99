"""Class anchors: label prompts encoded once by the text tower, plus a learnable offset.

docs/DESIGN.md section 1, steps 2-3: ``a_k = p_k + e_k`` where ``p_k`` is the (fixed) text-tower
embedding of ``"The content of {label}"`` and ``e_k`` a learnable positional embedding; the
class distribution of a feature ``x`` is ``softmax(tau * cos(x, a))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from calmcap.config import AnchorConfig


class AnchorBank(nn.Module):
    """K anchors in the joint embedding space.

    Buffers: ``prompt_embeds`` [K, D] (L2-normalised text-tower features of the prompts).
    Parameters: ``pos_embed`` [K, D]; ``log_tau`` when ``learn_tau``.
    """

    def __init__(self, config: AnchorConfig, num_anchors: int, embed_dim: int) -> None:
        super().__init__()
        if num_anchors < 1:
            raise ValueError("an AnchorBank needs at least one anchor; K = 0 means no bank at all")
        self.num_anchors = num_anchors
        self.prompt_template = config.prompt_template
        self.register_buffer("prompt_embeds", torch.zeros(num_anchors, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(num_anchors, embed_dim) * config.pos_embed_std)
        log_tau = torch.tensor(math.log(config.tau))
        if config.learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def prompts(self, labels: list[str]) -> list[str]:
        return [self.prompt_template.format(label=label) for label in labels]

    @torch.no_grad()
    def set_prompt_embeds(self, labels: list[str], encode_text: Callable[[list[str]], torch.Tensor]) -> None:
        """Encode the label prompts once with ``encode_text`` (texts -> [K, D]) into the buffer."""
        if len(labels) != self.num_anchors:
            raise ValueError(f"expected {self.num_anchors} labels, got {len(labels)}")
        embeds = encode_text(self.prompts(labels)).float()
        self.prompt_embeds.copy_(F.normalize(embeds, dim=-1))

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def anchors(self) -> torch.Tensor:
        """``a = p + e``: [K, D]."""
        return self.prompt_embeds + self.pos_embed

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``tau * cos(features, a)``: features [B, D] -> [B, K]."""
        anchors = F.normalize(self.anchors(), dim=-1)
        return self.tau * F.normalize(features, dim=-1) @ anchors.t().to(features.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The class distribution ``softmax(tau * cos(features, a))``: [B, D] -> [B, K]."""
        return self.logits(features).softmax(dim=-1)
