"""The data subcommands of the ``calmcap`` CLI: ``synth``, ``prepare``, ``check``, ``cache``.

Argument parsing and the summaries printed for the user live here, with the CLI; the work is
done by the library modules (:mod:`calmcap.data.synth`, :mod:`calmcap.data.converters`,
:mod:`calmcap.data.preparation`), which only log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from calmcap.data.converters.activitynet import PROTOCOLS as ANET_PROTOCOLS, TEST_FILES
from calmcap.data.converters.didemo import PROTOCOLS as DIDEMO_PROTOCOLS
from calmcap.data.converters.msrvtt import PROTOCOLS as MSRVTT_PROTOCOLS, TEST_CAPTIONS
from calmcap.data.converters.msvd import DEFAULT_SPLIT_SIZES
from calmcap.data.converters.prepare import CONVERTERS, prepare
from calmcap.data.preparation import (
    DEFAULT_CHECK_FRAMES,
    DEFAULT_MAX_FRAMES,
    FEATURES,
    FRAMES,
    PROGRESS_FILE,
    cache_features,
    cache_frames,
    check_videos,
    default_check_dir,
    load_feature_model,
)
from calmcap.data.synth import (
    CAPTIONS_PER_VIDEO,
    DEFAULT_FPS,
    DEFAULT_NUM_FRAMES,
    DEFAULT_NUM_TEST,
    DEFAULT_NUM_TEST_OOD,
    DEFAULT_NUM_TEST_OOD_TEXT,
    DEFAULT_NUM_TEST_OOD_VISUAL,
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SIZE,
    SPLIT_DOMAINS,
    SPLITS,
    generate_benchmark,
)
from calmcap.data.pretrain_corpus import (
    DEFAULT_NUM_VAL as PRETRAIN_NUM_VAL,
    DEFAULT_NUM_VIDEOS as PRETRAIN_NUM_VIDEOS,
    generate_pretrain_corpus,
)


# --- synth --------------------------------------------------------------------------------

def build_synth_parser() -> argparse.ArgumentParser:
    """The ``calmcap synth`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="calmcap synth",
        description="Render the embedded shapes-and-actions video-caption benchmark (no download needed).",
    )
    parser.add_argument("out_dir", help="output folder (manifest.jsonl, videos/, concepts.txt, benchmark.json)")
    parser.add_argument("--corpus", choices=("benchmark", "pretrain"), default="benchmark",
                        help="benchmark: the train/val/test/test_ood/test_ood_visual/test_ood_text splits (default); pretrain: the pretraining "
                             "corpus of the same world (splits pretrain, pretrain_val; docs/BENCHMARK_SYNTH.md)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN, help="train videos (default: %(default)s)")
    parser.add_argument("--num-videos", type=int, default=PRETRAIN_NUM_VIDEOS,
                        help="--corpus pretrain: pretraining videos (default: %(default)s)")
    parser.add_argument("--num-val", type=int, default=None,
                        help=f"val videos (default: {DEFAULT_NUM_VAL}; {PRETRAIN_NUM_VAL} for --corpus pretrain)")
    parser.add_argument("--num-test", type=int, default=DEFAULT_NUM_TEST, help="in-domain test videos (default: %(default)s)")
    parser.add_argument("--num-test-ood", type=int, default=DEFAULT_NUM_TEST_OOD,
                        help="out-of-domain test videos (default: %(default)s)")
    parser.add_argument("--num-test-ood-visual", type=int, default=DEFAULT_NUM_TEST_OOD_VISUAL,
                        help="test videos with domain B rendering and domain A wording (default: %(default)s)")
    parser.add_argument("--num-test-ood-text", type=int, default=DEFAULT_NUM_TEST_OOD_TEXT,
                        help="test videos with domain A rendering and domain B wording (default: %(default)s)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_NUM_FRAMES, help="frames per video (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="frame side in pixels (default: %(default)s)")
    parser.add_argument("--captions-per-video", type=int, default=CAPTIONS_PER_VIDEO,
                        help="paraphrases per video (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes; 0 renders in this process (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a benchmark already in OUT_DIR")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def synth_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``calmcap synth``; prints a summary and returns the exit status."""
    args = build_synth_parser().parse_args(argv)
    if args.corpus == "pretrain":
        return _pretrain_corpus_main(args)
    if args.num_val is None:
        args.num_val = DEFAULT_NUM_VAL
    summary = generate_benchmark(
        args.out_dir, seed=args.seed, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
        num_test_ood=args.num_test_ood, num_test_ood_visual=args.num_test_ood_visual,
        num_test_ood_text=args.num_test_ood_text, num_frames_per_video=args.num_frames, fps=args.fps, size=args.size,
        captions_per_video=args.captions_per_video, workers=args.workers, progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    total = sum(summary["num_videos"].values())
    print(f"wrote {total} videos to {summary['out_dir']} in {summary['seconds']:.1f} s")
    print(f"{'split':<15} {'pixels':<6} {'words':<5} {'videos':>6} {'chance t2v R@1':>15} {'ceiling t2v R@1':>16} "
          f"{'ceiling v2t R@1':>16}")
    for split in SPLITS:
        n = summary["num_videos"][split]
        if n == 0:
            continue
        rendering, wording = SPLIT_DOMAINS[split]
        print(f"{split:<15} {rendering:<6} {wording:<5} {n:>6} {summary['chance'][split]['t2v/R@1']:>15.4f} "
              f"{summary['ceiling'][split]['t2v/R@1']:>16.4f} {summary['ceiling'][split]['v2t/R@1']:>16.4f}")
    print(f"manifest: {summary['manifest']}")
    return 0


def _pretrain_corpus_main(args: argparse.Namespace) -> int:
    summary = generate_pretrain_corpus(
        args.out_dir, seed=args.seed, num_videos=args.num_videos,
        num_val=PRETRAIN_NUM_VAL if args.num_val is None else args.num_val, num_frames_per_video=args.num_frames,
        fps=args.fps, size=args.size, captions_per_video=args.captions_per_video, workers=args.workers,
        progress=not args.no_progress, overwrite=args.overwrite,
    )
    total = sum(summary["num_videos"].values())
    print(f"wrote a pretraining corpus of {total} videos to {summary['out_dir']} in {summary['seconds']:.1f} s")
    for split, n in summary["num_videos"].items():
        print(f"  {split:<13} {n:>7} videos {summary['num_captions'][split]:>8} captions")
    print("  caption kinds: " + ", ".join(f"{k} {v}" for k, v in summary["caption_kinds"].items()))
    print(f"manifest: {summary['manifest']}")
    return 0


# --- prepare ------------------------------------------------------------------------------

def _add_dataset_arguments(name: str, parser: argparse.ArgumentParser) -> list[str]:
    """Add ``name``'s converter options; return their dests (= the converter's keyword names)."""
    add = parser.add_argument
    if name == "msrvtt":
        actions = [
            add("--protocol", choices=MSRVTT_PROTOCOLS, default="retrieval-9k"),
            add("--train-csv", help="MSRVTT_train.9k.csv / MSRVTT_train.7k.csv (default: derived)"),
            add("--test-csv", help="MSRVTT_JSFUSION_test.csv (1k-A; needed for retrieval)"),
            add("--test-captions", choices=TEST_CAPTIONS, default="jsfusion",
                help="retrieval test: the one 1k-A sentence (default) or all references"),
        ]
    elif name == "msvd":
        actions = [add("--split-sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                       default=list(DEFAULT_SPLIT_SIZES), help="consecutive vid-index counts (default 1200 100 670)")]
    elif name == "didemo":
        actions = [add("--protocol", choices=DIDEMO_PROTOCOLS, default="paragraph")]
    elif name == "activitynet":
        actions = [
            add("--protocol", choices=ANET_PROTOCOLS, default="paragraph"),
            add("--test-file", choices=TEST_FILES, default="val_1",
                help="validation file used as the test split (default val_1, as peers)"),
        ]
    elif name == "generic":
        actions = [
            add("--video-column", default="video"),
            add("--caption-column", default="caption"),
            add("--video-id-column"),
            add("--split-column"),
            add("--default-split", default="train"),
            add("--start-column"),
            add("--end-column"),
            add("--records-key", help="JSON: the top-level key that holds the list of records"),
        ]
    else:
        actions = []
    return [action.dest for action in actions]


_DESCRIPTIONS = {
    "msrvtt": "MSR-VTT: MSRVTT_data.json (or *_videodatainfo.json); videos videoNNNN.mp4",
    "msvd": "MSVD: AllVideoDescriptions.txt and youtube_mapping.txt; videos <clip>.avi",
    "didemo": "DiDeMo: train_data.json val_data.json test_data.json",
    "lsmdc": "LSMDC 2016: LSMDC16_annos_training.csv LSMDC16_annos_val.csv LSMDC16_challenge_1000_publictect.csv",
    "activitynet": "ActivityNet Captions: train.json val_1.json val_2.json",
    "generic": "any CSV/TSV/JSON/JSONL caption table",
}


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``prepare`` on a CLI's subparsers; the parsed namespace's ``func(args)`` runs it."""
    parser = subparsers.add_parser(
        "prepare", help="convert a benchmark's annotation files into a manifest",
        description="Convert a benchmark's official annotation files into a calmcap manifest "
                    "(plus MANIFEST.protocol.json recording the protocol).",
    )
    datasets = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name in CONVERTERS:
        sub = datasets.add_parser(name, help=_DESCRIPTIONS[name], description=_DESCRIPTIONS[name])
        sub.add_argument("--annotations", nargs="+", required=True, metavar="PATH",
                         help="annotation files; SPLIT=PATH names a file's split explicitly")
        sub.add_argument("--videos", required=True, metavar="DIR", help="directory holding the video files")
        sub.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (JSON lines)")
        sub.add_argument("--strict", action="store_true", help="fail if any video file is missing")
        option_names = _add_dataset_arguments(name, sub)
        sub.set_defaults(func=run_prepare, prepare_options=tuple(option_names))
    return parser


def run_prepare(args: argparse.Namespace) -> int:
    """Run a parsed ``prepare`` command and print its summary; CalmcapError propagates to the CLI."""
    options = {name: getattr(args, name) for name in args.prepare_options if getattr(args, name) is not None}
    report = prepare(args.dataset, args.annotations, args.videos, args.out, strict=args.strict, **options)
    print(f"{report.dataset} ({report.protocol}) -> {report.manifest_path}")
    for split, counts in report.splits.items():
        print(f"  {split}: {counts['videos']} videos, {counts['captions']} captions")
    if report.missing_videos:
        print(f"  missing videos: {len(report.missing_videos)} (listed in {report.protocol_path})", file=sys.stderr)
    print(f"protocol: {report.protocol_path}")
    return 0


def prepare_main(argv: list[str] | None = None) -> int:
    """Entry point for ``prepare <dataset> --annotations PATH... --videos DIR --out MANIFEST ...``.

    ``argv`` is what follows ``prepare`` (a leading ``prepare`` is accepted too); errors in the
    input raise :class:`~calmcap.errors.CalmcapError` for the top-level CLI to report.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="calmcap")
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _print_bad(bad: list[dict[str, str]], path: Path, limit: int = 10) -> None:
    if not bad:
        return
    print(f"{len(bad)} bad video(s), listed in {path}:")
    for record in bad[:limit]:
        print(f"  {record['video_id']}  {record['video']}: {record['reason']}")
    if len(bad) > limit:
        print(f"  ... and {len(bad) - limit} more")


def build_check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calmcap check",
        description="Open every video of a manifest (probe + decode a few frames) and list the bad ones. "
                    "Resumable: a re-run skips the videos already checked.",
    )
    parser.add_argument("manifest", help="manifest (JSON lines)")
    parser.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                        help="only this split (repeatable; default: every split)")
    parser.add_argument("--workers", type=int, default=2, help="decoder processes; 0 runs in this process (default: %(default)s)")
    parser.add_argument("--out", default=None, help="output folder (default: <manifest dir>/check-<manifest stem>)")
    parser.add_argument("--backend", choices=("auto", "decord", "pyav"), default="auto", help="decoder (default: %(default)s)")
    parser.add_argument("--num-frames", type=int, default=DEFAULT_CHECK_FRAMES,
                        help="frames decoded per video (default: %(default)s)")
    parser.add_argument("--restart", action="store_true", help="forget earlier progress and check every video again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_main(argv: Sequence[str] | None = None) -> int:
    """``calmcap check``: exit status 0 when every video is good, 1 when some are bad."""
    args = build_check_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_check_dir(args.manifest)
    if args.restart:
        (out / PROGRESS_FILE).unlink(missing_ok=True)
    report = check_videos(args.manifest, splits=args.splits, workers=args.workers, out=out,
                          progress=not args.no_progress, backend=args.backend, num_frames=args.num_frames)
    rate = report.summary.get("videos_per_second")
    print(f"checked {report.num_videos} videos ({report.num_checked} now, {report.num_resumed} from earlier runs) "
          f"in {report.seconds:.1f} s" + (f" ({rate:.1f} videos/s)" if rate else ""))
    print(f"good: {report.num_ok}  bad: {report.num_bad}  clip hours: {report.summary['total_clip_hours']:.2f}")
    for reason, count in report.summary["bad_reasons"].items():
        print(f"  {count:>6}  {reason}")
    _print_bad(report.bad, report.bad_videos_path)
    if report.summary.get("num_warnings"):
        print(f"{report.summary['num_warnings']} warning(s) (clips starting after the video ends) in {report.summary_path}")
    print(f"summary: {report.summary_path}")
    return 1 if report.bad else 0


def build_cache_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calmcap cache",
        description="Cache decoded, resized frames (uint8) and optionally a frozen image tower's features "
                    "(float16) so training skips decoding. Resumable: existing files are kept.",
    )
    parser.add_argument("manifest", help="manifest (JSON lines)")
    parser.add_argument("--cache-dir", required=True, help="cache folder (frames/ and features/ go inside)")
    parser.add_argument("--split", action="append", dest="splits", metavar="SPLIT",
                        help="only this split (repeatable; default: every split)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="frame side S (default: the model's image size with --model, else 224)")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                        help="at most this many frames per clip, sampled uniformly (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="decoder processes; 0 runs in this process (default: %(default)s)")
    parser.add_argument("--backend", choices=("auto", "decord", "pyav"), default="auto", help="decoder (default: %(default)s)")
    parser.add_argument("--features", action="store_true", help="also cache the image tower's frame features")
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, or a registered model name with pretrained CLIP weights (for --features)")
    parser.add_argument("--no-frames", action="store_true",
                        help="with --features: do not keep a frames cache (decode straight into features)")
    parser.add_argument("--batch-size", type=int, default=256, help="frames per tower forward (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="device for the tower (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild a cache made with other settings or another tower")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def cache_main(argv: Sequence[str] | None = None) -> int:
    """``calmcap cache``: exit status 0 (bad videos are listed, not fatal)."""
    parser = build_cache_parser()
    args = parser.parse_args(argv)
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
        print(f"frames: {frames.num_cached}/{frames.num_videos} videos cached at {image_size}px "
              f"({frames.num_written} new, {frames.num_skipped} kept) in {frames.seconds:.1f} s -> {Path(args.cache_dir) / FRAMES}")
        _print_bad(frames.bad, frames.bad_videos_path)
    if model is not None:
        features = cache_features(model, args.manifest, args.cache_dir, splits=args.splits, batch_size=args.batch_size,
                                  progress=progress, max_frames=args.max_frames, workers=args.workers if args.no_frames else 0,
                                  backend=args.backend, overwrite=args.overwrite)
        tower = features.meta["tower"]
        print(f"features: {features.num_cached}/{features.num_videos} videos ({features.num_written} new, "
              f"{features.num_skipped} kept) in {features.seconds:.1f} s, D={features.meta.get('embed_dim')}, "
              f"tower {tower['arch']} ({tower['fingerprint'][:19]}...) -> {Path(args.cache_dir) / FEATURES}")
        _print_bad(features.bad, features.bad_videos_path)
    return 0
