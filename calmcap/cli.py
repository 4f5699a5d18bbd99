"""The ``calmcap`` command line.

Every subcommand imports its heavy dependencies inside its handler, so ``calmcap --help`` and
argument errors answer instantly. Errors meant for users (:class:`CalmcapError`) are printed
as one line ``calmcap: error: ...`` with a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from calmcap import __version__
from calmcap.errors import CalmcapError

EXIT_USER_ERROR = 2


def _cmd_models(args: argparse.Namespace) -> int:
    """List the registered architectures (optionally with parameter counts)."""
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
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _parameter_counts(config) -> list[str]:
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


def _forward(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A handler that hands the raw arguments to another module's ``main(argv)``."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args.rest) or 0)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calmcap",
        description="Video captioning and text-video retrieval with class-anchor-aligned generative modeling (CALM).",
    )
    parser.add_argument("--version", action="version", version=f"calmcap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list the model architectures calmcap ships")
    models.add_argument("--params", action="store_true", help="also count parameters (builds each on the meta device)")
    models.set_defaults(func=_cmd_models)

    synth = sub.add_parser(
        "synth", help="generate the embedded benchmark (rendered H.264 videos + manifest)", add_help=False
    )
    synth.add_argument("rest", nargs=argparse.REMAINDER)
    synth.set_defaults(func=_forward("calmcap.data.synth", "main"))

    from calmcap.data.converters.prepare import add_prepare_parser

    add_prepare_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Third-party libraries (open_clip logs to the root logger) speak at WARNING; ours at INFO.
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("calmcap").setLevel(logging.DEBUG if args.debug else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except CalmcapError as error:
        if args.debug:
            raise
        print(f"calmcap: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("calmcap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
