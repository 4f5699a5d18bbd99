"""Arguments several subcommands share: the model, the decoding settings, a positive integer.

The decoding options' defaults and help come from :class:`calmcap.config.DecodeOptions`, the
one definition of the settings.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.pipeline import CaptionOptions


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model DIR`` and ``--device``."""
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="checkpoint directory (default: $CALMCAP_MODEL, else runs/synth_tiny/model)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")


def add_decoding_options(parser: argparse.ArgumentParser, sampling: bool = True) -> None:
    """The beam-search settings (unset: the checkpoint's, else the built-in) and, with ``sampling``,
    nucleus sampling."""
    from calmcap.config import DecodeOptions

    builtin = DecodeOptions()
    group = parser.add_argument_group("decoding")
    # Unset beam settings take the checkpoint's own (what its training validated with), else the built-in.
    group.add_argument("--num-beams", type=int, default=None, metavar="N",
                       help=f"beam size (default: the checkpoint's, else {builtin.num_beams})")
    group.add_argument("--max-length", type=int, default=None, metavar="N",
                       help=f"at most N tokens (default: the checkpoint's, else {builtin.max_length})")
    group.add_argument("--min-length", type=int, default=None, metavar="N",
                       help=f"at least N tokens (default: the checkpoint's, else {builtin.min_length})")
    group.add_argument("--length-penalty", type=float, default=None, metavar="X",
                       help=f"beam score = log p / length^X (default: the checkpoint's, else {builtin.length_penalty})")
    group.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                       help="forbid repeating any n-gram of this size "
                            f"(0: off; default: the checkpoint's, else {builtin.no_repeat_ngram_size})")
    if sampling:
        group.add_argument("--sample", action="store_true", help="nucleus sampling instead of beam search")
        group.add_argument("--top-p", type=float, default=builtin.top_p, metavar="P",
                           help="nucleus mass with --sample (default: %(default)s)")
        group.add_argument("--temperature", type=float, default=builtin.temperature, metavar="T",
                           help="with --sample (default: %(default)s)")
        group.add_argument("--seed", type=int, default=0, help="random seed for --sample (default: %(default)s)")
        group.add_argument("--num-return-sequences", type=int, default=builtin.num_return_sequences, metavar="N",
                           help="keep the N best beams (or N samples) per video (default: %(default)s)")


def caption_options(args: argparse.Namespace) -> CaptionOptions:
    """The decoding options of a parsed command line, checked as far as they go without the checkpoint."""
    from calmcap.pipeline import CaptionOptions

    sampling = {}
    if hasattr(args, "sample"):
        sampling = dict(do_sample=args.sample, top_p=args.top_p, temperature=args.temperature,
                        num_return_sequences=args.num_return_sequences)
    return CaptionOptions(
        num_beams=args.num_beams, max_length=args.max_length, min_length=args.min_length,
        length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size, **sampling,
    ).validate()
