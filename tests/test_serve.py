"""``calmcap serve`` (issue #14): the API against the CLI, uploads, the queue, the batcher, OpenAPI.

The API runs in-process under FastAPI's TestClient on the tiny checkpoint of tests/test_pipeline.py
and the embedded benchmark's real H.264 clips. Every answer is compared with what the CLI
prints for the same file and options (``calmcap.cli.main`` in-process). A real uvicorn under
load and faults, and SIGTERM, are in tests/test_serve_load.py; the page in a browser in
tests/test_serve_browser.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="calmcap serve needs FastAPI (pip install 'calmcap[serve]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from calmcap.cli import main  # noqa: E402
from tests.test_pipeline import checkpoint_dirs, manifest_videos  # noqa: E402

UPLOAD_LIMIT = 256 * 1024


# ============================================================================ fixtures and helpers


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, make_model) -> dict[str, Path]:
    return checkpoint_dirs(tmp_path_factory, make_model)


@pytest.fixture(scope="module")
def videos(synth_small) -> list[Path]:
    return manifest_videos(synth_small, "test") + manifest_videos(synth_small, "test_ood")


@pytest.fixture(scope="module")
def index_dir(checkpoints, videos, tmp_path_factory) -> Path:
    from calmcap.pipeline import build_index

    out = tmp_path_factory.mktemp("serve_index") / "index"
    build_index(videos, out, str(checkpoints["calm"]))
    return out


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve_uploads")


@pytest.fixture(scope="module")
def served(checkpoints, index_dir, upload_dir):
    """(client, state) of a server with the index, a 256 KiB upload limit and the default batching."""
    from fastapi.testclient import TestClient

    from calmcap.serve.app import create_app
    from calmcap.serve.settings import ServeSettings
    from calmcap.serve.state import ServeState

    settings = ServeSettings(model=str(checkpoints["calm"]), index=str(index_dir), upload_dir=str(upload_dir),
                             max_upload_bytes=UPLOAD_LIMIT)
    state = ServeState.open(settings)
    with TestClient(create_app(state)) as client:
        yield client, state
    assert not state.batcher._thread.is_alive()  # the lifespan closed it


@pytest.fixture
def client(served):
    return served[0]


@pytest.fixture(autouse=True)
def _no_upload_left_behind(request, upload_dir):
    yield
    assert not list(upload_dir.iterdir()), "an upload's temporary file was left behind"


def cli_flags(fields: dict) -> list[str]:
    """``calmcap caption`` flags of API fields: ``{"num_beams": 2, "sample": True}`` -> ``--num-beams 2 --sample``."""
    flags = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, str(value)]
    return flags


def cli_json(capsys, *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def upload(client, path_or_bytes, name: str = "clip.mp4", content_type: str = "video/mp4", endpoint: str = "caption",
           **fields):
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return client.post(f"/v1/{endpoint}", files={"file": (name, data, content_type)},
                       data={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()})


def one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail
    return detail


# ============================================================================ the API equals the CLI


@pytest.mark.parametrize("fields", [
    {},
    {"num_beams": 2, "num_return_sequences": 2, "max_length": 12},
    {"num_beams": 4, "length_penalty": 0.5, "no_repeat_ngram_size": 2, "min_length": 3},
    {"sample": True, "seed": 3, "top_p": 0.9, "temperature": 0.7},
    {"sample": True, "num_return_sequences": 3},
    {"num_frames": 4},
], ids=["defaults", "two-beams", "penalties", "sampled", "three-samples", "four-frames"])
def test_caption_answer_is_what_calmcap_caption_json_prints(client, checkpoints, videos, capsys, fields):
    video = videos[1]
    response = upload(client, video, name="test clip.mp4", **fields)
    assert response.status_code == 200, response.text
    answer = response.json()
    (expected,) = cli_json(capsys, "caption", str(video), "--model", str(checkpoints["calm"]), "--json",
                           *cli_flags(fields))
    assert answer.pop("video") == "test clip.mp4"
    expected.pop("video")
    assert answer == expected
    assert response.headers["X-Calmcap-Batch-Size"] == "1"
    timing = dict(part.split(";dur=") for part in response.headers["Server-Timing"].split(", "))
    assert set(timing) == {"upload", "decode", "queue", "tower", "generate", "total"}
    assert all(float(v) >= 0 for v in timing.values())


def test_caption_frames_are_the_models_input(served, videos):
    from PIL import Image

    from calmcap.pipeline import decode_clip, frame_settings
    from calmcap.serve.frames import clip_pixels

    client, state = served
    answer = upload(client, videos[0], frames=True).json()
    clip = decode_clip(videos[0], *frame_settings(state.loaded.model, None))
    expected = clip_pixels(clip)
    assert len(answer["frames"]) == int(clip.mask.sum()) == len(expected)
    for url, pixels in zip(answer["frames"], expected, strict=True):
        assert url.startswith("data:image/jpeg;base64,")
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
        assert image.shape == pixels.shape  # the crop the model saw: S x S
        assert np.abs(image.astype(int) - pixels.astype(int)).mean() < 6  # JPEG's loss, nothing more
    # Without frames=true the answer is exactly the CLI's keys.
    assert set(upload(client, videos[0]).json()) == {"video", "caption", "score"}


def test_explain_answer_is_what_calmcap_explain_json_prints(client, checkpoints, videos, capsys):
    video = videos[2]
    model = str(checkpoints["calm"])
    for fields, flags in [({"top_k": 5}, ["--top-k", "5"]),
                          ({"caption": "a red circle moves to the left", "num_frames": 3},
                           ["--caption", "a red circle moves to the left", "--num-frames", "3"])]:
        response = upload(client, video, name="v.mp4", endpoint="explain", **fields)
        assert response.status_code == 200, response.text
        expected = cli_json(capsys, "explain", str(video), "--model", model, "--json", *flags)
        answer = response.json()
        assert answer.pop("video") == "v.mp4"
        expected.pop("video")
        assert answer == expected


def test_search_is_what_calmcap_retrieve_prints_with_a_frame_per_hit(served, index_dir, checkpoints, capsys):
    from PIL import Image

    client, state = served
    query = "a red circle moves to the left"
    response = client.get("/v1/search", params={"q": query, "top_k": 4})
    assert response.status_code == 200, response.text
    answer = response.json()
    (expected,) = cli_json(capsys, "retrieve", "--index", str(index_dir), "--query", query, "--top-k", "4",
                           "--model", str(checkpoints["calm"]), "--json")
    assert answer["query"] == expected["query"]
    assert [{k: v for k, v in hit.items() if k != "frame_url"} for hit in answer["results"]] == expected["results"]
    for hit in answer["results"]:
        row = state.index.ids.index(hit["video"])
        assert hit["frame_url"] == f"/v1/index/frames/{row}"
        frame = client.get(hit["frame_url"])
        assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(frame.content)).size[0] > 0
    assert one_line_error(client.get(f"/v1/index/frames/{len(state.index)}"), 404).startswith("no row")
    assert "top_k" in one_line_error(client.get("/v1/search", params={"q": query, "top_k": 0}), 422)
    assert one_line_error(client.get("/v1/search", params={"q": "   "}), 422) == "empty query text"


def test_health_and_model_describe_the_server(served, checkpoints):
    from dataclasses import asdict

    from calmcap.checkpoint import read_generation
    from calmcap.reports import model_identity

    client, state = served
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model"] == "calmcap-tiny" and health["index_videos"] == 10
    assert health["queue"]["capacity"] == state.settings.queue_size
    info = client.get("/v1/model").json()
    assert info["identity"] == json.loads(json.dumps(model_identity(state.loaded.model, checkpoints["calm"])))
    assert info["architecture"]["name"] == "calmcap-tiny" and info["architecture"]["num_frames"] == 8
    assert info["decoding"] == asdict(read_generation(checkpoints["calm"]))
    assert info["labels"] == list(state.loaded.model.labels)
    assert info["limits"]["max_upload_bytes"] == UPLOAD_LIMIT
    assert info["index"]["videos"] == 10


def test_openapi_describes_every_endpoint_and_the_answers_match_it(served, videos):
    from calmcap.serve.forms import CaptionFields, ExplainFields
    from calmcap.serve.schemas import CaptionAnswer, ExplainAnswer, HealthAnswer, ModelAnswer, SearchAnswer

    client, _ = served
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/caption", "/v1/explain", "/v1/search", "/v1/index/frames/{row}",
                                  "/v1/health", "/v1/model"}
    for path, fields in (("/v1/caption", CaptionFields), ("/v1/explain", ExplainFields)):
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert set(body["properties"]) == {"file", *fields.model_fields} and body["required"] == ["file"]
        assert {"413", "415", "422", "503"} <= set(operation["responses"])
    search = spec["paths"]["/v1/search"]["get"]
    assert {p["name"] for p in search["parameters"]} == {"q", "top_k"}
    # Each answer validates against the model its schema was made from (extra keys forbidden).
    for model, response in [
        (CaptionAnswer, upload(client, videos[0], num_beams=2, num_return_sequences=2, frames=True)),
        (ExplainAnswer, upload(client, videos[0], endpoint="explain")),
        (SearchAnswer, client.get("/v1/search", params={"q": "a blue square"})),
        (HealthAnswer, client.get("/v1/health")),
        (ModelAnswer, client.get("/v1/model")),
    ]:
        assert response.status_code == 200, response.text
        assert set(response.json()) <= set(model.model_fields)
        model.model_validate(response.json())
    page = client.get("/")
    assert page.status_code == 200 and "calmcap" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/settings.py").status_code == 404


# ============================================================================ bad requests


@pytest.fixture(scope="module")
def bad_files(videos, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve_bad")
    files = {"empty": root / "empty.mp4", "text": root / "notes.mp4", "truncated": root / "cut.mp4"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is a text file with a video's name\n" * 40)
    data = videos[0].read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 3])
    return files


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_a_bad_video_is_422_with_the_reason_calmcap_caption_prints(client, checkpoints, bad_files, capsys, kind):
    path = bad_files[kind]
    capsys.readouterr()
    assert main(["caption", str(path), "--model", str(checkpoints["calm"])]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    reason = line.removeprefix(f"{path}: ")
    for endpoint in ("caption", "explain"):
        detail = one_line_error(upload(client, path, name=path.name, endpoint=endpoint), 422)
        assert detail == f"{path.name}: {reason}"
        assert "calmcap-serve" not in detail and "upload-" not in detail  # no server path leaks


def test_bad_requests_are_one_line_4xx(client, videos, capsys, checkpoints):
    video = videos[0]
    too_large = one_line_error(upload(client, b"\0" * (UPLOAD_LIMIT + 1), name="big.mp4"), 413)
    assert too_large == "big.mp4: upload larger than this server's limit of 256 KiB"
    assert "text/plain" in one_line_error(upload(client, video, content_type="text/plain"), 415)
    assert "multipart/form-data" in one_line_error(client.post("/v1/caption", json={"file": "x"}), 415)
    assert "multipart/form-data" in one_line_error(
        client.post("/v1/caption", content=video.read_bytes(), headers={"content-type": "video/mp4"}), 415)
    assert "multipart/form-data" in one_line_error(client.post("/v1/caption", data={"num_beams": "2"}), 415)
    no_file = client.post("/v1/caption", files={"num_beams": (None, "2")})  # multipart, a field but no file
    assert "multipart file field 'file'" in one_line_error(no_file, 422)
    assert "unexpected file field 'video'" in one_line_error(
        client.post("/v1/caption", files={"video": ("a.mp4", video.read_bytes(), "video/mp4")}), 422)
    assert one_line_error(upload(client, video, beams=3), 422).startswith("unknown field 'beams' (accepted: file, ")
    assert one_line_error(upload(client, video, num_beams="three"), 422).startswith("num_beams: Input should be")
    assert "less than or equal to 16" in one_line_error(upload(client, video, num_beams=64), 422)
    # A combination the CLI refuses is refused with the CLI's words.
    capsys.readouterr()
    assert main(["caption", str(video), "--model", str(checkpoints["calm"]), "--num-return-sequences", "4"]) == 2
    cli_error = capsys.readouterr().err.strip().removeprefix("calmcap: error: ")
    assert one_line_error(upload(client, video, num_return_sequences=4), 422) == cli_error
    assert one_line_error(upload(client, video, num_frames=9), 422).startswith(
        "num_frames must be between 1 and the model's 8")
    assert one_line_error(upload(client, video, endpoint="explain", top_k=0), 422) == "top_k must be at least 1, got 0"
    # Empty boxes of an HTML form count as not sent.
    assert upload(client, video, num_beams="", max_length="").status_code == 200


def test_no_index_no_anchors(checkpoints, videos, upload_dir, capsys):
    from fastapi.testclient import TestClient

    from calmcap.serve.app import create_app
    from calmcap.serve.settings import ServeSettings
    from calmcap.serve.state import ServeState

    state = ServeState.open(ServeSettings(model=str(checkpoints["baseline"]), upload_dir=str(upload_dir)))
    with TestClient(create_app(state)) as client:
        assert "no index" in one_line_error(client.get("/v1/search", params={"q": "a dog"}), 404)
        assert "no index" in one_line_error(client.get("/v1/index/frames/0"), 404)
        assert client.get("/v1/model").json()["index"] is None
        detail = one_line_error(upload(client, videos[0], endpoint="explain"), 422)
    assert main(["explain", str(videos[0]), "--model", str(checkpoints["baseline"])]) == 2
    assert capsys.readouterr().err.strip() == f"calmcap: error: {detail}"


def test_an_index_of_another_model_stops_the_server_before_it_starts(make_model, index_dir, tmp_path):
    from calmcap.errors import CalmcapError
    from calmcap.serve.settings import ServeSettings
    from calmcap.serve.state import ServeState

    other = tmp_path / "other"
    make_model(seed=1).save_pretrained(other)
    with pytest.raises(CalmcapError, match="built with another model"):
        ServeState.open(ServeSettings(model=str(other), index=str(index_dir)))


# ============================================================================ the queue and the time limit


def test_a_full_queue_is_503_with_retry_after_before_the_body_is_read(checkpoints, videos, upload_dir):
    from fastapi.testclient import TestClient

    from calmcap.serve.app import create_app
    from calmcap.serve.settings import ServeSettings
    from calmcap.serve.state import ServeState

    state = ServeState.open(ServeSettings(model=str(checkpoints["calm"]), upload_dir=str(upload_dir), queue_size=2))
    with TestClient(create_app(state)) as client:
        held = [state.batcher.admit(), state.batcher.admit()]
        response = upload(client, videos[0])
        detail = one_line_error(response, 503)
        assert "busy" in detail and int(response.headers["Retry-After"]) >= 1
        assert one_line_error(client.get("/v1/search", params={"q": "x"}), 404)  # no index: not queued
        assert client.get("/v1/health").json()["queue"]["admitted"] == 2
        for slot in held:
            slot.__exit__(None, None, None)
        assert upload(client, videos[0]).status_code == 200
        assert client.get("/v1/health").json()["queue"]["admitted"] == 0


def test_the_time_limit_answers_503_and_the_late_caption_is_dropped(checkpoints, videos, upload_dir):
    import threading

    from fastapi.testclient import TestClient

    from calmcap.serve.app import create_app
    from calmcap.serve.settings import ServeSettings
    from calmcap.serve.state import ServeState

    state = ServeState.open(ServeSettings(model=str(checkpoints["calm"]), upload_dir=str(upload_dir),
                                          request_timeout_seconds=4.0))
    release = threading.Event()
    with TestClient(create_app(state)) as client:
        blocker = state.batcher.call(lambda loaded: release.wait(30))  # the model is busy
        start = time.perf_counter()
        response = upload(client, videos[0])
        assert time.perf_counter() - start < 15
        detail = one_line_error(response, 503)
        assert "time limit of 4 s (waiting for the model)" in detail and "Retry-After" in response.headers
        release.set()
        blocker.result(30)
        assert upload(client, videos[0]).status_code == 200
        assert state.batcher.stats.videos == 1  # the caption that came too late was never made


# ============================================================================ the batcher


def test_batches_group_equal_settings_and_give_the_captions_made_alone(checkpoints, videos):
    from calmcap.pipeline import CaptionOptions, caption_videos, decode_clip, frame_settings, load_model
    from calmcap.serve.batcher import ModelBatcher

    loaded = load_model(str(checkpoints["calm"]))
    frames, size = frame_settings(loaded.model, None)
    clips = [decode_clip(v, frames, size) for v in videos[:6]]
    beam2 = CaptionOptions(num_beams=2, max_length=10).resolve(loaded.generation)
    default = CaptionOptions().resolve(loaded.generation)
    batcher = ModelBatcher(loaded, queue_size=16, max_batch_size=4)
    # Submitted before the thread starts, so they all wait together: 4 + 1 with beam 2, 1 default.
    futures = [batcher.caption(clip, beam2) for clip in clips[:5]] + [batcher.caption(clips[5], default)]
    batcher.start()
    outcomes = [f.result(120) for f in futures]
    batcher.close(30)
    assert [o.batch_size for o in outcomes] == [4, 4, 4, 4, 1, 1]
    assert batcher.batches == 3
    alone = caption_videos([str(v) for v in videos[:5]], loaded, options=CaptionOptions(num_beams=2, max_length=10),
                           batch_size=1)
    alone += caption_videos([str(videos[5])], loaded, batch_size=1)
    for outcome, reference in zip(outcomes, alone, strict=True):
        # Same caption; the score as alone up to float32 rounding of a batched matmul (batcher.py).
        assert outcome.result.caption == reference.caption
        assert outcome.result.score == pytest.approx(reference.score, abs=1e-4)


def test_sampled_captions_run_alone_and_are_seeded(checkpoints, videos):
    from calmcap.pipeline import CaptionOptions, decode_clip, frame_settings, load_model
    from calmcap.serve.batcher import ModelBatcher

    loaded = load_model(str(checkpoints["calm"]))
    clip = decode_clip(videos[0], *frame_settings(loaded.model, None))
    sample = CaptionOptions(do_sample=True, num_return_sequences=2).resolve(loaded.generation)
    batcher = ModelBatcher(loaded, queue_size=8, max_batch_size=8)
    futures = [batcher.caption(clip, sample, seed=s) for s in (5, 5, 6)]
    batcher.start()
    first, again, other = (f.result(60) for f in futures)
    batcher.close(30)
    assert [first.batch_size, again.batch_size, other.batch_size] == [1, 1, 1]
    assert first.result.beams == again.result.beams
    assert first.result.beams != other.result.beams


# ============================================================================ uploads, without HTTP


def _receive(body: bytes, headers: dict[str, str], tmp_path: Path, *, max_bytes: int = 1000, chunk: int = 7,
             timeout: float = 5.0, delay: float = 0.0):
    from calmcap.serve.uploads import receive_upload

    sent = []

    async def chunks():
        for i in range(0, len(body), chunk):
            if delay:
                await asyncio.sleep(delay)
            sent.append(i)
            yield body[i : i + chunk]

    async def run():
        deadline = asyncio.get_running_loop().time() + timeout
        return await receive_upload(headers, chunks(), upload_dir=tmp_path, max_bytes=max_bytes, deadline=deadline,
                                    time_limit_seconds=timeout)

    return asyncio.run(run()), sent


def _multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "XyZ") -> tuple[bytes, dict]:
    lines = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        lines.append(head.encode() + b"\r\n" + data + b"\r\n")
    body = b"".join(lines) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}", "content-length": str(len(body))}


def test_an_upload_streams_into_one_file_in_any_chunking(tmp_path):
    video = bytes(range(256)) * 3 + b"\r\n--XyQ almost the boundary\r\n--Xy"
    body, headers = _multipart([("num_beams", None, None, b"2"), ("file", "C:\\clips\\my clip.mp4", "video/mp4", video),
                                ("caption", None, None, "é".encode())])
    for chunk in (1, 7, 64, len(body)):
        upload, _ = _receive(body, headers, tmp_path, chunk=chunk)
        assert upload.path.read_bytes() == video and upload.num_bytes == len(video)
        assert upload.filename == "my clip.mp4" and upload.path.parent == tmp_path and upload.path.suffix == ".mp4"
        assert upload.fields == {"num_beams": "2", "caption": "é"}
        upload.remove()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("case, status, fragment", [
    ("too_large", 413, "limit of 1000 bytes"),
    ("declared_too_large_expect", 413, "limit of 1000 bytes"),
    ("text_part", 415, "'text/plain' is not a video"),
    ("two_files", 422, "one video per request"),
    ("no_file", 422, "no video in the request"),
    ("malformed", 400, "malformed multipart body"),
    ("cut", 400, "ends inside the video"),
    ("slow", 408, "time limit of 0.3 s"),
    ("not_multipart", 415, "multipart/form-data"),
    ("huge_fields", 413, "form fields larger than 64 KiB"),
])
def test_a_refused_upload_leaves_nothing_on_disk(tmp_path, case, status, fragment):
    from calmcap.serve.uploads import UploadRefused

    video = b"v" * 600
    parts = [("file", "a.mp4", "video/mp4", video)]
    kwargs: dict = {}
    if case == "too_large":
        parts = [("file", "a.mp4", "video/mp4", b"v" * 5000)]
    elif case == "text_part":
        parts = [("file", "a.mp4", "text/plain", video)]
    elif case == "two_files":
        parts = parts * 2
    elif case == "no_file":
        parts = [("num_beams", None, None, b"2")]
    elif case == "huge_fields":
        parts = [("caption", None, None, b"x" * 70_000), *parts]
    body, headers = _multipart(parts)
    if case == "declared_too_large_expect":
        headers = {**headers, "content-length": str(10**9), "expect": "100-continue"}
    elif case == "malformed":
        body = body.replace(b"--XyZ", b"--XyQ", 1)
    elif case == "cut":
        body = body[: len(body) // 2]
    elif case == "slow":
        kwargs = {"timeout": 0.3, "delay": 0.05, "chunk": 64}
    elif case == "not_multipart":
        headers = {"content-type": "video/mp4"}
    with pytest.raises(UploadRefused) as refused:
        _receive(body, headers, tmp_path, **kwargs)
    assert refused.value.status == status and fragment in refused.value.detail
    assert not list(tmp_path.iterdir())


def test_a_refusal_mid_body_drains_the_rest_and_one_before_reads_nothing(tmp_path):
    from calmcap.serve.uploads import UploadRefused, receive_upload

    # Over the limit and over what a declared length may exceed it by (64 KiB of fields).
    body, headers = _multipart([("file", "a.mp4", "video/mp4", b"v" * 80_000)])
    received: list[int] = []

    async def chunks(data: bytes):
        for i in range(0, len(data), 1000):
            received.append(i)
            yield data[i : i + 1000]

    async def run(hdrs: dict, data: bytes):
        return await receive_upload(hdrs, chunks(data), upload_dir=tmp_path, max_bytes=1000,
                                    deadline=asyncio.get_running_loop().time() + 5, time_limit_seconds=5)

    with pytest.raises(UploadRefused):
        asyncio.run(run(headers, body))
    assert len(received) == len(range(0, len(body), 1000))  # read to the end: the client gets the answer
    received.clear()
    with pytest.raises(UploadRefused):
        asyncio.run(run({**headers, "expect": "100-continue"}, body))
    assert received == []  # a client waiting for 100 Continue is answered before it sends


# ============================================================================ where the server sits


def test_nothing_but_the_cli_imports_the_server():
    from tests.test_import_graph import import_graph

    offenders = {name: sorted(e for e in edges if e == "calmcap.serve" or e.startswith("calmcap.serve."))
                 for name, edges in import_graph().items()
                 if not (name.startswith("calmcap.serve") or name.startswith("calmcap.cli"))}
    assert not {name: edges for name, edges in offenders.items() if edges}


def test_the_serve_command_and_package_import_light():
    import subprocess
    import sys

    code = ("import sys; import calmcap.serve, calmcap.serve.settings, calmcap.cli.serve\n"
            "from calmcap.cli import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'fastapi', 'uvicorn', 'pydantic') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--max-upload-mb" in result.stdout and "127.0.0.1" in result.stdout
