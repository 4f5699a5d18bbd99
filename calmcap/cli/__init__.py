"""The ``calmcap`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

Subcommands: ``models``, ``synth``, ``prepare``, ``check``, ``cache`` (data), ``caption``,
``evaluate``, ``score``, ``index``, ``retrieve``, ``explain`` (models at work; each is a thin
wrapper over :mod:`calmcap.pipeline`), ``serve`` (the same over HTTP, :mod:`calmcap.serve`).
docs/CLI.md shows each with an example.

The CLI sits on top of everything and nothing imports it. It starts fast: building the parser
imports no subcommand's dependencies (a subcommand's arguments are added when it is chosen, see
:class:`LazyArgumentParser`, and its ``run`` imports what it uses), so ``calmcap --help`` and
argument errors answer instantly. Errors meant for users (:class:`CalmcapError`) are printed as
one line ``calmcap: error: ...`` with exit status 2 (as argparse's usage errors); ``--debug``
shows the traceback. Commands that process many videos list the bad ones on stderr as
``path: reason``, finish the others, and exit with status 1. The program (:func:`entry`) ends
without tearing down the modules it imported (see :func:`leave`).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from calmcap.cli import (
    cache,
    caption,
    check,
    evaluate,
    explain,
    index,
    models,
    prepare,
    retrieve,
    score,
    serve,
    synth,
)
from calmcap.errors import CalmcapError
from calmcap.version import __version__

EXIT_USER_ERROR = 2

# In the order `calmcap --help` lists them.
SUBCOMMANDS = (models, synth, prepare, check, cache, caption, evaluate, score, index, retrieve, explain, serve)


class LazyArgumentParser(argparse.ArgumentParser):
    """A subcommand's parser whose arguments are added the first time it parses or shows help.

    ``add_arguments(parser)`` (a keyword of ``subparsers.add_parser``) adds them. Building the
    whole ``calmcap`` parser then imports nothing a subcommand needs for its defaults (the
    generator's sizes, the converters' protocols): only the chosen subcommand does.
    """

    def __init__(self, *args: Any, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    """The ``calmcap`` parser: each subcommand's parser sets ``run`` (its module's :func:`run`)."""
    parser = argparse.ArgumentParser(
        prog="calmcap",
        description="Video captioning and text-video retrieval with class-anchor-aligned generative modeling (CALM).",
    )
    parser.add_argument("--version", action="version", version=f"calmcap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=LazyArgumentParser)
    for command in SUBCOMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``calmcap`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
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
        return int(args.run(args) or 0)
    except CalmcapError as error:
        if args.debug:
            raise
        print(f"calmcap: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("calmcap: interrupted", file=sys.stderr)
        return 130


def leave(code: int) -> None:
    """End the process with ``code`` now, skipping the interpreter's teardown of its modules.

    Once torch, open_clip and transformers are imported, Python's exit spends 1.2-1.3 s on 2
    cores freeing their modules one object at a time (issue #13, BENCHMARKS.md "Cold start"),
    after the command's work is done. The program leaves as a normal exit would, minus that: the
    ``atexit`` handlers run (logging's flush, temporary directories' finalizers), stdout and
    stderr are flushed, then ``os._exit``. A process still running other non-daemon threads, or
    one that imported no torch (nothing to gain), exits normally: this returns.
    """
    if "torch" not in sys.modules or not hasattr(atexit, "_run_exitfuncs"):
        return
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()  # what interpreter shutdown would run; the teardown after it is what we skip
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (calmcap ... | head): nothing more to deliver
            code = code or 1
    os._exit(code)


def entry() -> int:
    """The ``calmcap`` program (console script and ``python -m calmcap.cli``): :func:`main`, then :func:`leave`."""
    code = main()
    leave(code)
    return code


__all__ = ["LazyArgumentParser", "build_parser", "entry", "leave", "main"]
