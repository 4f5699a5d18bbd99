#!/usr/bin/env python
"""Zero-shot figures of CLIP towers on the embedded benchmark (issue #11; BENCHMARKS.md).

    python eval/zeroshot_synth.py --pretrained synth --data data/synth --split test --split test_ood --out runs/zeroshot
    python eval/zeroshot_synth.py --pretrained runs/synth_pretrain_clip/calmcap-tiny-clip-synth.safetensors ...
    python eval/zeroshot_synth.py --model runs/synth_tiny/model ...      # a checkpoint's own towers

Classifies shape, colour, size, action and background of every video of each split from
text prompts alone (``calmcap.zeroshot``), with chance beside each, and ranks the split's
captions against its videos. Writes ``zeroshot.json``, ``zeroshot.md`` and ``zeroshot.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pretrained", default="synth",
                        help="open_clip tag or weights file; 'none' for random init (default: %(default)s)")
    source.add_argument("--model", help="a calmcap checkpoint directory: evaluate its CLIP towers instead")
    parser.add_argument("--arch", default="calmcap-tiny-clip", help="open_clip architecture (default: %(default)s)")
    parser.add_argument("--data", default="data/synth", help="benchmark manifest or its folder (default: %(default)s)")
    parser.add_argument("--split", action="append", help="split(s) to evaluate (default: test, test_ood)")
    parser.add_argument("--frame-cache", help="frame cache folder (default: DATA/cache when it exists)")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per video (default: %(default)s)")
    parser.add_argument("--max-videos", type=int, help="first N videos of each split")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output folder")
    return parser.parse_args(argv)


def load_towers(args: argparse.Namespace):
    """(clip model, tokenizer, image size, description) from a tag/file or a checkpoint."""
    from calmcap.config import ClipConfig
    from calmcap.models.encoders import build_clip, clip_arch_config, clip_text_tokenizer

    if args.model:
        from calmcap.models.calm import CALMModel

        model = CALMModel.from_pretrained(args.model)
        tokenizer = clip_text_tokenizer(model.config.clip.arch)
        return model.clip, tokenizer, model.config.image_size, f"checkpoint {args.model}"
    image_size = int(clip_arch_config(args.arch)["vision_cfg"]["image_size"])
    pretrained = None if args.pretrained.lower() in ("none", "null", "") else args.pretrained
    clip = build_clip(ClipConfig(arch=args.arch, pretrained=pretrained), image_size)
    return clip, clip_text_tokenizer(args.arch), image_size, f"{args.arch} / {args.pretrained}"


def write_report(results: dict, out: Path, description: str) -> None:
    from calmcap.zeroshot import ATTRIBUTES

    splits = list(results["splits"])
    lines = [f"# Zero-shot figures: {description}", "",
             "Accuracy (%) of the class whose prompts score highest; chance = 1 / number of classes.", "",
             "| split | videos | " + " | ".join(f"{a} (chance)" for a in ATTRIBUTES)
             + " | all five | t2v R@1 | t2v R@5 | v2t R@1 |",
             "|---|---:|" + "---:|" * (len(ATTRIBUTES) + 4)]
    for split in splits:
        r = results["splits"][split]
        cells = [f"{r['accuracy'][a]:.1f} ({r['chance'][a]:.1f})" for a in ATTRIBUTES]
        ret = r["retrieval"]
        lines.append(f"| {split} | {r['num_videos']} | " + " | ".join(cells)
                     + f" | {r['all_correct']:.1f} | {ret.get('t2v/R@1', float('nan')):.1f} | "
                     f"{ret.get('t2v/R@5', float('nan')):.1f} | {ret.get('v2t/R@1', float('nan')):.1f} |")
    lines += ["", f"Seconds: {results['seconds']:.1f}", ""]
    (out / "zeroshot.md").write_text("\n".join(lines), encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(ATTRIBUTES))
    for i, split in enumerate(splits):
        r = results["splits"][split]
        ax.bar(x + i * width, [r["accuracy"][a] for a in ATTRIBUTES], width, label=split)
    first = results["splits"][splits[0]]
    ax.scatter(x + width * (len(splits) - 1) / 2, [first["chance"][a] for a in ATTRIBUTES], color="black",
               marker="_", s=400, label="chance", zorder=3)
    ax.set_xticks(x + width * (len(splits) - 1) / 2, ATTRIBUTES)
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(description, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "zeroshot.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from calmcap.data.dataset import VideoCaptionDataset, VideoSource
    from calmcap.data.manifest import manifest_file, read_manifest
    from calmcap.zeroshot import ATTRIBUTES, zero_shot

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = manifest_file(args.data)
    cache = args.frame_cache or (str(manifest.parent / "cache") if (manifest.parent / "cache").is_dir() else None)
    clip, tokenize, image_size, description = load_towers(args)
    start = time.perf_counter()
    results: dict = {"towers": description, "num_frames": args.num_frames, "splits": {}}
    for split in args.split or ["test", "test_ood"]:
        entries = read_manifest(manifest, split)[: args.max_videos]
        dataset = VideoCaptionDataset(manifest, split, args.num_frames, image_size, mode="videos",
                                      source=VideoSource(frame_cache=cache), entries=entries)
        result = zero_shot(clip, tokenize, dataset)
        row = result.to_json()
        results["splits"][split] = row
        print(f"{split}: " + ", ".join(f"{a} {result.accuracy[a]:.1f}% (chance {result.chance[a]:.1f})"
                                       for a in ATTRIBUTES)
              + f"; t2v R@1 {result.retrieval.get('t2v/R@1', float('nan')):.1f}")
    results["seconds"] = time.perf_counter() - start
    (out / "zeroshot.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_report(results, out, description)
    print(f"wrote {out / 'zeroshot.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
