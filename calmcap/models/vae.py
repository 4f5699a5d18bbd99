"""The cross-modal probabilistic VAE: it generates the text's anchor distribution from the video's.

docs/DESIGN.md section 1, step 4. Encoder: MLP K -> H -> (mu, log sigma^2) in R^d; decoder:
MLP d -> H -> K followed by a softmax, giving ``S_p_hat``.
"""

from __future__ import annotations

import torch
from torch import nn

from calmcap.config import AlignmentConfig


def _mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))


class CrossModalVAE(nn.Module):
    """``V_p`` [B, K] -> latent ``z`` [B, d] -> ``log S_p_hat`` [B, K]."""

    def __init__(self, config: AlignmentConfig, num_anchors: int) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim
        self.input_kind = config.vae_input
        self.encoder = _mlp(num_anchors, config.hidden_dim, 2 * config.latent_dim)
        self.decoder = _mlp(config.latent_dim, config.hidden_dim, num_anchors)

    def encoder_input(self, video_dist: torch.Tensor) -> torch.Tensor:
        """What the encoder reads of ``V_p`` [B, K] (``alignment.vae_input``)."""
        if self.input_kind == "log_prob":
            log_p = video_dist.clamp(min=1e-12).log()
            return log_p - log_p.mean(-1, keepdim=True)
        return video_dist

    def forward(self, video_dist: torch.Tensor, sample: bool | None = None) -> dict[str, torch.Tensor]:
        """Encode ``video_dist`` [B, K] and decode the text distribution.

        ``sample`` (default: ``self.training``) draws ``z = mu + sigma * eps``; otherwise ``z = mu``.
        Returns ``mu``, ``logvar``, ``z`` [B, d] and ``text_logprob_hat`` [B, K] (log-softmax,
        for a numerically stable reconstruction loss).
        """
        if sample is None:
            sample = self.training
        mu, logvar = self.encoder(self.encoder_input(video_dist)).chunk(2, dim=-1)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if sample else mu
        return {
            "mu": mu,
            "logvar": logvar,
            "z": z,
            "text_logprob_hat": self.decoder(z).log_softmax(dim=-1),
        }
