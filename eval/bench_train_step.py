#!/usr/bin/env python
"""Benchmark: one training step of a CALM model on a GPU (throughput and peak memory).

The step is the recipe's: forward (image tower on every frame, text tower, anchor branch,
caption decoder), ``CALMLoss``, backward, gradient clipping at 1.0 and AdamW over the
recipe's four parameter groups, under bf16 autocast (what ``accelerate launch
--mixed_precision bf16`` does: fp32 weights and optimizer state, bf16 matrix work).
Inputs are random tensors of the recipe's shapes (``--frames`` frames at the model's image
size, CLIP text tokens of real captions, ``--caption-length`` caption pieces), so the
figures do not depend on data loading; weights are random (``clip.pretrained=null``), which
changes nothing in the arithmetic.

1. **Largest batch.** Batch sizes double from ``--start-batch`` until a step runs out of
   memory (or ``--max-batch``), then bisect down to a multiple of ``--granularity``.
2. **Throughput.** At the recipe's batch (``--batch``, default 128) and at the largest batch:
   ``--warmup`` steps, then ``--steps`` timed steps (CUDA-synchronised), median step time,
   clips/second and peak allocated memory.

    python eval/bench_train_step.py --model calmcap-vitb32 --out bench_train_step.json

On a machine without CUDA it runs on the CPU (no autocast, no search: ``--batch`` only),
which is how its test exercises it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("a man is cooking pasta in a kitchen while a woman talks about the recipe and "
         "children play football outside on the green grass near a red car").split()


def build(model_name: str, vocab_size: int, device):
    import torch

    from calmcap.config import get_model_config
    from calmcap.models.calm import CALMModel

    config = get_model_config(model_name, ["clip.pretrained=null", f"decoder.vocab_size={vocab_size}"])
    torch.manual_seed(0)
    return CALMModel.create(config).to(device)


def make_batch(model, batch_size: int, frames: int, caption_length: int, device, generator):
    import torch

    size = model.config.image_size
    vocab = model.config.decoder.vocab_size
    captions = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8 + i % 12)) for i in range(batch_size)]
    ids = torch.randint(4, vocab, (batch_size, caption_length), generator=generator)
    ids[:, 0] = 2  # bos
    ids[:, -1] = 3  # eos
    return {
        "video": torch.randn(batch_size, frames, 3, size, size, generator=generator).to(device),
        "video_mask": torch.ones(batch_size, frames, dtype=torch.bool, device=device),
        "text_tokens": model.tokenize_text(captions).to(device),
        "caption_ids": ids.to(device),
        "caption_mask": torch.ones(batch_size, caption_length, dtype=torch.long, device=device),
    }


class Stepper:
    """The recipe's optimisation step on one model; ``step(batch)`` returns the loss."""

    def __init__(self, model, lr: float, clip_lr: float, weight_decay: float, bf16: bool) -> None:
        import torch

        from calmcap.losses import CALMLoss, LossWeights
        from calmcap.training import parameter_groups

        self.model = model.train()
        self.optimizer = torch.optim.AdamW(parameter_groups(model, lr, clip_lr, weight_decay))
        self.loss_fn = CALMLoss(LossWeights(), variant=model.variant)
        self.bf16 = bf16

    def step(self, batch) -> float:
        import torch

        from calmcap.losses import LOSS_TOTAL

        device_type = "cuda" if self.bf16 else "cpu"
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=self.bf16):
            outputs = self.model(batch)
            loss = self.loss_fn(outputs)[LOSS_TOTAL]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def release(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


def fits(stepper: Stepper, args, batch_size: int, device, generator) -> tuple[bool, float]:
    """Two steps at this batch size: whether they fit, and the peak memory (GiB)."""
    import torch

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        batch = make_batch(stepper.model, batch_size, args.frames, args.caption_length, device, generator)
        for _ in range(2):
            stepper.step(batch)
        torch.cuda.synchronize()
        return True, torch.cuda.max_memory_allocated() / 2**30
    except torch.cuda.OutOfMemoryError:
        return False, float("nan")
    finally:
        batch = None
        stepper.release()
        torch.cuda.empty_cache()


def largest_batch(stepper: Stepper, args, device, generator) -> tuple[int, list[dict]]:
    trials = []
    good, bad = 0, None
    size = args.start_batch
    while size <= args.max_batch:
        ok, peak = fits(stepper, args, size, device, generator)
        trials.append({"batch": size, "fits": ok, "peak_gib": peak})
        print(f"  batch {size}: {'fits' if ok else 'out of memory'}" + (f", peak {peak:.1f} GiB" if ok else ""),
              flush=True)
        if not ok:
            bad = size
            break
        good, size = size, size * 2
    while bad is not None and bad - good > args.granularity:
        middle = (good + bad) // 2 // args.granularity * args.granularity
        if middle <= good:
            break
        ok, peak = fits(stepper, args, middle, device, generator)
        trials.append({"batch": middle, "fits": ok, "peak_gib": peak})
        print(f"  batch {middle}: {'fits' if ok else 'out of memory'}" + (f", peak {peak:.1f} GiB" if ok else ""),
              flush=True)
        good, bad = (middle, bad) if ok else (good, middle)
    return good, trials


def throughput(stepper: Stepper, args, batch_size: int, device, generator) -> dict:
    import torch

    cuda = device.type == "cuda"
    batch = make_batch(stepper.model, batch_size, args.frames, args.caption_length, device, generator)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        stepper.step(batch)
    times, losses = [], []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        losses.append(stepper.step(batch))  # .item() synchronises
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    row = {"batch": batch_size, "median_step_s": median, "min_step_s": min(times), "clips_per_s": batch_size / median,
           "frames_per_s": batch_size * args.frames / median, "loss_first": losses[0], "loss_last": losses[-1]}
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="calmcap-vitb32")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--caption-length", type=int, default=32, help="caption pieces incl. bos/eos (recipe: 32)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="caption vocabulary (MSR-VTT recipe: 8000)")
    parser.add_argument("--batch", type=int, nargs="+", default=[128], help="batch sizes timed besides the largest")
    parser.add_argument("--start-batch", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--granularity", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--clip-lr", type=float, default=1e-5)
    parser.add_argument("--no-search", action="store_true", help="time --batch only")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    generator = torch.Generator().manual_seed(0)
    model = build(args.model, args.vocab_size, device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stepper = Stepper(model, args.lr, args.clip_lr, 0.05, bf16=cuda)
    info = {
        "model": args.model, "trainable_params": trainable, "frames": args.frames,
        "image_size": model.config.image_size, "caption_length": args.caption_length,
        "precision": "bf16 autocast, fp32 weights + AdamW state" if cuda else "fp32 (CPU)",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
    }
    print(json.dumps(info), flush=True)
    result: dict = {"info": info, "search": [], "timed": []}
    sizes = list(args.batch)
    if cuda and not args.no_search:
        print("largest batch:", flush=True)
        largest, result["search"] = largest_batch(stepper, args, device, generator)
        result["largest_batch"] = largest
        if largest and largest not in sizes:
            sizes.append(largest)
    for size in sizes:
        row = throughput(stepper, args, size, device, generator)
        result["timed"].append(row)
        print(json.dumps(row), flush=True)
    lines = [f"\n{info['model']} training step on {info['device']} ({info['precision']}; {args.frames} frames at "
             f"{info['image_size']} px; torch {info['torch']})\n",
             "| batch | step (median) | clips/s | frames/s | peak memory |", "|---:|---:|---:|---:|---:|"]
    for row in result["timed"]:
        peak = f"{row['peak_gib']:.1f} GiB" if "peak_gib" in row else "–"
        lines.append(f"| {row['batch']} | {row['median_step_s'] * 1000:.0f} ms | {row['clips_per_s']:.1f} | "
                     f"{row['frames_per_s']:.0f} | {peak} |")
    if "largest_batch" in result:
        lines.append(f"\nlargest batch that fits: {result['largest_batch']} (granularity {args.granularity})")
    text = "\n".join(lines)
    print(text, flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
