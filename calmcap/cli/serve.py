"""``calmcap serve``: the model behind a JSON API and a web page (:mod:`calmcap.serve`, on FastAPI and uvicorn)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from calmcap.cli.options import add_model_options, positive_int
from calmcap.cli.output import err
from calmcap.errors import CalmcapError


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="serve captioning, explanations and search over HTTP (JSON API + web page)",
        add_arguments=_arguments,
        description="Serve the model: a JSON API under /v1 (caption, explain, search, health, model; OpenAPI\n"
                    "at /openapi.json and /docs) and a web page at /. One model copy; concurrent requests are\n"
                    "micro-batched through it. Binds 127.0.0.1 unless --host says otherwise; SIGTERM or Ctrl-C\n"
                    "finishes the requests in flight and exits. docs/SERVE.md describes the API.",
        epilog="examples:\n  calmcap serve --model runs/synth_tiny/model --index index/synth_test\n"
               "  curl -F file=@clip.mp4 http://127.0.0.1:8000/v1/caption",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _arguments(parser: argparse.ArgumentParser) -> None:
    from calmcap.serve.settings import DEFAULT_HOST, DEFAULT_PORT, MIB, ServeSettings

    defaults = ServeSettings()
    add_model_options(parser)
    parser.add_argument("--index", metavar="DIR", help="index folder made by `calmcap index` (enables search)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to bind (default: %(default)s, this machine only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0: any free one)")
    limits = parser.add_argument_group("limits and batching")
    limits.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / MIB, metavar="MB",
                        help="largest video accepted, in MiB (default: %(default)g; larger: 413)")
    limits.add_argument("--request-timeout", type=float, default=defaults.request_timeout_seconds, metavar="SECONDS",
                        help="time limit of a request, upload to answer (default: %(default)g)")
    limits.add_argument("--queue-size", type=positive_int, default=defaults.queue_size, metavar="N",
                        help="requests admitted at once; one more gets 503 with Retry-After (default: %(default)s)")
    limits.add_argument("--max-batch-size", type=positive_int, default=defaults.max_batch_size, metavar="B",
                        help="captions per forward pass (default: %(default)s; 1: no batching)")
    limits.add_argument("--batch-wait-ms", type=float, default=1000 * defaults.batch_wait_seconds, metavar="MS",
                        help="how long a caption waits for others to batch with (default: %(default)g: "
                             "only those already waiting)")
    limits.add_argument("--decode-workers", type=positive_int, default=defaults.decode_workers, metavar="N",
                        help="threads decoding uploads beside the model (default: %(default)s)")
    limits.add_argument("--upload-dir", metavar="DIR",
                        help="where uploads are spooled (default: a new temporary folder, removed at exit)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from calmcap.serve.settings import MIB, ServeSettings

    settings = ServeSettings(
        model=args.model, index=args.index, device=args.device, max_upload_bytes=int(args.max_upload_mb * MIB),
        request_timeout_seconds=args.request_timeout, queue_size=args.queue_size, max_batch_size=args.max_batch_size,
        batch_wait_seconds=args.batch_wait_ms / 1000, decode_workers=args.decode_workers, upload_dir=args.upload_dir,
    ).check()
    try:
        import uvicorn

        from calmcap.serve.app import create_app
    except ImportError as error:
        raise CalmcapError(f"calmcap serve needs FastAPI, uvicorn and python-multipart ({error}); "
                           "install them with: pip install 'calmcap[serve]'") from None
    from calmcap.serve.state import ServeState

    state = ServeState.open(settings)
    stopped_by: list[int] = []
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again; caught here,
    # a stop that was asked for exits 0 instead of dying of the signal.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stopped_by.append(sig))
    try:
        uvicorn.run(create_app(state), host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=settings.request_timeout_seconds + 5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        state.close()  # again: a no-op after the app's shutdown; the clean-up when it never started
    if stopped_by:
        err("calmcap serve: stopped (SIGTERM) after finishing the requests in flight")
    return 0
