"""Self-critical sequence training (Rennie et al., 2017): CIDEr-D reward, greedy baseline.

For each video, ``num_samples`` captions are sampled and one is decoded greedily; the reward
of a sample is its CIDEr-D minus the greedy caption's (computed in fp32 Python floats with
document frequencies from the training captions), and the loss is
``-mean(reward * sum_t log p(w_t))`` over the samples. The teacher-forced pass that gives
``log p`` goes through the (possibly distributed) model's ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from calmcap.cider import CiderD
from calmcap.tokenizer import BOS_ID, EOS_ID, PAD_ID


@torch.no_grad()
def sample_captions(
    model: Any,
    batch: dict[str, Any],
    num_samples: int,
    max_length: int,
    top_p: float = 1.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy [B, L] and sampled [B * num_samples, L] token ids (no bos), from the unwrapped model."""
    kwargs = {"video_mask": batch["video_mask"]}
    if "frame_features" in batch:
        kwargs["frame_features"] = batch["frame_features"]
    else:
        kwargs["video"] = batch["video"]
    modes = [(module, module.training) for module in model.modules()]  # frozen parts may be in eval already
    model.eval()
    greedy = model.generate(**kwargs, num_beams=1, max_length=max_length)["sequences"]
    sampled = model.generate(
        **kwargs, num_beams=1, max_length=max_length, do_sample=True, top_p=top_p, temperature=temperature,
        num_return_sequences=num_samples,
    )["sequences"]
    for module, training in modes:
        module.training = training
    return greedy, sampled


def teacher_forcing_inputs(sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L] generated ids -> ``caption_ids`` [N, L+1] (bos prefixed) and ``caption_mask``.

    Tokens up to and including the first eos are kept; padding after it is masked.
    """
    ids = torch.cat([torch.full_like(sequences[:, :1], BOS_ID), sequences], dim=1)
    is_eos = ids == EOS_ID
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos & ((ids != PAD_ID) | is_eos)).long()
    return ids.masked_fill(mask == 0, PAD_ID), mask


def rewards(
    cider: CiderD,
    tokenizer: Any,
    greedy: torch.Tensor,
    sampled: torch.Tensor,
    references: Sequence[Sequence[str]],
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-sample advantage ``CIDEr-D(sample) - CIDEr-D(greedy)`` [B * S] (fp32) and statistics."""
    num_samples = sampled.shape[0] // greedy.shape[0]
    greedy_scores = cider.scores([tokenizer.decode(s.tolist()) for s in greedy], references)
    sample_refs = [refs for refs in references for _ in range(num_samples)]
    sample_scores = cider.scores([tokenizer.decode(s.tolist()) for s in sampled], sample_refs)
    baseline = [g for g in greedy_scores for _ in range(num_samples)]
    advantage = torch.tensor([s - b for s, b in zip(sample_scores, baseline, strict=True)], dtype=torch.float32)
    stats = {
        "scst/greedy_cider": 100.0 * sum(greedy_scores) / len(greedy_scores),
        "scst/sample_cider": 100.0 * sum(sample_scores) / len(sample_scores),
    }
    return advantage, stats


def scst_loss(logits: torch.Tensor, targets: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """``-mean_n(advantage_n * sum_t log p(target_nt))``: logits [N, L, V], targets [N, L] (pad -100)."""
    logprobs = logits.float().log_softmax(-1)
    valid = targets != -100
    token_logprobs = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    return -(advantage.to(logits.device) * token_logprobs.sum(1)).mean()
