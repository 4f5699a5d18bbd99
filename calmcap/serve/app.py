"""The FastAPI application of ``calmcap serve``: the JSON API under ``/v1`` and the page at ``/``.

Endpoints (docs/SERVE.md shows each with ``curl``; ``/docs`` and ``/openapi.json`` describe them):

* ``POST /v1/caption``: a video (multipart field ``file``) and ``calmcap caption``'s options ->
  what ``calmcap caption --json`` prints for it (and, asked, the frames the model saw);
* ``POST /v1/explain``: a video and ``calmcap explain``'s options -> its ``--json``;
* ``GET /v1/search?q=...&top_k=...``: text-to-video search in the index given at start, a frame per hit;
* ``GET /v1/index/frames/{row}``: that frame (JPEG);
* ``GET /v1/health``, ``GET /v1/model``: liveness and the queue; which model, its architecture,
  its decoding defaults and the server's limits.

Every error is ``{"detail": "one line"}``: a bad video gets 422 and the reason ``calmcap caption``
prints (``name: reason``); 413 too large, 415 not a video type or not multipart, 408 an upload
slower than the time limit, 503 with ``Retry-After`` when the queue is full or the answer is
not ready within the time limit. The server opens no path a client names: uploads go to its own
temporary files (always removed), frames of indexed videos are asked for by row.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import ClientDisconnect

from calmcap.errors import CalmcapError, VideoDecodeError
from calmcap.serve.batcher import QueueFull
from calmcap.serve.forms import (
    MAX_NUM_BEAMS,
    MAX_QUERY_CHARS,
    MAX_RETURN_SEQUENCES,
    MAX_SEARCH_TOP_K,
    CaptionFields,
    ExplainFields,
    FieldsRefused,
    multipart_schema,
    parse_fields,
)
from calmcap.serve.schemas import (
    CaptionAnswer,
    ErrorAnswer,
    ExplainAnswer,
    HealthAnswer,
    ModelAnswer,
    SearchAnswer,
)
from calmcap.serve.state import ServeState
from calmcap.serve.uploads import Upload, UploadRefused, receive_upload
from calmcap.version import __version__

logger = logging.getLogger(__name__)

T = TypeVar("T")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page's files, by the only names the server answers to (no path from a request reaches the disk).
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
API = "/v1"

_ERRORS = {
    400: "malformed multipart body",
    404: "no such thing (no index, no such row)",
    408: "the upload did not arrive within the time limit",
    413: "the upload is larger than the server's limit",
    415: "not multipart/form-data, or the file part is not a video type",
    422: "a bad video (`name: reason`, as `calmcap caption` prints it) or a bad option (the CLI's message)",
    503: "the queue is full, or no answer within the time limit: retry after `Retry-After` seconds",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorAnswer, "description": _ERRORS[code]} for code in codes}


def _busy(state: ServeState, detail: str) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": str(state.batcher.retry_after_seconds())})


def _server_timing(**seconds: float) -> str:
    """A ``Server-Timing`` header (milliseconds): where a request's time went, for clients and benchmarks."""
    return ", ".join(f"{name};dur={1000 * value:.1f}" for name, value in seconds.items())


def create_app(state: ServeState) -> FastAPI:
    """The application serving ``state`` (opened with :meth:`ServeState.open`); its lifespan starts
    and closes the state's threads, so uvicorn's graceful shutdown finishes requests in flight first."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(
        title="calmcap", version=__version__, lifespan=lifespan,
        description="Video captioning, anchor explanations and text-to-video search with CALM (docs/SERVE.md). "
                    "Every error is `{\"detail\": \"one line\"}`.",
    )
    settings = state.settings

    @app.exception_handler(RequestValidationError)
    async def _one_line_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        name = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
        return JSONResponse({"detail": f"{name}: {first['msg']}"}, status_code=422)

    @app.exception_handler(CalmcapError)
    async def _user_error(request: Request, error: CalmcapError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    async def within(deadline: float, awaitable: Awaitable[T], doing: str) -> T:
        """``awaitable``'s result, or 503 when the request's time is up (its queued work is then dropped)."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(awaitable, max(remaining, 0.0))
        except asyncio.TimeoutError:  # noqa: UP041 - a distinct class before Python 3.11
            raise _busy(state, f"no answer within this server's time limit of {settings.request_timeout_seconds:g} s "
                               f"({doing}); retry later") from None

    def admit() -> Any:
        """A queue slot for the request (a context manager), or 503 at once when the queue is full."""
        try:
            return state.batcher.admit()
        except QueueFull as error:
            raise _busy(state, str(error)) from None

    @asynccontextmanager
    async def admitted_upload(request: Request) -> AsyncIterator[tuple[Upload, float]]:
        """A queue slot, then the request's upload in a temporary file (removed at the end), and its deadline."""
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_seconds
        with admit():
            try:
                upload = await receive_upload(
                    request.headers, request.stream(), upload_dir=state.upload_dir,
                    max_bytes=settings.max_upload_bytes, deadline=deadline,
                    time_limit_seconds=settings.request_timeout_seconds)
            except UploadRefused as error:
                raise HTTPException(error.status, error.detail) from None
            except ClientDisconnect:
                logger.info("a client disconnected during its upload")
                raise HTTPException(400, "the client disconnected during the upload") from None
            try:
                yield upload, deadline
            finally:
                upload.remove()

    def run_in_pool(fn: Any, *args: Any) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(state.decode_pool, functools.partial(fn, *args))

    # ------------------------------------------------------------------------------------ captions

    @app.post(f"{API}/caption", response_model=CaptionAnswer, response_model_exclude_none=True, tags=["videos"],
              summary="Caption a video (what `calmcap caption --json` prints for it)",
              openapi_extra={"requestBody": multipart_schema(CaptionFields)},
              responses=_errors(400, 408, 413, 415, 422, 503))
    async def caption(request: Request, response: Response) -> dict[str, Any]:
        from calmcap.pipeline import decode_clip, frame_settings
        from calmcap.serve.frames import clip_frame_urls

        arrived = time.perf_counter()
        async with admitted_upload(request) as (upload, deadline):
            uploaded = time.perf_counter()
            fields = _fields(CaptionFields, upload)
            decode = fields.caption_options().resolve(state.loaded.generation)
            num_frames, image_size = frame_settings(state.loaded.model, fields.num_frames)
            clip = await within(deadline, run_in_pool(decode_clip, upload.path, num_frames, image_size), "decoding")
            if clip.error is not None:
                raise HTTPException(422, f"{upload.filename}: {_reason(clip.error, upload)}")
            captioned = asyncio.wrap_future(state.batcher.caption(clip, decode, seed=fields.seed))
            try:
                # The frames are drawn while the model captions.
                frames = await within(deadline, run_in_pool(clip_frame_urls, clip), "frames") if fields.frames else None
                outcome = await within(deadline, captioned, "waiting for the model")
            finally:
                captioned.cancel()  # a no-op when done; else the model skips it (or its result is dropped)
        answer = outcome.result.to_json(beams=decode.num_return_sequences > 1)
        answer["video"] = upload.filename
        answer["frames"] = frames
        response.headers["Server-Timing"] = _server_timing(
            upload=uploaded - arrived, decode=clip.seconds, queue=outcome.queue_seconds, tower=outcome.tower_seconds,
            generate=outcome.decoder_seconds, total=time.perf_counter() - arrived)
        response.headers["X-Calmcap-Batch-Size"] = str(outcome.batch_size)
        return answer

    @app.post(f"{API}/explain", response_model=ExplainAnswer, tags=["videos"],
              summary="Top anchors of a video and of its caption (what `calmcap explain --json` prints)",
              openapi_extra={"requestBody": multipart_schema(ExplainFields)},
              responses=_errors(400, 408, 413, 415, 422, 503))
    async def explain(request: Request) -> dict[str, Any]:
        from calmcap.pipeline import check_explainable, decode_clip, explain_clip, frame_settings

        async with admitted_upload(request) as (upload, deadline):
            fields = _fields(ExplainFields, upload)
            check_explainable(state.loaded.model, fields.top_k)  # a baseline is refused before decoding
            num_frames, image_size = frame_settings(state.loaded.model, fields.num_frames)
            # Decoded beside the model, as captions are; the model's thread only runs the model.
            clip = await within(deadline, run_in_pool(decode_clip, upload.path, num_frames, image_size), "decoding")
            if clip.error is not None:
                raise HTTPException(422, f"{upload.filename}: {_reason(clip.error, upload)}")
            explanation = await within(deadline, asyncio.wrap_future(state.batcher.call(
                lambda loaded: explain_clip(clip, loaded, caption=fields.caption, top_k=fields.top_k))), "explaining")
        answer = explanation.to_json()
        answer["video"] = upload.filename
        return answer

    # ------------------------------------------------------------------------------------ search

    @app.get(f"{API}/search", response_model=SearchAnswer, tags=["search"],
             summary="Text-to-video search in the index given at start (what `calmcap retrieve --json` prints)",
             responses=_errors(404, 422, 503))
    async def search(
        q: str = Query(..., min_length=1, max_length=MAX_QUERY_CHARS, description="the query text"),
        top_k: int = Query(10, ge=1, le=MAX_SEARCH_TOP_K, description="results"),
    ) -> dict[str, Any]:
        from calmcap.pipeline import search_index

        index = _index(state)
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_seconds
        with admit():
            hits = await within(deadline, asyncio.wrap_future(state.batcher.call(
                lambda loaded: search_index(index, q, loaded, top_k=top_k))), "searching")
        return {"query": q, "results": [
            {**hit.to_json(), "frame_url": f"{API}/index/frames/{state.index_rows[hit.video]}"} for hit in hits]}

    @app.get(f"{API}/index/frames/{{row}}", tags=["search"], response_class=Response,
             summary="The middle frame of the index's video `row` (JPEG)",
             responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG"}, **_errors(404, 503)})
    async def index_frame(row: int = PathParam(..., ge=0, description="the video's row (a search hit's frame_url)")
                          ) -> Response:
        index = _index(state)
        if row >= len(index):
            raise HTTPException(404, f"no row {row}: the index holds {len(index)} videos")
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_seconds
        try:
            jpeg = await within(deadline, run_in_pool(state.thumbnail, row), "decoding a frame")
        except VideoDecodeError as error:
            raise HTTPException(404, f"row {row}: {error.reason}") from None
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    # ------------------------------------------------------------------------------------ the server

    @app.get(f"{API}/health", response_model=HealthAnswer, tags=["server"], summary="Liveness and the queue")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": state.identity["name"],
                "index_videos": len(state.index) if state.index is not None else None,
                "uptime_seconds": time.time() - state.started, "queue": state.batcher.snapshot()}

    @app.get(f"{API}/model", response_model=ModelAnswer, tags=["server"],
             summary="Which model answers: identity, architecture, decoding defaults, limits")
    async def model_info() -> dict[str, Any]:
        from dataclasses import asdict

        network = state.loaded.model
        return {
            "identity": state.identity,
            "architecture": network.config.to_json(),
            "decoding": asdict(state.loaded.generation),
            "labels": list(network.labels) if network.anchor_bank is not None else [],
            "limits": {"max_upload_bytes": settings.max_upload_bytes,
                       "request_timeout_seconds": settings.request_timeout_seconds,
                       "max_num_beams": MAX_NUM_BEAMS, "max_return_sequences": MAX_RETURN_SEQUENCES,
                       "max_search_top_k": MAX_SEARCH_TOP_K},
            "index": None if state.index is None else {"path": str(state.index.path), "videos": len(state.index)},
        }

    # ------------------------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, f"no static file {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=STATIC_FILES[name])

    return app


def _fields(model: Any, upload: Upload) -> Any:
    try:
        return parse_fields(model, upload.fields)
    except FieldsRefused as error:
        raise HTTPException(422, error.detail) from None


def _reason(reason: str, upload: Upload) -> str:
    """A decoder's reason with the temporary file's path (should one appear) replaced by the client's name."""
    return reason.replace(str(upload.path), upload.filename)


def _index(state: ServeState) -> Any:
    if state.index is None:
        raise HTTPException(404, "this server has no index: start it with --index DIR "
                                 "(a folder made by `calmcap index`)")
    return state.index
