"""Evaluate one checkpoint on several benchmarks and splits: one cross-domain table.

    python eval/run_benchmarks.py --model runs/synth_tiny/model --out reports/synth_tiny
    python eval/run_benchmarks.py --model runs/msrvtt_vitb32/model --suite msrvtt --suite msvd --suite didemo \\
        --out reports/msrvtt_vitb32
    python eval/run_benchmarks.py --model M --bench mine=data/mine/manifest.jsonl:test,hard --out reports/m

Benchmarks are named (``--suite``, see SUITES below: the manifest paths the recipes and
``calmcap prepare`` examples use) or given inline (``--bench NAME=MANIFEST:SPLIT[,SPLIT]``).
Users bring the public datasets, so a suite whose manifest is missing is skipped with a note,
not an error (unless nothing at all is left). Each (manifest, split) is a row of the table;
rows of a model's training data are in-domain, the others out-of-domain, the way the paper's
out-of-domain tables read (e.g. train on MSR-VTT, test on DiDeMo and MSVD).

The work is :func:`calmcap.pipeline.evaluate_checkpoint`; the output folder gets the same
files as ``calmcap evaluate`` (report.json, report.md, predictions, plots). The default suite
is the embedded benchmark: ``test`` (in-domain) and ``test_ood`` (shifted backgrounds,
palettes and caption wording).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calmcap.errors import CalmcapError  # noqa: E402

# name -> (manifest, splits): where the recipes and the README's prepare commands put them.
SUITES: dict[str, tuple[str, list[str]]] = {
    "synth": ("data/synth/manifest.jsonl", ["test", "test_ood"]),
    "msrvtt": ("data/msrvtt/manifest.jsonl", ["test"]),  # captioning protocol, 2,990 test videos
    "msrvtt_9k": ("data/msrvtt_9k/manifest.jsonl", ["test"]),  # retrieval, the 1k-A test
    "msvd": ("data/msvd/manifest.jsonl", ["test"]),
    "didemo": ("data/didemo/manifest.jsonl", ["test"]),
    "lsmdc": ("data/lsmdc/manifest.jsonl", ["test"]),
    "activitynet": ("data/activitynet/manifest.jsonl", ["val"]),
}


def parse_bench(text: str) -> tuple[str, str, list[str]]:
    """``NAME=MANIFEST:SPLIT[,SPLIT]`` -> (name, manifest, splits)."""
    name, sep, rest = text.partition("=")
    manifest, sep2, splits = rest.rpartition(":")
    if not sep or not sep2 or not name or not manifest or not splits:
        raise argparse.ArgumentTypeError(f"expected NAME=MANIFEST:SPLIT[,SPLIT], got {text!r}")
    return name, manifest, [s for s in splits.split(",") if s]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="suites: " + ", ".join(SUITES))
    parser.add_argument("--model", default=None,
                        help="checkpoint directory (default: $CALMCAP_MODEL or runs/synth_tiny/model)")
    parser.add_argument("--suite", action="append", choices=sorted(SUITES),
                        help="named benchmark (repeatable; default: synth)")
    parser.add_argument("--bench", action="append", type=parse_bench, default=[], metavar="NAME=MANIFEST:SPLITS",
                        help="an inline benchmark (repeatable)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--num-beams", type=int, default=None, help="default: the checkpoint's, else 3")
    parser.add_argument("--max-length", type=int, default=None, help="default: the checkpoint's, else 20")
    parser.add_argument("--max-videos", type=int, default=None, help="first N videos of each split (quick runs)")
    parser.add_argument("--task", choices=("all", "caption", "retrieval"), default="all")
    parser.add_argument("--no-java", action="store_true", help="Python tokenizer, no METEOR")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("calmcap").setLevel(logging.INFO)

    from calmcap.pipeline import CaptionOptions, evaluate_checkpoint

    wanted = [(name, *SUITES[name]) for name in (args.suite or ([] if args.bench else ["synth"]))] + list(args.bench)
    present, skipped = [], []
    for name, manifest, splits in wanted:
        path = Path(manifest)
        if path.is_file() or (path / "manifest.jsonl").is_file():
            present.append((manifest, splits, name))
        else:
            skipped.append(f"{name} ({manifest} not found)")
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    try:
        if not present:
            raise CalmcapError("no benchmark manifest found; "
                               "prepare one (`calmcap synth data/synth`, `calmcap prepare ...`)")
        report = evaluate_checkpoint(
            args.model, present, out=None, batch_size=args.batch_size, num_workers=args.num_workers,
            decode=CaptionOptions(num_beams=args.num_beams, max_length=args.max_length),
            captioning=args.task in ("all", "caption"), retrieval=args.task in ("all", "retrieval"),
            use_java=False if args.no_java else None, max_videos=args.max_videos, device=args.device, progress=True,
        )
    except CalmcapError as error:
        print(f"run_benchmarks: error: {error}", file=sys.stderr)
        return 2
    report.settings["skipped_benchmarks"] = skipped
    report.write(args.out)
    print(report.summary_table(markdown=True))
    print(f"\nreport: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
