"""Pieces the training recipes share; the loop itself stays visible in ``recipes/``.

Nothing here imports accelerate at module level: the functions take an ``accelerator``
argument where they need one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


# --------------------------------------------------------------------------- data order


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)``: resumable and process-independent."""

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_items))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_items, generator=generator).tolist())


# --------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """Counters saved with every resume state (``accelerator.register_for_checkpointing``)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of ``epoch`` already consumed (for skip_first_batches)
    best_metric: float = -math.inf
    best_step: int = -1
    bad_steps_in_a_row: int = 0
    skipped_steps: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------- optimisation


ANCHOR_OFFSETS = "anchor_bank.pos_embed"  # the learnable offsets e_k of a_k = p_k + e_k


def parameter_groups(model: torch.nn.Module, lr: float, clip_lr: float, weight_decay: float,
                     anchor_offset_decay: float = 0.0, anchor_offset_lr: float | None = None) -> list[dict[str, Any]]:
    """CLIP towers vs new modules, each with and without weight decay, plus the anchor offsets.

    No decay on biases, norms, embeddings, positional tables and temperatures (1-D or
    explicitly named), as in CLIP and GPT-2 training. The anchor offsets ``e_k`` get a group of
    their own: its learning rate (``anchor_offset_lr``, default ``lr``) and decoupled weight
    decay (``anchor_offset_decay``, pulling each anchor back to its label prompt ``p_k``) are
    the run's choice (issue #11; ``optim.anchor_offset_lr`` / ``optim.anchor_offset_decay``).
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    offsets: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.removeprefix("module.") == ANCHOR_OFFSETS:
            offsets.append(param)
            continue
        is_clip = name.startswith("clip.")
        no_decay_names = ("pos", "embed", "logit_scale", "log_tau", "wte", "wpe", "token_embedding")
        no_decay = param.ndim < 2 or any(k in name for k in no_decay_names)
        groups.setdefault((is_clip, no_decay), []).append(param)
    out = [
        {"params": params, "lr": clip_lr if is_clip else lr, "weight_decay": 0.0 if no_decay else weight_decay,
         "name": f"{'clip' if is_clip else 'new'}{'/no_decay' if no_decay else ''}"}
        for (is_clip, no_decay), params in sorted(groups.items())
    ]
    if offsets:
        out.append({"params": offsets, "lr": lr if anchor_offset_lr is None else anchor_offset_lr,
                    "weight_decay": anchor_offset_decay, "name": "anchor_offsets"})
    return out


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """Linear warm-up, then cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# --------------------------------------------------------------------------- checkpoints


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete resume states, oldest first (an interrupted save has no marker and is ignored)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """``latest`` (or a path) -> a resume state directory; None when there is nothing to resume."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            logger.info("--resume latest: no complete checkpoint in %s, starting fresh", checkpoint_root(output_dir))
            return None
        return found[-1]
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        from calmcap.errors import CheckpointError

        raise CheckpointError(f"{path}: not a complete resume state (no {COMPLETE_MARKER} marker)")
    return path


def check_resume_processes(path: str | os.PathLike, num_processes: int) -> None:
    """Refuse a resume state that another number of processes saved (issue #15).

    Each process draws ``optim.batch_size`` items a step from its own shard of the epoch's order,
    so the step's batch, the shards and the batches already consumed in the epoch all depend on
    the number of processes: continuing with another number would not be the run that was
    started. States from before the marker recorded it are not checked.
    """
    from calmcap.errors import CheckpointError

    saved = json.loads((Path(path) / COMPLETE_MARKER).read_text(encoding="utf-8") or "{}").get("num_processes")
    if saved is not None and saved != num_processes:
        raise CheckpointError(
            f"{path}: saved by {saved} process(es), this run has {num_processes}; resuming with another number of "
            f"processes would change each step's batch and data, so launch {saved} process(es) or use a new output_dir"
        )


def save_resume_state(accelerator: Any, output_dir: str | os.PathLike, step: int, keep: int) -> Path:
    """``accelerator.save_state`` into a temp directory, then rename and mark it complete.

    A kill at any moment leaves either the previous complete states or the new one: never a
    directory that looks complete but is not. Old states beyond ``keep`` are removed. The
    marker records the step and the number of processes (``check_resume_processes``).
    """
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = {"step": step, "time": time.time(), "num_processes": accelerator.num_processes}
        (tmp / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- diagnostics


@torch.no_grad()
def anchor_offset_statistics(model: torch.nn.Module) -> dict[str, float]:
    """How far the anchors moved from their label prompts: ``anchor/offset_norm`` (mean
    ``||e_k||``; the prompts ``p_k`` have norm 1) and ``anchor/identity`` (the share of anchors
    whose nearest prompt is still their own, i.e. that still mean their label)."""
    bank = getattr(model, "anchor_bank", None)
    if bank is None:
        return {}
    prompts = torch.nn.functional.normalize(bank.prompt_embeds.float(), dim=-1)
    anchors = torch.nn.functional.normalize(bank.anchors().float(), dim=-1)
    nearest = (anchors @ prompts.t()).argmax(-1)
    return {"anchor/offset_norm": float(bank.pos_embed.float().norm(dim=-1).mean()),
            "anchor/identity": float((nearest == torch.arange(len(nearest), device=nearest.device)).float().mean())}


def anchor_statistics(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """How spread the anchor distributions are: mean entropy (nats) of ``V_p`` and ``S_p`` and
    the share of the batch whose ``S_p`` peaks on its most common anchor.

    A text entropy near 0 with a share near 1 means ``S_p`` collapsed to one anchor for every
    caption, which makes the VAE's reconstruction trivial (seen in the default run; issue #6).
    """
    stats: dict[str, float] = {}
    for key, name in (("video_dist", "anchor/video_entropy"), ("text_dist", "anchor/text_entropy")):
        dist = outputs.get(key)
        if dist is not None:
            dist = dist.detach()
            stats[name] = float(-(dist * dist.clamp(min=1e-12).log()).sum(-1).mean())
    text = outputs.get("text_dist")
    if text is not None:
        text = text.detach()
        peaks = text.argmax(-1)
        stats["anchor/text_top_share"] = float(peaks.bincount().max()) / peaks.numel()
        # L_rec of a VAE that ignores the video and always predicts the batch's mean S_p: the
        # VAE's L_rec below this means its latent carries what tells the captions apart.
        mean = text.mean(0, keepdim=True).clamp(min=1e-12)
        stats["anchor/rec_blind"] = float(-(text * mean.log()).sum(-1).mean())
    return stats


# --------------------------------------------------------------------------- faults


class GracefulStop:
    """Turn SIGTERM/SIGINT into a request to checkpoint and stop at the next step boundary.

    Every process polls :meth:`requested`, which agrees across processes (any one asked), so
    all of them save the same step. A second signal falls back to the default (immediate) exit.
    """

    def __init__(self) -> None:
        import signal

        self._flag = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        import signal

        self._flag = True
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        logger.warning("signal %d received: saving a resume state at the end of this step", signum)

    def requested(self, accelerator: Any) -> bool:
        flag = torch.tensor([1.0 if self._flag else 0.0], device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0


def assert_finite(model: torch.nn.Module) -> None:
    """Refuse to save a poisoned model: every parameter must be finite."""
    from calmcap.errors import CalmcapError

    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise CalmcapError(f"parameter {name} holds NaN or infinite values; not saving this model")


# --------------------------------------------------------------------------- logging


class MetricsLog:
    """Append-only JSON-lines log of training and evaluation metrics (main process).

    The always-on record of a run; the recipe sends the same values to the trackers the run
    names (``trackers``, through accelerate's tracking API).
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def read_metrics_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def truncate_metrics_log(path: str | os.PathLike, step: int) -> None:
    """Drop records after ``step`` (a resumed run rewrites them)."""
    records = read_metrics_log(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
        Path(path).write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")


def plot_training_curves(log_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Loss terms and evaluation metrics against steps, one PNG."""
    records = read_metrics_log(log_path)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss_keys = sorted({k for r in train for k in r if k.startswith("loss")})
    shown = ("caption/CIDEr", "caption/BLEU-4", "t2v/R@1", "t2v/R@5", "v2t/R@1")
    eval_keys = [k for k in shown if any(k in r for r in evals)]
    fig, axes = plt.subplots(1, 2 if eval_keys else 1, figsize=(12 if eval_keys else 6, 4), squeeze=False)
    ax = axes[0][0]
    for key in loss_keys:
        points = [(r["step"], r[key]) for r in train if key in r]
        ax.plot(*zip(*points, strict=True), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("training losses")
    if eval_keys:
        ax = axes[0][1]
        for key in eval_keys:
            points = [(r["step"], r[key]) for r in evals if key in r]
            ax.plot(*zip(*points, strict=True), marker="o", label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("score (x100 / %)")
        ax.legend(fontsize=8)
        ax.set_title("validation")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
