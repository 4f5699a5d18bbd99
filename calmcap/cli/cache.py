"""``calmcap cache MANIFEST``: cache decoded frames, and optionally a frozen tower's features, for training.

The passes are :mod:`calmcap.data.frame_cache` and :mod:`calmcap.data.feature_cache`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from calmcap.cli.output import out, print_bad_videos


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cache", help="cache decoded frames (and tower features) for training", add_arguments=_arguments,
        description="Cache decoded, resized frames (uint8) and optionally a frozen image tower's features "
                    "(float16) so training skips decoding. Resumable: existing files are kept.",
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from calmcap.data.frame_cache import DEFAULT_MAX_FRAMES
    from calmcap.data.video import BACKENDS

    parser.add_argument("manifest", help="manifest (JSON lines)")
    parser.add_argument("--cache-dir", required=True, help="cache folder (frames/ and features/ go inside)")
    parser.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                        help="only this split (repeatable; default: every split)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="frame side S (default: the model's image size with --model, else 224)")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                        help="at most this many frames per clip, sampled uniformly (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2,
                        help="decoder processes; 0 runs in this process (default: %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="decoder (default: %(default)s)")
    parser.add_argument("--features", action="store_true", help="also cache the image tower's frame features")
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, or a registered model name with pretrained CLIP weights "
                             "(for --features)")
    parser.add_argument("--no-frames", action="store_true",
                        help="with --features: do not keep a frames cache (decode straight into features)")
    parser.add_argument("--batch-size", type=int, default=256, help="frames per tower forward (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="device for the tower (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true",
                        help="rebuild a cache made with other settings or another tower")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(parser=parser)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 (bad videos are listed, not fatal)."""
    from calmcap.constants import FEATURES, FRAMES
    from calmcap.data.feature_cache import cache_features, load_feature_model
    from calmcap.data.frame_cache import cache_frames

    parser: argparse.ArgumentParser = args.parser
    if args.features and not args.model:
        parser.error("--features needs --model (a checkpoint directory or a model name)")
    if args.model and not args.features:
        parser.error("--model is only used with --features")
    if args.no_frames and not args.features:
        parser.error("--no-frames only makes sense with --features")
    model = load_feature_model(args.model, args.device) if args.features else None
    image_size = args.image_size
    if model is not None:
        if image_size is not None and image_size != model.config.image_size:
            parser.error(f"--image-size {image_size} differs from the model's image size {model.config.image_size}")
        image_size = int(model.config.image_size)
    elif image_size is None:
        image_size = 224
    progress = not args.no_progress
    if not args.no_frames:
        frames = cache_frames(args.manifest, args.cache_dir, image_size, splits=args.splits, max_frames=args.max_frames,
                              workers=args.workers, progress=progress, backend=args.backend, overwrite=args.overwrite)
        out(f"frames: {frames.num_cached}/{frames.num_videos} videos cached at {image_size}px "
            f"({frames.num_written} new, {frames.num_skipped} kept) in {frames.seconds:.1f} s "
            f"-> {Path(args.cache_dir) / FRAMES}")
        print_bad_videos(frames.bad, frames.bad_videos_path)
    if model is not None:
        features = cache_features(model, args.manifest, args.cache_dir, splits=args.splits, batch_size=args.batch_size,
                                  progress=progress, max_frames=args.max_frames,
                                  workers=args.workers if args.no_frames else 0,
                                  backend=args.backend, overwrite=args.overwrite)
        tower = features.meta["tower"]
        out(f"features: {features.num_cached}/{features.num_videos} videos ({features.num_written} new, "
            f"{features.num_skipped} kept) in {features.seconds:.1f} s, D={features.meta.get('embed_dim')}, "
            f"tower {tower['arch']} ({tower['fingerprint'][:19]}...) -> {Path(args.cache_dir) / FEATURES}")
        print_bad_videos(features.bad, features.bad_videos_path)
    return 0
