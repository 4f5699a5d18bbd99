"""``calmcap models``: list the registered architectures (optionally with parameter counts)."""

from __future__ import annotations

import argparse
from typing import Any

from calmcap.cli.output import out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("models", help="list the model architectures calmcap ships",
                                   add_arguments=_arguments)
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", action="store_true", help="also count parameters (builds each on the meta device)")


def run(args: argparse.Namespace) -> int:
    from calmcap.config import get_model_config, list_models

    rows = []
    for name in list_models():
        config = get_model_config(name)
        row = [name, config.clip.arch, str(config.clip.pretrained), str(config.num_frames), str(config.image_size),
               config.alignment.variant, config.anchors.label_set]
        if args.params:
            row += _parameter_counts(config)
        rows.append(row)
    header = ["model", "clip arch", "pretrained", "frames", "px", "alignment", "anchors"]
    if args.params:
        header += ["params (M)", "anchor branch (M)"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        out("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _parameter_counts(config: Any) -> list[str]:
    """Counted on the meta device: nothing is allocated or downloaded."""
    import torch

    from calmcap.labels import load_labels
    from calmcap.models.calm import CALMModel
    from calmcap.models.encoders import build_clip

    labels = load_labels(config.anchors.label_set, config.anchors.num_anchors) if config.use_anchors else []
    with torch.device("meta"):
        model = CALMModel(config, labels, clip_model=build_clip(config.clip, config.image_size, meta=True))
    total = sum(p.numel() for p in model.parameters())
    return [f"{total / 1e6:.2f}", f"{model.anchor_branch_parameters() / 1e6:.3f}"]
