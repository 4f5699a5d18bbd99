"""The ``calmcap`` command line.

Subcommands: ``models``, ``synth``, ``prepare``, ``check``, ``cache`` (data), ``caption``,
``evaluate``, ``score``, ``index``, ``retrieve``, ``explain`` (models at work; each is a thin
wrapper over :mod:`calmcap.pipeline`). docs/CLI.md shows each with an example.

Every subcommand imports its heavy dependencies inside its handler, so ``calmcap --help`` and
argument errors answer instantly. Errors meant for users (:class:`CalmcapError`) are printed
as one line ``calmcap: error: ...`` with exit status 2 (as argparse's usage errors);
``--debug`` shows the traceback. Commands that process many videos list the bad ones on
stderr as ``path: reason``, finish the others, and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from calmcap import __version__
from calmcap.errors import CalmcapError

EXIT_USER_ERROR = 2
EXIT_SOME_FAILED = 1


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _out(message: str = "") -> None:
    print(message, flush=True)


# ============================================================================ models


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


# Subcommands whose own module parses the arguments (``calmcap check ...`` = ``check_main([...])``).
FORWARDED: dict[str, tuple[str, str, str]] = {
    "synth": ("calmcap.data.synth", "main", "generate the embedded benchmark (rendered H.264 videos + manifest)"),
    "check": ("calmcap.data.preparation", "check_main", "open every video of a manifest and list the bad ones"),
    "cache": ("calmcap.data.preparation", "cache_main", "cache decoded frames (and tower features) for training"),
}


def _forward(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A handler that hands the raw arguments to another module's ``main(argv)``."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args.rest) or 0)

    return run


# ============================================================================ shared options


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="checkpoint directory (default: $CALMCAP_MODEL, else runs/synth_tiny/model)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")


def _add_decoding(parser: argparse.ArgumentParser, sampling: bool = True) -> None:
    group = parser.add_argument_group("decoding")
    # Unset beam settings take the checkpoint's own (what its training validated with), else these.
    group.add_argument("--num-beams", type=int, default=None, metavar="N",
                       help="beam size (default: the checkpoint's, else 3)")
    group.add_argument("--max-length", type=int, default=None, metavar="N",
                       help="at most N tokens (default: the checkpoint's, else 20; the embedded benchmark's model: 40)")
    group.add_argument("--min-length", type=int, default=None, metavar="N",
                       help="at least N tokens (default: the checkpoint's, else 0)")
    group.add_argument("--length-penalty", type=float, default=None, metavar="X",
                       help="beam score = log p / length^X (default: the checkpoint's, else 1.0)")
    group.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                       help="forbid repeating any n-gram of this size (0: off; default: the checkpoint's, else 0)")
    if sampling:
        group.add_argument("--sample", action="store_true", help="nucleus sampling instead of beam search")
        group.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus mass with --sample (default: %(default)s)")
        group.add_argument("--temperature", type=float, default=1.0, metavar="T", help="with --sample (default: %(default)s)")
        group.add_argument("--seed", type=int, default=0, help="random seed for --sample (default: %(default)s)")
        group.add_argument("--num-return-sequences", type=int, default=1, metavar="N",
                           help="keep the N best beams (or N samples) per video (default: %(default)s)")


def _caption_options(args: argparse.Namespace):
    from calmcap.pipeline import CaptionOptions

    return CaptionOptions(
        num_beams=args.num_beams, max_length=args.max_length, min_length=args.min_length,
        length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        do_sample=getattr(args, "sample", False), top_p=getattr(args, "top_p", 1.0),
        temperature=getattr(args, "temperature", 1.0), num_return_sequences=getattr(args, "num_return_sequences", 1),
    ).validate()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _report_problems(problems: list[tuple[str, str]]) -> None:
    for path, reason in problems:
        _err(f"{path}: {reason}")


# ============================================================================ caption


def _cmd_caption(args: argparse.Namespace) -> int:
    from calmcap.pipeline import PipelineStats, expand_video_inputs, iter_captions, resolve_model_path

    options = _caption_options(args)
    model = resolve_model_path(args.model)  # the "no model" error before any work
    videos, problems = expand_video_inputs(args.videos)
    _report_problems(problems)
    if not videos:
        return EXIT_SOME_FAILED
    single = len(args.videos) == 1 and len(videos) == 1 and Path(args.videos[0]).is_file()
    stats = PipelineStats()
    collected: list[dict[str, Any]] = []
    failed = len(problems)
    for result in iter_captions(videos, model, options=options, num_frames=args.num_frames, batch_size=args.batch_size,
                                device=args.device, overlap=not args.no_overlap, stats=stats,
                                seed=args.seed if options.do_sample else None):
        if not result.ok:
            failed += 1
            _err(f"{result.video}: {result.error}")
            continue
        if args.json:
            collected.append(result.to_json(beams=options.num_return_sequences > 1))
            continue
        for caption, _ in result.beams:
            _out(caption if single else f"{result.video}\t{caption}")
    if args.json:
        _out(json.dumps(collected, indent=2, ensure_ascii=False))
    if stats.videos + failed > 1:
        _err(f"captioned {stats.videos} of {stats.videos + failed} videos in {stats.wall_seconds:.1f} s: "
             f"{stats.steady_videos_per_second:.2f} videos/s after the model loaded "
             f"({stats.import_seconds + stats.load_seconds:.1f} s)" + (f"; {failed} failed" if failed else ""))
    if args.timings:
        _err("timings: " + stats.summary())
    return EXIT_SOME_FAILED if failed else 0


# ============================================================================ evaluate


class _DataAction(argparse.Action):
    """``--data M``: start a new (manifest, splits) group."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        groups = list(getattr(namespace, "data_groups", None) or [])
        groups.append((values, []))
        namespace.data_groups = groups


class _SplitAction(argparse.Action):
    """``--split S`` (or ``S1,S2``): add splits to the most recent ``--data``."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        groups = getattr(namespace, "data_groups", None)
        if not groups:
            parser.error("--split must follow the --data it belongs to")
        groups[-1][1].extend(s for s in values.split(",") if s)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from calmcap.pipeline import evaluate_checkpoint

    groups = args.data_groups or []
    if not groups:
        raise CalmcapError("evaluate needs --data MANIFEST_OR_DIR --split NAME")
    for data, splits in groups:
        if not splits:
            raise CalmcapError(f"--data {data} has no --split (e.g. --data {data} --split test)")
    options = _caption_options(args)
    report = evaluate_checkpoint(
        args.model, groups, out=args.out, batch_size=args.batch_size, num_workers=args.num_workers,
        num_frames=args.num_frames, decode=options, captioning=args.task in ("all", "caption"),
        retrieval=args.task in ("all", "retrieval"), use_java=False if args.no_java else None,
        meteor=not args.no_meteor, max_videos=args.max_videos, device=args.device,
        progress=not args.no_progress, plots=not args.no_plots,
    )
    _out(report.summary_table())
    bad = sum(len(r.bad_videos) for r in report.rows)
    if bad:
        _err(f"{bad} video(s) could not be decoded: not captioned, and ranked last in retrieval (misses); "
             "report.md lists them")
    names = sorted({p.name for p in report.files.values()}, key=lambda n: (not n.startswith("report"), n))
    _out(f"wrote {', '.join(names)} to {args.out}")
    return 0


# ============================================================================ score


def _cmd_score(args: argparse.Namespace) -> int:
    from calmcap.pipeline import score_captions
    from calmcap.reports import caption_metrics_table

    result = score_captions(args.predictions, args.references, split=args.split or None,
                            use_java=False if args.no_java else None, meteor=not args.no_meteor)
    if args.json:
        _out(json.dumps(result.to_json(), indent=2))
        return 0
    _out(caption_metrics_table(result.metrics))
    _out(f"{result.num_videos} videos, {result.num_references} reference captions; "
         f"x100; tokenizer: {result.protocol['tokenizer']}")
    return 0


# ============================================================================ index / retrieve


def _cmd_index(args: argparse.Namespace) -> int:
    from calmcap.pipeline import PipelineStats, build_index, expand_video_inputs, resolve_model_path

    model = resolve_model_path(args.model)
    videos, problems = expand_video_inputs(args.videos)
    _report_problems(problems)
    if not videos:
        return EXIT_SOME_FAILED
    stats = PipelineStats()
    report = build_index(videos, args.out, model, batch_size=args.batch_size, num_frames=args.num_frames,
                         device=args.device, overlap=not args.no_overlap, overwrite=args.overwrite,
                         progress=not args.no_progress, stats=stats)
    _report_problems(report.bad)
    rate = f", {stats.steady_videos_per_second:.2f} videos/s after loading the model" if report.added else ""
    _out(f"indexed {report.added} new video(s) ({report.skipped} already indexed, {len(report.bad) + len(problems)} failed) "
         f"in {report.seconds:.1f} s{rate}; {report.path} holds {report.total}")
    return EXIT_SOME_FAILED if report.bad or problems else 0


def _read_sentences(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CalmcapError(f"{path}: cannot read sentences ({error.strerror or error})") from None
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise CalmcapError(f"{path}: no sentences (one per line)")
    return sentences


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from calmcap.pipeline import rank_sentences, search_index

    if args.videos_to_text:
        if not args.sentences:
            raise CalmcapError("--videos-to-text VIDEO needs --sentences FILE (one sentence per line)")
        ranked = rank_sentences(args.videos_to_text, _read_sentences(args.sentences), args.model,
                                top_k=args.top_k, device=args.device)
        if args.json:
            _out(json.dumps({"video": args.videos_to_text, "results": [
                {"rank": i + 1, "sentence": s, "score": score} for i, (s, score) in enumerate(ranked)]}, indent=2, ensure_ascii=False))
        else:
            for i, (sentence, score) in enumerate(ranked):
                _out(f"{i + 1:>4}  {score:.4f}  {sentence}")
        return 0
    if not args.index or not args.query:
        raise CalmcapError("retrieve needs --index INDEX --query TEXT (text-to-video) or --videos-to-text VIDEO --sentences FILE")
    hits = search_index(args.index, list(args.query), args.model, top_k=args.top_k, device=args.device)
    if args.json:
        _out(json.dumps([{"query": q, "results": [h.to_json() for h in hs]} for q, hs in zip(args.query, hits)],
                        indent=2, ensure_ascii=False))
        return 0
    for n, (query, results) in enumerate(zip(args.query, hits)):
        if len(args.query) > 1:
            _out(("\n" if n else "") + f"query: {query}")
        for hit in results:
            _out(f"{hit.rank:>4}  {hit.score:.4f}  {hit.video}")
    return 0


# ============================================================================ explain


def _cmd_explain(args: argparse.Namespace) -> int:
    from calmcap.pipeline import explain_video

    explanation = explain_video(args.video, args.model, caption=args.caption, top_k=args.top_k, out_png=args.out,
                                num_frames=args.num_frames, device=args.device)
    if args.json:
        _out(json.dumps(explanation.to_json(), indent=2, ensure_ascii=False))
        return 0
    e = explanation
    _out(f"video: {e.video_path}")
    _out(f"caption ({e.caption_source}): {e.caption_text}")
    sections = [(f"top {len(e.video)} of {e.num_anchors} anchors of the video (V_p)", e.video)]
    if e.predicted is not None:
        sections.append(("... of the caption as the VAE predicts it from the video (S_p_hat)", e.predicted))
    sections.append((f"... of the {e.caption_source} caption (S_p)", e.caption))
    for title, values in sections:
        _out(f"\n{title}:")
        for i, (label, p) in enumerate(values):
            _out(f"  {i + 1:>3}  {100 * p:6.2f}%  {label}")
    _out(f"\nin both the video's and the caption's top {len(e.video)}: {', '.join(e.overlap) if e.overlap else '(none)'}")
    if args.out:
        _out(f"wrote {args.out}")
    return 0


# ============================================================================ parser


_EXAMPLES = {
    "caption": "examples:\n  calmcap caption clip.mp4 --model runs/synth_tiny/model\n"
               "  calmcap caption videos/ 'more/*.mp4' --json --num-return-sequences 3 > captions.json",
    "evaluate": "examples:\n  calmcap evaluate --model runs/synth_tiny/model --data data/synth --split test --split test_ood --out reports/synth\n"
                "  calmcap evaluate --model M --data data/msrvtt --split test --data data/msvd/manifest.jsonl --split test --out reports/xd",
    "score": "examples:\n  calmcap score --predictions reports/synth/predictions.json --references data/synth --split test\n"
             "  calmcap score --predictions preds.json --references captions_val2014.json --json",
    "index": "example:\n  calmcap index --model runs/synth_tiny/model data/synth/videos/test --out index/synth_test",
    "retrieve": "examples:\n  calmcap retrieve --model runs/synth_tiny/model --index index/synth_test --query 'a red circle moves left'\n"
                "  calmcap retrieve --model runs/synth_tiny/model --videos-to-text clip.mp4 --sentences sentences.txt",
    "explain": "example:\n  calmcap explain clip.mp4 --model runs/synth_tiny/model --top-k 10 --out anchors.png",
}


def _sub(sub: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help, epilog=_EXAMPLES.get(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


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

    for name, (module, function, help_text) in FORWARDED.items():
        forwarded = sub.add_parser(name, help=help_text, add_help=False)
        forwarded.add_argument("rest", nargs=argparse.REMAINDER)
        forwarded.set_defaults(func=_forward(module, function))

    from calmcap.data.converters.prepare import add_prepare_parser

    add_prepare_parser(sub)

    caption = _sub(sub, "caption", "caption videos (files, directories, globs)",
                   "Caption videos. Prints 'path<TAB>caption' per video (only the caption for a single file). "
                   "Bad videos are listed on stderr as 'path: reason'; the others are still captioned (exit status 1).")
    caption.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, directories (searched recursively) or glob patterns")
    _add_model(caption)
    caption.add_argument("--json", action="store_true", help='print a JSON array of {"video", "caption", "score"} (+ "beams")')
    caption.add_argument("--num-frames", type=_positive, default=None, metavar="T", help="frames per video (default: the model's)")
    caption.add_argument("--batch-size", type=_positive, default=4, metavar="B",
                         help="videos per forward pass; decoding of the next batch overlaps this one (default: %(default)s)")
    caption.add_argument("--no-overlap", action="store_true", help="decode in the main thread (no overlap with the model)")
    caption.add_argument("--timings", action="store_true", help="print where the time went on stderr")
    _add_decoding(caption)
    caption.set_defaults(func=_cmd_caption)

    evaluate = _sub(sub, "evaluate", "caption + retrieval metrics of a checkpoint on manifests/splits; writes reports",
                    "Evaluate a checkpoint on one or several manifest splits and write report.json, report.md, "
                    "predictions and plots to --out. Several --data/--split pairs give one cross-domain table.")
    _add_model(evaluate)
    evaluate.add_argument("--data", action=_DataAction, required=True, metavar="MANIFEST_OR_DIR",
                          help="manifest (DIR means DIR/manifest.jsonl); repeatable, each followed by its --split(s)")
    evaluate.add_argument("--split", action=_SplitAction, required=True, metavar="NAME",
                          help="split of the preceding --data (repeatable; 'a,b' for several)")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="folder for the reports")
    evaluate.add_argument("--task", choices=("all", "caption", "retrieval"), default="all", help="what to evaluate (default: %(default)s)")
    evaluate.add_argument("--batch-size", type=_positive, default=16, metavar="B", help="videos per batch (default: %(default)s)")
    evaluate.add_argument("--num-workers", type=int, default=1, metavar="N",
                          help="decoder processes (overlap with the model; 0: decode in this process; default: %(default)s)")
    evaluate.add_argument("--num-frames", type=_positive, default=None, metavar="T", help="frames per video (default: the model's)")
    evaluate.add_argument("--max-videos", type=_positive, default=None, metavar="N", help="only the first N videos of each split (quick checks)")
    evaluate.add_argument("--no-meteor", action="store_true", help="skip METEOR (saves a Java start-up)")
    evaluate.add_argument("--no-java", action="store_true", help="Python tokenizer, no METEOR (not paper-comparable)")
    evaluate.add_argument("--no-plots", action="store_true", help="no PNG plots")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_decoding(evaluate, sampling=False)
    evaluate.set_defaults(func=_cmd_evaluate, data_groups=None)

    score = _sub(sub, "score", "caption metrics of any system's predictions against references",
                 "BLEU-1..4, METEOR, ROUGE-L and CIDEr (x100, pycocoevalcap) of predictions against references.")
    score.add_argument("--predictions", required=True, metavar="JSON",
                       help='COCO-style [{"image_id", "caption"}] or {"id": "caption"}')
    score.add_argument("--references", required=True, metavar="PATH",
                       help='COCO-style annotations {"annotations": [{"image_id", "caption"}]}, {"id": [captions]}, '
                            "or a calmcap manifest (.jsonl or its folder) with --split")
    score.add_argument("--split", action="append", metavar="NAME", help="manifest split(s) to take references from")
    score.add_argument("--json", action="store_true", help="print JSON")
    score.add_argument("--no-meteor", action="store_true", help="skip METEOR")
    score.add_argument("--no-java", action="store_true", help="Python tokenizer, no METEOR (not paper-comparable)")
    score.set_defaults(func=_cmd_score)

    index = _sub(sub, "index", "embed videos into an on-disk search index (resumable)",
                 "Embed videos (normalised video vectors, float16) into an index folder. Re-running adds only videos "
                 "not yet indexed; bad videos are listed and skipped (exit status 1).")
    index.add_argument("videos", nargs="+", metavar="VIDEO", help="video files, directories or glob patterns")
    index.add_argument("--out", required=True, metavar="INDEX", help="index folder")
    _add_model(index)
    index.add_argument("--batch-size", type=_positive, default=8, metavar="B", help="videos per forward pass (default: %(default)s)")
    index.add_argument("--num-frames", type=_positive, default=None, metavar="T", help="frames per video (default: the model's)")
    index.add_argument("--overwrite", action="store_true", help="start a new index even if one exists (another model, frames)")
    index.add_argument("--no-overlap", action="store_true", help="decode in the main thread")
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(func=_cmd_index)

    retrieve = _sub(sub, "retrieve", "text-to-video search in an index, or rank sentences for a video",
                    "Text-to-video: the top-k videos of an index for each --query. "
                    "Video-to-text: --videos-to-text VIDEO --sentences FILE ranks the file's lines.")
    _add_model(retrieve)
    retrieve.add_argument("--index", metavar="INDEX", help="index folder made by `calmcap index`")
    retrieve.add_argument("--query", action="append", metavar="TEXT", help="query text (repeatable)")
    retrieve.add_argument("--videos-to-text", metavar="VIDEO", help="rank --sentences for this video instead")
    retrieve.add_argument("--sentences", metavar="FILE", help="candidate sentences, one per line")
    retrieve.add_argument("--top-k", type=_positive, default=10, metavar="K", help="results per query (default: %(default)s)")
    retrieve.add_argument("--json", action="store_true", help="print JSON")
    retrieve.set_defaults(func=_cmd_retrieve)

    explain = _sub(sub, "explain", "top class anchors of a video and of its caption (text + bar chart)",
                   "The video's anchor distribution V_p, the caption distribution the VAE predicts from it, and the "
                   "caption's own S_p (given with --caption, else generated): the paper's qualitative figure.")
    explain.add_argument("video", metavar="VIDEO")
    _add_model(explain)
    explain.add_argument("--caption", metavar="TEXT", help="caption to explain (default: the model's own)")
    explain.add_argument("--top-k", type=_positive, default=10, metavar="K", help="anchors per distribution (default: %(default)s)")
    explain.add_argument("--out", metavar="PNG", help="write the bar chart here")
    explain.add_argument("--num-frames", type=_positive, default=None, metavar="T", help="frames per video (default: the model's)")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=_cmd_explain)
    return parser


def _parse(argv: list[str]) -> argparse.Namespace:
    # A forwarded command gets every argument after its name untouched: argparse.REMAINDER
    # would not take a leading option (``calmcap check --help`` would be an error).
    position = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if position is not None and argv[position] in FORWARDED and all(arg == "--debug" for arg in argv[:position]):
        module, function, _ = FORWARDED[argv[position]]
        return argparse.Namespace(command=argv[position], debug=bool(argv[:position]), rest=argv[position + 1 :],
                                  func=_forward(module, function))
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    # Third-party libraries (open_clip logs to the root logger) speak at WARNING; ours at INFO.
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("calmcap").setLevel(logging.DEBUG if args.debug else logging.INFO)
    if not args.debug:
        # "decord failed, falling back to PyAV" is routine; the final reason of a bad video is
        # printed by the command itself.
        logging.getLogger("calmcap.data.video").setLevel(logging.WARNING)
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
