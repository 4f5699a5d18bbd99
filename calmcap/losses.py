"""Training objectives, outside the model (docs/DESIGN.md section 2, "The objective").

``L = w_cap * L_caption + w_ret * L_InfoNCE + w_align * (L_rec + alpha * L_KL)`` for the VAE,
or ``w_align * L_direct`` for the direct-alignment ablations (KL, CE, MSE of ``V_p`` to ``S_p``).
:class:`CALMLoss` returns every named term and the weighted total.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calmcap.distributed import gather_with_grad, rank

# Metric-style keys of the loss terms (logged as they are).
LOSS_TOTAL = "loss"
LOSS_CAPTION = "loss/caption"
LOSS_RETRIEVAL = "loss/retrieval"
LOSS_REC = "loss/rec"
LOSS_KL = "loss/kl"
LOSS_ALIGN = "loss/align"

_EPS = 1e-8


def contrastive_loss(
    video_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE over normalised video/text features [B, D] (pair i matches pair i).

    With several processes, each process scores its own rows against the features of every
    process (negatives from the whole global batch) and the positive sits at
    ``rank * B + i``; averaging the per-process losses gives the global-batch loss.
    """
    if gather:
        all_videos = gather_with_grad(video_embeds)
        all_texts = gather_with_grad(text_embeds)
        offset = rank() * video_embeds.shape[0]
    else:
        all_videos, all_texts, offset = video_embeds, text_embeds, 0
    targets = torch.arange(video_embeds.shape[0], device=video_embeds.device) + offset
    t2v = logit_scale * text_embeds @ all_videos.t()
    v2t = logit_scale * video_embeds @ all_texts.t()
    return 0.5 * (F.cross_entropy(t2v.float(), targets) + F.cross_entropy(v2t.float(), targets))


def caption_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token cross-entropy: logits [B, L, V], targets [B, L] with padding = -100 (ignored)."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, label_smoothing=label_smoothing
    )


def vae_reconstruction_loss(text_dist: torch.Tensor, text_logprob_hat: torch.Tensor) -> torch.Tensor:
    """``L_rec = CE(S_p, S_p_hat) = -sum_k S_p[k] log S_p_hat[k]``, mean over the batch."""
    return -(text_dist * text_logprob_hat).sum(-1).mean()


def vae_kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))``: sum over latent dims, mean over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()


def direct_alignment_loss(video_dist: torch.Tensor, text_dist: torch.Tensor, variant: str) -> torch.Tensor:
    """Align ``V_p`` to ``S_p`` directly (the paper's Table 7 alternatives to the VAE).

    ``kl``: KL(S_p || V_p); ``ce``: -sum S_p log V_p; ``mse``: squared error summed over K.
    """
    log_v = video_dist.clamp(min=_EPS).log()
    if variant == "kl":
        return (text_dist * (text_dist.clamp(min=_EPS).log() - log_v)).sum(-1).mean()
    if variant == "ce":
        return -(text_dist * log_v).sum(-1).mean()
    if variant == "mse":
        return (video_dist - text_dist).pow(2).sum(-1).mean()
    raise ValueError(f"unknown direct alignment variant {variant!r}")


@dataclass
class LossWeights:
    """Weights of the multi-task objective (a run setting, in the recipe's YAML)."""

    caption: float = 1.0
    retrieval: float = 1.0
    align: float = 1.0
    kl: float = 0.1  # alpha in the paper
    label_smoothing: float = 0.0


class CALMLoss:
    """Compute every term present in the model's outputs and the weighted total."""

    def __init__(self, weights: LossWeights | None = None, variant: str = "vae", gather: bool = True) -> None:
        self.weights = weights or LossWeights()
        self.variant = variant
        self.gather = gather

    def __call__(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        total = outputs["video_embeds"].new_zeros(())
        if "caption_logits" in outputs and w.caption:
            terms[LOSS_CAPTION] = caption_loss(outputs["caption_logits"], outputs["caption_targets"], w.label_smoothing)
            total = total + w.caption * terms[LOSS_CAPTION]
        if "text_embeds" in outputs and w.retrieval:
            terms[LOSS_RETRIEVAL] = contrastive_loss(
                outputs["video_embeds"], outputs["text_embeds"], outputs["logit_scale"], gather=self.gather
            )
            total = total + w.retrieval * terms[LOSS_RETRIEVAL]
        if "text_dist" in outputs and w.align:
            if "text_logprob_hat" in outputs:
                terms[LOSS_REC] = vae_reconstruction_loss(outputs["text_dist"], outputs["text_logprob_hat"])
                terms[LOSS_KL] = vae_kl_loss(outputs["mu"], outputs["logvar"])
                total = total + w.align * (terms[LOSS_REC] + w.kl * terms[LOSS_KL])
            else:
                terms[LOSS_ALIGN] = direct_alignment_loss(outputs["video_dist"], outputs["text_dist"], self.variant)
                total = total + w.align * terms[LOSS_ALIGN]
        terms[LOSS_TOTAL] = total
        return terms
