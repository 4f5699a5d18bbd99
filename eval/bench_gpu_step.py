#!/usr/bin/env python
"""Benchmark (issue #15): the calmcap-vitb32 training step near the hardware's limit, and the recipe end to end.

One run measures everything the issue asks for, each phase written to ``--out`` as soon as it is done
(so a run cut short by its time limit still leaves what it measured):

1. **The step, before and after.** calmcap-vitb32 with random weights (``clip.pretrained=null``;
   :func:`bench_train_step.build`) and random batches of the recipe's shapes
   (:func:`bench_train_step.make_batch`: ``--frames`` frames at the model's image size, CLIP tokens,
   ``data.max_caption_length`` caption pieces of the config's vocabulary), batch ``optim.batch_size``
   of ``--config`` (MSR-VTT: 128). Each ``--variant NAME=LEVERS`` times ``--steps`` steps after
   ``--warmup`` (the first warm-up step, compilation included, is reported apart), over
   ``--num-batches`` batches resident on the device, so data loading is not in these figures.
   The first variant is the reference ("before").

   ``plain`` is the recipe's step as ``accelerate launch --mixed_precision bf16
   recipes/train_caption.py`` runs it on one process: the model's forward under bf16 autocast, its
   outputs cast to fp32 (accelerate's ``convert_to_fp32``), ``CALMLoss`` with the config's weights
   outside autocast, the finite-loss check (a host sync), backward, ``clip_grad_norm_`` at
   ``optim.grad_clip`` and its finite check (a sync), AdamW and the LR schedule as the recipe
   builds them (``build_optimizer``; fp32 weights and optimizer state), and the per-step
   stop-signal poll (a sync). Differences from the recipe: no DataLoader, no logging every
   ``log_every_steps``, and ``optim.warmup_steps=0`` (the first steps at the full learning rate,
   so the correctness check below sees the weights move; the rate does not change the cost).
   The default variants: ``plain``; ``levers`` (fused_adamw, no_sync, tf32); ``levers_sdpa`` (the
   same and fused_sdpa); ``fast`` (compile and the levers of ``levers``).

   Levers (each one a name in ``--variant``):

   - ``compile``: ``torch.compile`` (``--compile-mode``) of forward + loss; backward through the
     compiled graph.
   - ``fused_adamw``: the recipe's AdamW with ``fused=True`` (one multi-tensor kernel per step).
   - ``no_sync``: no host syncs in the step: the finite checks stay on the device (a non-finite
     loss or gradient norm sets fused AdamW's ``found_inf``, which skips the update as the recipe
     skips the step) and the stop poll is left to the loop's log steps. Needs ``fused_adamw``.
   - ``tf32``: TF32 for the fp32 matrix products left outside autocast.
   - ``fused_sdpa``: the math (unfused) attention fallback switched off, so every attention runs a
     fused kernel or the step fails. open_clip's towers (``nn.MultiheadAttention``,
     ``need_weights=False``) and the GPT-2 decoder already call ``F.scaled_dot_product_attention``;
     ``flops_by_op`` in the output names the attention kernels that ran. CUDA only (the CPU's fused
     kernels have no dropout).

   No part is frozen in ``msrvtt_vitb32.yaml`` (both towers train), so there is no frozen part to
   hold in bf16; the output lists the frozen parameters.

2. **FLOPs and MFU.** ``torch.utils.flop_counter.FlopCounterMode`` over one eager forward + loss +
   backward of each variant at the timed batch: matrix products, convolutions and attention, 2
   FLOPs per multiply-add, forward and backward; element-wise work and the optimizer are not
   counted, and compilation changes kernels, not this count. MFU = FLOPs per step / mean step
   time / the card's dense bf16 peak (datasheet, :data:`PEAK_BF16_TFLOPS`, or ``--peak-tflops``).
   On CUDA the rate of a 8192^3 bf16 matrix product is measured too, as a reachable ceiling.
3. **Correctness.** From the same initial weights, ``--check-steps`` steps of every variant on the
   same batch with dropout off and the VAE latent at its mean (the only random draws: compiled
   kernels draw other random numbers than eager ones), against the first variant: the losses must
   agree within ``--check-rtol`` (relative), and the norm of each variant's weight update within
   10 % of the reference's (a missed or skipped update, or a wrong learning rate, fails this).
   A failure makes the exit status 1.
4. **End to end** (``--e2e``). A synthetic frame cache (:mod:`calmcap.data.cache` format; random
   frames, ``--e2e-distinct-clips`` files hard-linked to cover ``--e2e-steps`` batches in one
   epoch) and manifest with random-word captions, so nothing is decoded (the GPU machine has no
   decord or PyAV). Then (a) the recipe's own DataLoader (``build_data``, ``--e2e-workers``
   workers, default: every core) alone, clips/s; (b) host-to-device copies of one batch, pageable
   (what accelerate does) and pinned; (c) ``recipes/train_caption.py --config CONFIG`` itself
   (bf16 through ``ACCELERATE_MIXED_PRECISION``, as ``accelerate launch --mixed_precision bf16``
   sets it), ``--e2e-steps`` steps, its clips/s from ``metrics.jsonl`` (the first log window, with
   start-up, left out), against the step-only clips/s of the first variant, the step the recipe
   runs: their ratio says whether training is data-bound.

The GPU run (issue #15). The GPU machine has torch, transformers and accelerate but no network and
no open_clip; open_clip and its tokenizer's ftfy and wcwidth travel with the working tree as wheels,
downloaded once into a git-ignored folder::

    mkdir -p .git/info && echo /.whl/ >> .git/info/exclude
    python -m pip download --no-deps -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0

and on the GPU machine (``.whl`` carried along, a 600 s limit; $OUT is the folder that comes back)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \\
      && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 || exit 1; set -o pipefail; \\
      python3 eval/bench_gpu_step.py --e2e --time-budget 480 --out $OUT/gpu_step.json 2>&1 | tee $OUT/gpu_step.log

On a CPU (``--device cpu``) the same phases run at small settings; that is how the test exercises it:

    python eval/bench_gpu_step.py --device cpu --override model.name=calmcap-tiny --batch-size 2 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "eval"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing here needs the network

from bench_train_step import build, make_batch  # noqa: E402

RECIPE = REPO / "recipes" / "train_caption.py"
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "msrvtt_vitb32.yaml"

LEVERS = {
    "compile": "torch.compile of forward + loss",
    "fused_adamw": "AdamW(fused=True)",
    "no_sync": "no host syncs in the step (finite checks on the device via found_inf)",
    "tf32": "TF32 for fp32 matrix products",
    "fused_sdpa": "math attention fallback off",
}
ALL_LEVERS = tuple(LEVERS)
# fused_sdpa, a guard that fails a step rather than let attention fall back to the unfused kernel,
# is tried on its own so that a failure there costs no other figure; the compiled step's attention
# kernels are named in its flops_by_op either way.
DEFAULT_VARIANTS = ("plain=", "levers=fused_adamw,no_sync,tf32", "levers_sdpa=fused_adamw,no_sync,tf32,fused_sdpa",
                    "fast=compile,fused_adamw,no_sync,tf32")

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s, matched in this
# order against torch.cuda.get_device_name(). The SXM H100 and the H200 share the chip and clocks.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
)

UPDATE_NORM_TOLERANCE = 0.10  # |update norm / reference's - 1|: Adam's update size barely depends on rounding
CHECK_RESERVE_S = 60  # time the correctness check needs at least (a compiled variant recompiles)
E2E_RESERVE_S = 60  # and the end-to-end phase (data, loader, the recipe's start-up and steps)


# =============================================================================== set-up


def load_recipe() -> Any:
    """``recipes/train_caption.py`` as a module (a script outside the package), for its set-up functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_caption_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def parse_variant(text: str, device_type: str) -> tuple[str, tuple[str, ...]]:
    """``NAME=LEVER,LEVER`` -> (name, levers); unknown levers and impossible combinations are errors."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=LEVER,LEVER (levers may be empty)")
    levers = tuple(lever for lever in rest.replace("+", ",").split(",") if lever)
    unknown = sorted(set(levers) - set(ALL_LEVERS))
    if unknown:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: unknown lever(s) {unknown}; known: {list(ALL_LEVERS)}")
    if "no_sync" in levers and "fused_adamw" not in levers:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: no_sync skips bad steps through fused AdamW's "
                                         "found_inf, so it needs fused_adamw")
    if "fused_sdpa" in levers and device_type != "cuda":
        raise argparse.ArgumentTypeError(f"--variant {text!r}: fused_sdpa needs CUDA (the CPU's fused attention "
                                         "kernels have no dropout)")
    return name, levers


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    """The card's dense bf16 peak (TFLOP/s) and where the figure comes from."""
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value, f"datasheet dense bf16 peak of {key}"
    return None, f"no peak known for {device_name!r}: pass --peak-tflops for MFU"


def measured_matmul_tflops(device: Any, size: int = 8192, repeats: int = 10) -> float:
    """The rate of a ``size``^3 bf16 matrix product on random data (a reachable ceiling), TFLOP/s."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1000) / 1e12


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
    else:
        info["name"] = platform.processor() or platform.machine() or "cpu"
    if Path("/dev/shm").is_dir():  # DataLoader workers hand batches over through it
        info["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
    return info


# =============================================================================== the step


@contextlib.contextmanager
def global_levers(levers: tuple[str, ...]) -> Iterator[None]:
    """The process-wide switches of a variant (TF32, the math attention fallback), restored after."""
    import torch

    precision, math_sdp = torch.get_float32_matmul_precision(), torch.backends.cuda.math_sdp_enabled()
    torch.set_float32_matmul_precision("high" if "tf32" in levers else "highest")
    torch.backends.cuda.enable_math_sdp("fused_sdpa" not in levers)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.enable_math_sdp(math_sdp)


class StepRunner:
    """The recipe's optimisation step on ``model`` with some levers; ``step(batch, seed)`` returns the loss terms.

    Built on the model's current weights, with a fresh optimizer (``recipe.build_optimizer``).
    """

    def __init__(self, recipe: Any, model: Any, cfg: Any, levers: tuple[str, ...], bf16: bool,
                 compile_mode: str = "default") -> None:
        import torch

        from calmcap.losses import CALMLoss

        self.model, self.cfg, self.levers, self.bf16 = model, cfg, levers, bf16
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = recipe.build_optimizer(cfg, model, total_steps=10_000)
        if "fused_adamw" in levers:
            # Before the first step: AdamW reads ``fused`` per group at every step (and makes its
            # state for the fused kernel on the first).
            for group in self.optimizer.param_groups:
                group["fused"] = True
        self.loss_fn = CALMLoss(cfg.loss, variant=model.variant)
        self.forward_loss = self.eager_forward_loss
        if "compile" in levers:
            self.forward_loss = torch.compile(self.eager_forward_loss, mode=compile_mode, dynamic=False)
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)  # no_sync: counted on the device
        self.max_norm = cfg.optim.grad_clip or math.inf

    def eager_forward_loss(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Forward under bf16 autocast, outputs cast to fp32 and the loss outside autocast, as accelerate does."""
        import torch
        from accelerate.utils import convert_to_fp32

        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(batch)
        return self.loss_fn(convert_to_fp32(outputs))

    def step(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        import torch

        from calmcap.losses import LOSS_TOTAL

        torch.manual_seed(seed)  # the recipe seeds dropout and the VAE's draws per batch
        terms = self.forward_loss(batch)
        loss = terms[LOSS_TOTAL]
        if "no_sync" in self.levers:
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
            bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
            # Fused AdamW leaves weights and state alone when found_inf is 1; 0-dim, like the step
            # counts it is then subtracted from (a [1]-shaped one fails on the CPU). Unlike the
            # recipe, the LR schedule still advances on a skipped step: nothing on the host knows.
            self.optimizer.found_inf = bad.float()
            self.optimizer.step()
            self.skipped += bad
        else:
            finite = bool(torch.isfinite(loss.detach()).item())  # recipe: finite_on_every_process
            if finite:
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
                finite = bool(torch.isfinite(grad_norm))  # recipe: after accelerator.clip_grad_norm_
            if not finite:  # recipe: skip_non_finite_step, then on to the next batch
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped += 1
                return {k: v.detach() for k, v in terms.items()}
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if "no_sync" not in self.levers:
            torch.zeros(1, device=self.device).item()  # recipe: GracefulStop.requested, every step
        return {k: v.detach() for k, v in terms.items()}

    def count_flops(self, batch: dict[str, Any]) -> dict[str, Any]:
        """FLOPs of one eager forward + loss and backward (FlopCounterMode), with the forward's split by module.

        Forward and backward are counted apart because the module tracker attributes backward
        FLOPs to the wrong modules; the forward's attribution is right.
        """
        from torch.utils.flop_counter import FlopCounterMode

        from calmcap.losses import LOSS_TOTAL

        forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
        with forward:
            loss = self.eager_forward_loss(batch)[LOSS_TOTAL]
        with backward:
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        # Module names as the tracker writes them: the root's class name, then attribute paths.
        root = type(self.model).__name__
        module = {name: sum(ops.values()) for name, ops in forward.get_flop_counts().items()}
        parts = {"image tower": module.get(f"{root}.clip.visual", 0),
                 "text tower": module.get(f"{root}.clip.transformer", 0),
                 "caption decoder": module.get(f"{root}.decoder", 0)}
        by_module = {**parts, "rest of the model": module.get(root, 0) - sum(parts.values()),
                     "loss": module.get("Global", 0) - module.get(root, 0)}
        by_op: dict[str, int] = {}
        for mode in (forward, backward):
            for op, flops in mode.get_flop_counts().get("Global", {}).items():
                by_op[str(op)] = by_op.get(str(op), 0) + flops
        total_forward, total_backward = forward.get_total_flops(), backward.get_total_flops()
        return {"flops_per_step": total_forward + total_backward, "flops_forward": total_forward,
                "flops_backward": total_backward, "flops_forward_by_module": by_module, "flops_by_op": by_op}


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(runner: StepRunner, batches: list[dict[str, Any]], warmup: int, steps: int) -> dict[str, Any]:
    """``warmup`` steps (the first timed alone: compilation), then ``steps`` steps timed as one window."""
    import torch

    from calmcap.losses import LOSS_TOTAL

    device = runner.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    runner.step(batches[0], seed=0)
    sync(device)
    first_step_s = time.perf_counter() - start
    for i in range(1, warmup):
        runner.step(batches[i % len(batches)], seed=i)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(steps)] if cuda else []
    host_times = []
    sync(device)
    window = time.perf_counter()
    for i in range(steps):
        began = time.perf_counter()
        if cuda:
            events[i][0].record()
        terms = runner.step(batches[i % len(batches)], seed=warmup + i)
        if cuda:
            events[i][1].record()
        host_times.append(time.perf_counter() - began)
    sync(device)
    window = time.perf_counter() - window
    per_step = [a.elapsed_time(b) / 1000 for a, b in events] if cuda else host_times
    row = {"first_step_s": first_step_s, "step_s": window / steps, "step_median_s": statistics.median(per_step),
           "loss_last": float(terms[LOSS_TOTAL]), "skipped_steps": int(runner.skipped)}
    if cuda:
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def compile_counters() -> dict[str, int]:
    """Graph breaks and compiled graphs so far (torch._dynamo's counters)."""
    from torch._dynamo.utils import counters

    return {"graph_breaks": sum(counters["graph_break"].values()),
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}


# =============================================================================== correctness


@contextlib.contextmanager
def dropout_off(recipe: Any, model: Any) -> Iterator[None]:
    """Every dropout at p=0 (the recipe's ``disable_dropout``), restored after."""
    import torch

    saved = {m: m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    recipe.disable_dropout(model)
    try:
        yield
    finally:
        for module, p in saved.items():
            module.p = p


def flat_trainable(model: Any) -> Any:
    import torch

    return torch.cat([p.detach().float().flatten() for p in model.parameters() if p.requires_grad])


def check_variant(recipe: Any, model: Any, cfg: Any, init_state: dict[str, Any], levers: tuple[str, ...],
                  batch: dict[str, Any], steps: int, bf16: bool, compile_mode: str) -> tuple[list[dict], Any]:
    """``steps`` steps from ``init_state`` on one batch, deterministic: per-step loss terms and the weight update."""
    model.load_state_dict(init_state)
    start = flat_trainable(model)
    with global_levers(levers), dropout_off(recipe, model):
        runner = StepRunner(recipe, model, cfg, levers, bf16, compile_mode)
        losses = [{k: float(v) for k, v in runner.step(batch, seed=i).items()} for i in range(steps)]
    del runner
    return losses, flat_trainable(model) - start


def compare(reference: tuple[list[dict], Any], candidate: tuple[list[dict], Any], rtol: float) -> dict[str, Any]:
    """Loss terms step by step and the weight update of ``candidate`` against ``reference``."""
    import torch

    from calmcap.losses import LOSS_TOTAL

    ref_losses, ref_update = reference
    losses, update = candidate
    rel = [abs(b[LOSS_TOTAL] - a[LOSS_TOTAL]) / max(abs(a[LOSS_TOTAL]), 1e-12)
           for a, b in zip(ref_losses, losses, strict=True)]
    terms = {key: max(abs(b[key] - a[key]) for a, b in zip(ref_losses, losses, strict=True))
             for key in ref_losses[0]}
    update, ref_update = update.double(), ref_update.double()  # sums over ~10^8 elements
    norm_ratio = float(update.norm() / ref_update.norm().clamp(min=1e-30))
    cosine = float(torch.nn.functional.cosine_similarity(update, ref_update, dim=0))
    finite = all(math.isfinite(value) for step in losses for value in step.values())
    passed = finite and max(rel) <= rtol and abs(norm_ratio - 1) <= UPDATE_NORM_TOLERANCE
    return {"losses": [step[LOSS_TOTAL] for step in losses], "max_rel_diff_loss": max(rel),
            "max_abs_diff_by_term": terms, "update_norm_ratio": norm_ratio, "update_cosine": cosine,
            "passed": passed}


# =============================================================================== end to end


def write_synthetic_data(root: Path, num_train: int, num_val: int, image_size: int, frames_per_clip: int,
                         distinct: int, captions_per_video: int = 2, seed: int = 0) -> dict[str, Any]:
    """A manifest with random-word captions and a frame cache for it: no video is ever decoded.

    ``distinct`` clips of random uint8 frames ``[frames_per_clip, S, S, 3]`` are written; the other
    videos' cache files are hard links to them (the loader's work per clip is the same; a few
    GiB less to write). The cache's metadata is what :func:`calmcap.data.frame_cache.cache_frames`
    checks, so the recipe finds every clip cached and decodes nothing.
    """
    import numpy as np

    from calmcap.constants import FRAMES
    from calmcap.data.cache import CACHE_FORMAT_VERSION, cache_file, save_array, write_cache_meta
    from calmcap.data.frame_cache import DEFAULT_MAX_FRAMES
    from calmcap.data.manifest import ManifestEntry, write_manifest

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    # Enough distinct words for the config's caption vocabulary (8,000 pieces for MSR-VTT).
    words = ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(12_000)]
    entries = []
    for split, count in (("train", num_train), ("val", num_val)):
        for i in range(count):
            captions = [" ".join(rng.choice(words, size=int(rng.integers(8, 15)))) for _ in range(captions_per_video)]
            entries.append(ManifestEntry(f"{split}{i:06d}", f"videos/{split}{i:06d}.mp4", captions, split))
    manifest = write_manifest(root / "manifest.jsonl", entries)
    cache_dir = root / "cache"
    written: list[Path] = []
    for i, entry in enumerate(entries):
        path = cache_file(cache_dir, FRAMES, entry.video_id)
        if i < distinct:
            save_array(path, rng.integers(0, 256, size=(frames_per_clip, image_size, image_size, 3), dtype=np.uint8))
            written.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(written[i % len(written)], path)
    write_cache_meta(cache_dir, FRAMES, {
        "image_size": image_size, "max_frames": DEFAULT_MAX_FRAMES, "format_version": CACHE_FORMAT_VERSION,
        "kind": FRAMES, "complete": True, "count": len(entries), "splits": ["train", "val"],
        "manifest": str(manifest.resolve()), "synthetic": f"{len(written)} random clips, the rest hard links",
    })
    return {"manifest": manifest, "cache_dir": cache_dir,
            "train_captions": [c for e in entries if e.split == "train" for c in e.captions]}


def time_loader(loader: Any, batches: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DataLoader alone: time to the first batch (workers start), then clips/s over ``batches`` batches.

    Returns the figures and the last batch (for the copy timings).
    """
    start = time.perf_counter()
    iterator = iter(loader)
    batch = next(iterator)
    first_batch_s = time.perf_counter() - start
    clips = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        clips += batch["video_mask"].shape[0]
    seconds = time.perf_counter() - start
    del iterator  # shuts the workers down
    return {"first_batch_s": first_batch_s, "batches": batches, "clips_per_s": clips / seconds}, batch


def time_host_to_device(batch: dict[str, Any], device: Any, repeats: int = 3) -> dict[str, Any]:
    """Copy one batch's tensors to the device: pageable (accelerate's ``send_to_device``) and pinned."""
    import torch

    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    nbytes = sum(v.numel() * v.element_size() for v in tensors.values())
    pinned = {k: v.pin_memory() for k, v in tensors.items()}
    out: dict[str, Any] = {"batch_mib": nbytes / 2**20}
    for name, source, non_blocking in (("pageable", tensors, False), ("pinned", pinned, True)):
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            moved = {k: v.to(device, non_blocking=non_blocking) for k, v in source.items()}
            sync(device)
            times.append(time.perf_counter() - start)
            del moved
        out[f"{name}_ms"] = statistics.median(times) * 1000
        out[f"{name}_gb_per_s"] = nbytes / statistics.median(times) / 1e9
    return out


def recipe_throughput(metrics_path: Path, batch_size: int) -> dict[str, Any]:
    """Clips/s between the first and the last ``train`` record of ``metrics.jsonl`` (start-up left out)."""
    records = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    if len(train) < 2:
        raise RuntimeError(f"{metrics_path}: {len(train)} train record(s); need 2 (raise --e2e-steps)")
    first, last = train[0], train[-1]
    steps = last["step"] - first["step"]
    return {"steps_timed": steps, "clips_per_s": batch_size * steps / (last["time"] - first["time"]),
            "loss_first": first.get("loss"), "loss_last": last.get("loss")}


def end_to_end(args: argparse.Namespace, recipe: Any, model: Any, batch_size: int, bf16: bool,
               seconds_left: float) -> dict[str, Any]:
    """Synthetic frame cache, the recipe's loader alone, host-to-device copies, then the recipe itself."""
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="calmcap-gpu-step-"))
    if work.exists() and args.work_dir:
        shutil.rmtree(work)  # every run builds its own data and run folder
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _end_to_end(args, recipe, model, batch_size, bf16, seconds_left, work)
    finally:
        if not args.work_dir:  # a temporary folder: GiBs of frames and a model export
            shutil.rmtree(work, ignore_errors=True)


def _end_to_end(args: argparse.Namespace, recipe: Any, model: Any, batch_size: int, bf16: bool,
                seconds_left: float, work: Path) -> dict[str, Any]:
    from calmcap.tokenizer import CaptionTokenizer
    from calmcap.train_config import load_train_config

    out: dict[str, Any] = {"work_dir": str(work)}
    workers = os.cpu_count() if args.e2e_workers is None else args.e2e_workers
    started = time.perf_counter()
    data = write_synthetic_data(work / "data", num_train=(args.e2e_steps + 1) * batch_size, num_val=8,
                                image_size=model.config.image_size, frames_per_clip=args.e2e_cached_frames,
                                distinct=args.e2e_distinct_clips)
    out["data_s"] = time.perf_counter() - started
    run_dir = work / "run"
    overrides = [*args.override, f"output_dir={run_dir}", f"model.name={model.config.name}",
                 "model.overrides=[clip.pretrained=null]", f"data.manifest={data['manifest']}",
                 f"data.frame_cache={data['cache_dir']}", "data.feature_cache=null", "data.synth.enabled=false",
                 f"data.num_workers={workers}", f"optim.batch_size={batch_size}", f"optim.max_steps={args.e2e_steps}",
                 "optim.warmup_steps=0", "eval.every_steps=0", "eval.at_end=false", "checkpoint.every_steps=0",
                 f"log_every_steps={args.e2e_log_every}"]
    cfg = load_train_config(args.config, overrides)
    run_dir.mkdir(parents=True)
    tokenizer = CaptionTokenizer.train(data["train_captions"], cfg.data.tokenizer_vocab_size)
    tokenizer.save(run_dir / "tokenizer.model")  # the recipe reuses a tokenizer it finds in output_dir
    out.update(workers=workers, caption_vocab=tokenizer.vocab_size, overrides=overrides)

    _, loader, _ = recipe.build_data(cfg, model, tokenizer)
    out["loader"], batch = time_loader(loader, min(args.e2e_loader_batches, len(loader) - 1))
    print(f"  loader alone ({workers} workers): {out['loader']['clips_per_s']:.0f} clips/s", flush=True)
    device = next(model.parameters()).device
    if device.type == "cuda":
        out["host_to_device"] = time_host_to_device(batch, device)
        print(f"  host-to-device copy of a batch: {out['host_to_device']}", flush=True)
    del loader, batch

    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # accelerate reads the precision from the environment, as `accelerate launch --mixed_precision` sets it.
    env = {**os.environ, "PYTHONPATH": python_path, "ACCELERATE_MIXED_PRECISION": "bf16" if bf16 else "no",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(RECIPE), "--config", str(args.config), *overrides]
    out["recipe_command"] = " ".join(command)
    log = work / "recipe.log"
    timeout = None if math.isinf(seconds_left) else max(30.0, seconds_left - (time.perf_counter() - started))
    start = time.perf_counter()
    with log.open("w") as handle:
        completed = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                                   cwd=REPO)
    out["recipe_wall_s"] = time.perf_counter() - start
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the recipe exited with status {completed.returncode}:\n{tail}")
    out["recipe"] = recipe_throughput(run_dir / "metrics.jsonl", batch_size)
    return out


# =============================================================================== report


def markdown(result: dict[str, Any]) -> str:
    info = result["info"]
    lines = [f"## {info['model']} training step, batch {info['batch_size']}, {info['device']['name']}",
             "",
             f"torch {info['device']['torch']}, {info['precision']}; {info['frames']} frames at {info['image_size']} "
             f"px, {info['caption_length']} caption pieces, vocabulary {info['vocab_size']}; "
             f"{info['trainable_params'] / 1e6:.1f} M trainable parameters; frozen: "
             f"{', '.join(f'{k} ({v:,})' for k, v in info['frozen_params'].items()) or 'none'}.",
             "",
             "| variant | levers | first step (compile) | step (mean) | clips/s | model TFLOP/s | MFU | peak memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["variants"]:
        if "error" in row:
            lines.append(f"| {row['name']} | {', '.join(row['levers']) or '-'} | failed: "
                         f"{row['error'].splitlines()[-1][:120]} | | | | | |")
            continue
        mfu = f"{row['mfu'] * 100:.1f} %" if row.get("mfu") is not None else "-"
        memory = f"{row['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in row else "-"
        lines.append(f"| {row['name']} | {', '.join(row['levers']) or '-'} | {row['first_step_s']:.2f} s | "
                     f"{row['step_s'] * 1000:.1f} ms | {row['clips_per_s']:.1f} | {row['model_tflops_per_s']:.2f} | "
                     f"{mfu} | {memory} |")
    lines += ["", f"FLOPs: {result['flops_method']}", f"Peak: {result['peak']['source']}"
              + (f" = {result['peak']['tflops']} TFLOP/s." if result["peak"]["tflops"] else ".")]
    if result.get("matmul_tflops"):
        lines.append(f"Measured 8192^3 bf16 matrix product on this card: {result['matmul_tflops']:.0f} TFLOP/s.")
    rows = [r for r in result["variants"] if "flops_forward_by_module" in r]
    if rows:
        first = rows[0]
        unit, scale = ("TFLOP", 1e12) if first["flops_per_step"] >= 1e12 else ("GFLOP", 1e9)
        lines.append(f"FLOPs per step: {first['flops_per_step'] / scale:.2f} {unit} (forward "
                     f"{first['flops_forward'] / scale:.2f}, backward {first['flops_backward'] / scale:.2f}); per "
                     f"clip {first['flops_per_step'] / info['batch_size'] / 1e9:.1f} GFLOP.")
        split = first["flops_forward_by_module"]
        total = sum(split.values()) or 1
        lines.append("Forward FLOPs by part: " + ", ".join(f"{k} {v / total * 100:.1f} %" for k, v in split.items())
                     + ".")
        for row in rows:
            attention = {op: flops for op, flops in row["flops_by_op"].items() if "attention" in op}
            if attention:
                share = sum(attention.values()) / row["flops_per_step"] * 100
                lines.append(f"Attention kernels of {row['name']} ({share:.1f} % of its FLOPs): "
                             + ", ".join(sorted(op.removeprefix("aten.") for op in attention)) + ".")
    check = result.get("check")
    if check:
        lines += ["", f"Correctness ({check['method']}):", "",
                  "| variant | max relative loss difference | update norm / reference's | update cosine | verdict |",
                  "|---|---:|---:|---:|---|"]
        for name, row in check["variants"].items():
            if "error" in row:
                lines.append(f"| {name} | failed: {row['error'].splitlines()[-1][:120]} | | | FAIL |")
                continue
            lines.append(f"| {name} | {row['max_rel_diff_loss']:.2e} | {row['update_norm_ratio']:.4f} | "
                         f"{row['update_cosine']:.4f} | {'pass' if row['passed'] else 'FAIL'} |")
        lines.append(f"\nReference losses over the steps: {', '.join(f'{x:.4f}' for x in check['reference_losses'])}")
    e2e = result.get("e2e")
    if e2e and "recipe" in e2e:
        step_only = result["variants"][0].get("clips_per_s")
        lines += ["", f"End to end ({e2e['workers']} DataLoader workers, synthetic frame cache):", "",
                  "| what | clips/s |", "|---|---:|",
                  f"| DataLoader alone | {e2e['loader']['clips_per_s']:.1f} |",
                  f"| `recipes/train_caption.py` ({e2e['recipe']['steps_timed']} steps) | "
                  f"{e2e['recipe']['clips_per_s']:.1f} |"]
        if step_only:
            lines.append(f"| step only ({result['variants'][0]['name']}) | {step_only:.1f} |")
            lines.append(f"\nRecipe / step only: {e2e['recipe']['clips_per_s'] / step_only:.2f}")
        if "host_to_device" in e2e:
            h2d = e2e["host_to_device"]
            lines.append(f"Host-to-device copy of one batch ({h2d['batch_mib']:.0f} MiB): pageable "
                         f"{h2d['pageable_ms']:.1f} ms ({h2d['pageable_gb_per_s']:.1f} GB/s), pinned "
                         f"{h2d['pinned_ms']:.1f} ms ({h2d['pinned_gb_per_s']:.1f} GB/s).")
    elif e2e and "error" in e2e:
        lines += ["", f"End to end failed: {e2e['error'].splitlines()[-1][:200]}"]
    for note in result["skipped"]:
        lines.append(f"\nSkipped: {note}")
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines)


def write_results(result: dict[str, Any], out: Path | None) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result) + "\n", encoding="utf-8")


# =============================================================================== main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the recipe YAML (default: MSR-VTT)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the recipe config (repeatable), for the step and the recipe run")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's optim.batch_size")
    parser.add_argument("--frames", type=int, default=None, help="default: the model's num_frames")
    parser.add_argument("--device", default=None, help="default: cuda when there is one")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME=LEVERS",
                        help=f"a step to time (repeatable; the first is the reference); levers: {', '.join(LEVERS)}; "
                             f"default: {' '.join(DEFAULT_VARIANTS)}")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compile lever")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--num-batches", type=int, default=2, help="distinct batches on the device, in turn")
    parser.add_argument("--check-steps", type=int, default=5, help="steps of the correctness check (0: no check)")
    parser.add_argument("--check-rtol", type=float, default=1e-2,
                        help="largest relative loss difference allowed (bf16 keeps 8 significant bits: 2^-8 = 3.9e-3)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's peak, TFLOP/s (default: table)")
    parser.add_argument("--no-matmul-ceiling", action="store_true", help="skip the 8192^3 matrix-product rate")
    parser.add_argument("--e2e", action="store_true", help="also time the recipe end to end on a synthetic cache")
    parser.add_argument("--e2e-steps", type=int, default=60, help="steps of the recipe run")
    parser.add_argument("--e2e-log-every", type=int, default=10, help="the recipe's log_every_steps")
    parser.add_argument("--e2e-workers", type=int, default=None, help="DataLoader workers (default: every core)")
    parser.add_argument("--e2e-loader-batches", type=int, default=20, help="batches timed of the loader alone")
    parser.add_argument("--e2e-distinct-clips", type=int, default=256, help="cache files written (others: links)")
    parser.add_argument("--e2e-cached-frames", type=int, default=32, help="frames stored per cached clip")
    parser.add_argument("--work-dir", default=None, help="data and recipe run of --e2e (default: a new temp dir)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; phases that would start after it are skipped (and said so)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results here, the Markdown table beside (.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.num_batches < 1:
        print("bench_gpu_step: error: --steps and --num-batches must be at least 1", file=sys.stderr)
        return 2
    started = time.perf_counter()

    def seconds_left() -> float:
        return math.inf if args.time_budget is None else args.time_budget - (time.perf_counter() - started)

    import torch

    from calmcap.train_config import load_train_config

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    texts = args.variant or [v for v in DEFAULT_VARIANTS if device.type == "cuda" or "fused_sdpa" not in v]
    try:
        variants = [parse_variant(text, device.type) for text in texts]
    except argparse.ArgumentTypeError as error:
        print(f"bench_gpu_step: error: {error}", file=sys.stderr)
        return 2
    recipe = load_recipe()
    cfg = load_train_config(args.config, [*args.override, "optim.warmup_steps=0"])
    if cfg.model.overrides:
        print(f"bench_gpu_step: error: model.overrides {cfg.model.overrides} are not applied by this benchmark "
              "(it builds the registered architecture with random weights)", file=sys.stderr)
        return 2
    batch_size = args.batch_size or cfg.optim.batch_size
    bf16 = args.precision == "bf16"
    model = build(cfg.model.name, cfg.data.tokenizer_vocab_size, device)
    recipe.freeze_parameters(model, cfg)
    frames = args.frames or model.config.num_frames
    generator = torch.Generator().manual_seed(0)
    batches = [make_batch(model, batch_size, frames, cfg.data.max_caption_length, device, generator)
               for _ in range(args.num_batches)]
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    info = device_info(device)
    peak, peak_source = peak_tflops(info["name"], args.peak_tflops)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name if argv is None else "bench_gpu_step.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "info": {"device": info, "model": model.config.name, "config": str(args.config), "overrides": args.override,
                 "batch_size": batch_size, "frames": frames, "image_size": model.config.image_size,
                 "caption_length": cfg.data.max_caption_length, "vocab_size": model.config.decoder.vocab_size,
                 "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                 "frozen_params": {n: p.numel() for n, p in model.named_parameters() if not p.requires_grad},
                 "precision": ("bf16 autocast, fp32 weights + AdamW state" if bf16 else "fp32"),
                 "levers": LEVERS},
        "peak": {"tflops": peak, "source": peak_source},
        "flops_method": ("torch.utils.flop_counter.FlopCounterMode over one eager forward + loss + backward at "
                         "the timed batch: matrix products, convolutions and the attention kernels it has formulas "
                         "for (CUDA's flash, memory-efficient and cuDNN ones; not the CPU's), 2 FLOPs per "
                         "multiply-add; element-wise ops and the optimizer not counted. MFU = FLOPs per step / mean "
                         "step time / peak."),
        "variants": [], "skipped": [], "errors": [],
    }
    print(json.dumps(result["info"]), flush=True)
    if device.type == "cuda" and not args.no_matmul_ceiling:
        result["matmul_tflops"] = measured_matmul_tflops(device)
        print(f"8192^3 bf16 matrix product: {result['matmul_tflops']:.0f} TFLOP/s", flush=True)

    # 1-2. every variant: FLOPs, then the timed steps
    for name, levers in variants:
        row: dict[str, Any] = {"name": name, "levers": list(levers)}
        result["variants"].append(row)
        if seconds_left() <= 0:
            result["skipped"].append(f"variant {name}: over --time-budget")
            del result["variants"][-1]
            continue
        print(f"variant {name} ({', '.join(levers) or 'the recipe step'}):", flush=True)
        try:
            model.load_state_dict(init_state)
            before = compile_counters()
            with global_levers(levers):
                runner = StepRunner(recipe, model, cfg, levers, bf16, args.compile_mode)
                row.update(runner.count_flops(batches[0]))
                row.update(time_variant(runner, batches, args.warmup, args.steps))
            if "compile" in levers:
                after = compile_counters()
                row.update({key: after[key] - before[key] for key in after})
            row["clips_per_s"] = batch_size / row["step_s"]
            row["model_tflops_per_s"] = row["flops_per_step"] / row["step_s"] / 1e12
            row["mfu"] = row["model_tflops_per_s"] / peak if peak else None
            if result.get("matmul_tflops"):
                row["mfu_vs_matmul"] = row["model_tflops_per_s"] / result["matmul_tflops"]
            print(json.dumps({k: v for k, v in row.items() if k not in ("flops_by_op",)}), flush=True)
        except Exception:
            row["error"] = traceback.format_exc()
            result["errors"].append(f"variant {name}")
            print(row["error"], file=sys.stderr, flush=True)
        finally:
            runner = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        write_results(result, args.out)

    # 3. correctness: every variant against the first, same weights, same batch, deterministic
    status = 0
    if args.check_steps > 0 and len(variants) > 1:
        if seconds_left() < CHECK_RESERVE_S:
            result["skipped"].append("correctness check: too little of --time-budget left")
        else:
            batch = {**batches[0], "sample_latent": False}
            check: dict[str, Any] = {
                "method": (f"{args.check_steps} steps from the same initial weights on one batch, dropout off and "
                           f"the VAE latent at its mean; pass: every loss within {args.check_rtol:g} (relative) of "
                           f"the reference's and the weight update's norm within {UPDATE_NORM_TOLERANCE:.0%}"),
                "reference": variants[0][0], "rtol": args.check_rtol, "variants": {}}
            result["check"] = check
            print("correctness check:", flush=True)
            reference = None
            try:
                reference = check_variant(recipe, model, cfg, init_state, variants[0][1], batch, args.check_steps,
                                          bf16, args.compile_mode)
                check["reference_losses"] = [step["loss"] for step in reference[0]]
            except Exception:
                check["error"] = traceback.format_exc()
                result["errors"].append("correctness check: the reference failed")
            for name, levers in variants[1:] if reference else []:
                try:
                    began = time.perf_counter()
                    candidate = check_variant(recipe, model, cfg, init_state, levers, batch, args.check_steps, bf16,
                                              args.compile_mode)
                    check["variants"][name] = compare(reference, candidate, args.check_rtol)
                    check["variants"][name]["seconds"] = time.perf_counter() - began  # a compile included
                except Exception:
                    check["variants"][name] = {"error": traceback.format_exc(), "passed": False}
                print(f"  {name}: {json.dumps(check['variants'][name])[:2000]}", flush=True)
            check["passed"] = reference is not None and all(v["passed"] for v in check["variants"].values())
            if not check["passed"]:
                print("CORRECTNESS CHECK FAILED", file=sys.stderr, flush=True)
                status = 1
            reference = None
        write_results(result, args.out)
    batches = None
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 4. end to end
    if args.e2e:
        if seconds_left() < E2E_RESERVE_S:
            result["skipped"].append("end to end: too little of --time-budget left")
        else:
            print("end to end:", flush=True)
            try:
                result["e2e"] = end_to_end(args, recipe, model, batch_size, bf16, seconds_left())
            except Exception:
                result["e2e"] = {"error": traceback.format_exc()}
                result["errors"].append("end to end")
                print(result["e2e"]["error"], file=sys.stderr, flush=True)

    result["elapsed_s"] = time.perf_counter() - started
    write_results(result, args.out)
    print("\n" + markdown(result), flush=True)
    if result["errors"]:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
