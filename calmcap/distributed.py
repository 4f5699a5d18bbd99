"""Process-group helpers that work with or without ``torch.distributed`` initialised.

Kept apart from the model (CLIP4Clip puts gathers inside ``forward``; we do not): the losses
call :func:`gather_with_grad` so contrastive negatives come from every process.
"""

from __future__ import annotations

import torch


def is_distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` [B, ...] from every process along dim 0, keeping gradients.

    The autograd-aware all-gather sends each process's gradient back to the process that owns
    the slice; on one process it is the identity. All processes must pass the same shape.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)
