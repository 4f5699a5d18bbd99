"""``calmcap explain VIDEO``: the top class anchors of a video and of its caption, as text and a bar chart."""

from __future__ import annotations

import argparse
import json
from typing import Any

from calmcap.cli.options import add_model_options, positive_int
from calmcap.cli.output import out


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "explain", help="top class anchors of a video and of its caption (text + bar chart)", add_arguments=_arguments,
        description="The video's anchor distribution V_p, the caption distribution the VAE predicts from it, and the "
                    "caption's own S_p (given with --caption, else generated): the paper's qualitative figure.",
        epilog="example:\n  calmcap explain clip.mp4 --model runs/synth_tiny/model --top-k 10 --out anchors.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", metavar="VIDEO")
    add_model_options(parser)
    parser.add_argument("--caption", metavar="TEXT", help="caption to explain (default: the model's own)")
    parser.add_argument("--top-k", type=positive_int, default=10, metavar="K",
                        help="anchors per distribution (default: %(default)s)")
    parser.add_argument("--out", metavar="PNG", help="write the bar chart here")
    parser.add_argument("--num-frames", type=positive_int, default=None, metavar="T",
                        help="frames per video (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from calmcap.pipeline import explain_video

    explanation = explain_video(args.video, args.model, caption=args.caption, top_k=args.top_k, out_png=args.out,
                                num_frames=args.num_frames, device=args.device)
    if args.json:
        out(json.dumps(explanation.to_json(), indent=2, ensure_ascii=False))
        return 0
    e = explanation
    out(f"video: {e.video_path}")
    out(f"caption ({e.caption_source}): {e.caption_text}")
    sections = [(f"top {len(e.video)} of {e.num_anchors} anchors of the video (V_p)", e.video)]
    if e.predicted is not None:
        sections.append(("... of the caption as the VAE predicts it from the video (S_p_hat)", e.predicted))
    sections.append((f"... of the {e.caption_source} caption (S_p)", e.caption))
    for title, values in sections:
        out(f"\n{title}:")
        for i, (label, p) in enumerate(values):
            out(f"  {i + 1:>3}  {100 * p:6.2f}%  {label}")
    overlap = ", ".join(e.overlap) if e.overlap else "(none)"
    out(f"\nin both the video's and the caption's top {len(e.video)}: {overlap}")
    if args.out:
        out(f"wrote {args.out}")
    return 0
