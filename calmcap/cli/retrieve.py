"""``calmcap retrieve``: text-to-video search in an index, or the sentences of a file ranked for one video."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from calmcap.cli.options import add_model_options, positive_int
from calmcap.cli.output import out
from calmcap.errors import CalmcapError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "retrieve", help="text-to-video search in an index, or rank sentences for a video", add_arguments=_arguments,
        description="Text-to-video: the top-k videos of an index for each --query. "
                    "Video-to-text: --videos-to-text VIDEO --sentences FILE ranks the file's lines.",
        epilog="examples:\n"
               "  calmcap retrieve --model runs/synth_tiny/model --index index/synth_test "
               "--query 'a red circle moves left'\n"
               "  calmcap retrieve --model runs/synth_tiny/model --videos-to-text clip.mp4 --sentences sentences.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--index", metavar="INDEX", help="index folder made by `calmcap index`")
    parser.add_argument("--query", action="append", metavar="TEXT", help="query text (repeatable)")
    parser.add_argument("--videos-to-text", metavar="VIDEO", help="rank --sentences for this video instead")
    parser.add_argument("--sentences", metavar="FILE", help="candidate sentences, one per line")
    parser.add_argument("--top-k", type=positive_int, default=10, metavar="K",
                        help="results per query (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _read_sentences(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CalmcapError(f"{path}: cannot read sentences ({error.strerror or error})") from None
    sentences = [line.strip() for line in text.splitlines() if line.strip()]
    if not sentences:
        raise CalmcapError(f"{path}: no sentences (one per line)")
    return sentences


def run(args: argparse.Namespace) -> int:
    from calmcap.pipeline import rank_sentences, search_index

    if args.videos_to_text:
        if not args.sentences:
            raise CalmcapError("--videos-to-text VIDEO needs --sentences FILE (one sentence per line)")
        ranked = rank_sentences(args.videos_to_text, _read_sentences(args.sentences), args.model,
                                top_k=args.top_k, device=args.device)
        if args.json:
            results = [{"rank": i + 1, "sentence": s, "score": score} for i, (s, score) in enumerate(ranked)]
            out(json.dumps({"video": args.videos_to_text, "results": results}, indent=2, ensure_ascii=False))
        else:
            for i, (sentence, score) in enumerate(ranked):
                out(f"{i + 1:>4}  {score:.4f}  {sentence}")
        return 0
    if not args.index or not args.query:
        raise CalmcapError("retrieve needs --index INDEX --query TEXT (text-to-video) "
                           "or --videos-to-text VIDEO --sentences FILE")
    hits = search_index(args.index, list(args.query), args.model, top_k=args.top_k, device=args.device)
    if args.json:
        per_query = [{"query": q, "results": [h.to_json() for h in hs]} for q, hs in zip(args.query, hits, strict=True)]
        out(json.dumps(per_query, indent=2, ensure_ascii=False))
        return 0
    for n, (query, results) in enumerate(zip(args.query, hits, strict=True)):
        if len(args.query) > 1:
            out(("\n" if n else "") + f"query: {query}")
        for hit in results:
            out(f"{hit.rank:>4}  {hit.score:.4f}  {hit.video}")
    return 0
