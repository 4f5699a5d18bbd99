"""A real ``calmcap serve`` (uvicorn, loopback) under load and faults, and stopped by SIGTERM (issue #14).

The load test sends LOAD_REQUESTS requests from 8 concurrent clients, one in five bad (truncated,
a text file named .mp4, empty, over the size limit, a text/plain part, a client that disconnects
mid-upload), and checks: every good request gets the caption ``calmcap caption`` gives for that
file and options (batching may swap two beams whose scores the CLI itself finds within
BEAM_TIE of each other, calmcap/serve/batcher.py; any such swap is counted and shown), every bad
one a 4xx naming its reason, no 5xx, resident memory flat, no temporary file left.
``-m slow`` runs it with 1200.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="calmcap serve needs FastAPI (pip install 'calmcap[serve]')")
httpx = pytest.importorskip("httpx")

from calmcap.cli import main  # noqa: E402
from tests.serve_process import RawPost, ServerProcess, multipart  # noqa: E402
from tests.test_pipeline import checkpoint_dirs, manifest_videos  # noqa: E402

UPLOAD_LIMIT_MB = 0.25
CLIENTS = 8
LOAD_REQUESTS = 240
BEAM_TIE = 1e-4
# Growth of the server's resident memory allowed between the end of the warm-up third and the end.
RSS_GROWTH_BYTES = 48 << 20

OPTION_SETS = [
    {},
    {"num_beams": 2, "num_return_sequences": 2, "max_length": 10},
    {"max_length": 6, "length_penalty": 0.6},
]
BAD_KINDS = ["truncated", "text", "empty", "too_large", "wrong_type", "disconnect"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_model) -> str:
    return str(checkpoint_dirs(tmp_path_factory, make_model)["calm"])


@pytest.fixture(scope="module")
def good_videos(synth_small) -> list[Path]:
    return manifest_videos(synth_small, "test") + manifest_videos(synth_small, "test_ood")


def _flags(fields: dict) -> list[str]:
    return [arg for name, value in fields.items() for arg in ("--" + name.replace("_", "-"), str(value))]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``calmcap ARGV`` in-process: (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _cli_captions(model_dir: str, videos: list[Path], fields: dict) -> dict[str, dict]:
    """``calmcap caption --json`` of each video alone (``--batch-size 1``), by path."""
    code, out, err = _cli(["caption", *map(str, videos), "--model", model_dir, "--json", "--batch-size", "1",
                           *_flags(fields)])
    assert code == 0, err
    return {item["video"]: item for item in json.loads(out)}


@pytest.fixture(scope="module")
def references(model_dir, good_videos) -> dict:
    """(video, option set) -> (the CLI's answer, all the CLI's beams with their scores)."""
    from calmcap.checkpoint import read_generation

    num_beams_default = read_generation(model_dir).num_beams
    out = {}
    for i, fields in enumerate(OPTION_SETS):
        answers = _cli_captions(model_dir, good_videos, fields)
        beams = fields.get("num_beams", num_beams_default)
        every_beam = _cli_captions(model_dir, good_videos, {**fields, "num_return_sequences": beams})
        for video in good_videos:
            out[str(video), i] = (answers[str(video)], every_beam[str(video)]["beams"])
    return out


@pytest.fixture(scope="module")
def bad_inputs(good_videos, tmp_path_factory, model_dir) -> dict[str, tuple[str, bytes, str]]:
    """kind -> (file name, bytes, the API's reason: exactly what `calmcap caption` prints for 422s, else a fragment)."""
    root = tmp_path_factory.mktemp("serve_load_bad")
    data = good_videos[0].read_bytes()
    files = {"truncated": ("cut.mp4", data[: len(data) // 3]),
             "text": ("notes.mp4", b"this is a text file with a video's name\n" * 40),
             "empty": ("empty.mp4", b"")}
    out = {}
    for kind, (name, content) in files.items():
        path = root / name
        path.write_bytes(content)
        code, _, err = _cli(["caption", str(path), "--model", model_dir])
        assert code == 1
        line = [ln for ln in err.splitlines() if ln.startswith(f"{path}: ")][-1]
        out[kind] = (name, content, f"{name}: {line.removeprefix(f'{path}: ')}")
    limit = int(UPLOAD_LIMIT_MB * (1 << 20))
    out["too_large"] = ("big.mp4", random.Random(0).randbytes(limit + 50_000), "big.mp4: upload larger than")
    out["wrong_type"] = ("clip.mp4", data, "'text/plain' is not a video")
    out["disconnect"] = ("gone.mp4", data, "")
    return out


def _check_good(answer: dict, reference: tuple[dict, list], swaps: list) -> None:
    expected, every_beam = reference
    if answer["caption"] != expected["caption"]:
        # Only a swap of two beams the CLI itself scores within BEAM_TIE of each other is allowed.
        scores = {b["caption"]: b["score"] for b in every_beam}
        assert answer["caption"] in scores, (answer, expected)
        assert abs(scores[answer["caption"]] - expected["score"]) <= BEAM_TIE, (answer, expected)
        swaps.append((expected["caption"], answer["caption"]))
        return
    assert answer["score"] == pytest.approx(expected["score"], abs=BEAM_TIE)
    assert [b["caption"] for b in answer.get("beams", [])] == [b["caption"] for b in expected.get("beams", [])]


def _run_load(server: ServerProcess, plan: list[tuple], good_videos, references, bad_inputs, results: list) -> None:
    lock = threading.Lock()

    def client(items: list[tuple]) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for kind, payload in items:
                if kind == "good":
                    video, option = payload
                    fields = {k: str(v) for k, v in OPTION_SETS[option].items()}
                    response = http.post("/v1/caption", data=fields,
                                         files={"file": (video.name, video.read_bytes(), "video/mp4")})
                    outcome = (kind, payload, response.status_code, response.json(), response.headers)
                elif kind == "disconnect":
                    body, content_type = multipart([("file", "gone.mp4", "video/mp4", bad_inputs[kind][1])])
                    post = RawPost(server.port, "/v1/caption", body, content_type)
                    post.send(len(body) // 2)
                    time.sleep(0.05)
                    post.abandon()
                    outcome = (kind, payload, None, None, None)
                else:
                    name, content, _ = bad_inputs[kind]
                    content_type = "text/plain" if kind == "wrong_type" else "video/mp4"
                    response = http.post("/v1/caption", files={"file": (name, content, content_type)})
                    outcome = (kind, payload, response.status_code, response.json(), response.headers)
                with lock:
                    results.append(outcome)

    threads = [threading.Thread(target=client, args=(plan[i::CLIENTS],)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)


def _plan(num_requests: int, good_videos: list[Path], seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    plan = []
    for i in range(num_requests):
        if i % 5 == 4:
            plan.append((BAD_KINDS[(i // 5) % len(BAD_KINDS)], None))
        else:
            plan.append(("good", (rng.choice(good_videos), rng.randrange(len(OPTION_SETS)))))
    rng.shuffle(plan)
    return plan


def _load_and_faults(num_requests, model_dir, good_videos, references, bad_inputs, tmp_path) -> list:
    uploads = tmp_path / "uploads"
    server = ServerProcess(["--model", model_dir, "--upload-dir", str(uploads), "--max-upload-mb", str(UPLOAD_LIMIT_MB),
                            "--queue-size", "64", "--max-batch-size", "4", "--request-timeout", "300"])
    try:
        plan = _plan(num_requests, good_videos)
        warm, rest = plan[: len(plan) // 3], plan[len(plan) // 3 :]
        results: list = []
        start = time.perf_counter()
        _run_load(server, warm, good_videos, references, bad_inputs, results)
        rss_warm = server.rss_bytes()
        _run_load(server, rest, good_videos, references, bad_inputs, results)
        seconds = time.perf_counter() - start
        rss_end = server.rss_bytes()
        health = httpx.get(f"{server.url}/v1/health").json()
    finally:
        code = server.terminate()
    assert len(results) == num_requests
    swaps: list = []
    batch_sizes = []
    for kind, payload, status, answer, headers in results:
        if kind == "disconnect":
            continue
        assert status is not None and status < 500, (kind, status, answer)
        if kind == "good":
            assert status == 200, (payload, answer)
            video, option = payload
            assert answer.pop("video") == video.name
            _check_good(answer, references[str(video), option], swaps)
            batch_sizes.append(int(headers["X-Calmcap-Batch-Size"]))
            continue
        expected_status = {"too_large": 413, "wrong_type": 415}.get(kind, 422)
        assert status == expected_status, (kind, answer)
        reason = bad_inputs[kind][2]
        if expected_status == 422:
            assert answer["detail"] == reason
        else:
            assert reason in answer["detail"]
    log = server.log
    assert "Traceback" not in log, log[-5000:]
    assert not [line for line in log.splitlines() if '" 5' in line and "HTTP/1.1" in line], log[-5000:]
    assert not list(uploads.iterdir()), "uploads left behind"
    assert health["queue"]["admitted"] == 0 and health["queue"]["waiting_for_model"] == 0
    assert rss_end - rss_warm <= RSS_GROWTH_BYTES, f"resident memory grew {(rss_end - rss_warm) / 2**20:.0f} MiB"
    assert code == 0
    good = sum(1 for r in results if r[0] == "good")
    print(f"\n{num_requests} requests ({good} good) from {CLIENTS} clients in {seconds:.1f} s; batch sizes "
          f"{dict(sorted((b, batch_sizes.count(b)) for b in set(batch_sizes)))}; beam swaps {len(swaps)}: {swaps}; "
          f"RSS {rss_warm / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB")
    assert len(swaps) <= max(1, good // 20)
    return results


def _statuses(results: list) -> set:
    return {status for _, _, status, _, _ in results if status is not None}


def test_load_and_faults(model_dir, good_videos, references, bad_inputs, tmp_path):
    results = _load_and_faults(LOAD_REQUESTS, model_dir, good_videos, references, bad_inputs, tmp_path)
    assert 200 in _statuses(results) and max(_statuses(results)) < 500


@pytest.mark.slow
def test_load_and_faults_long(model_dir, good_videos, references, bad_inputs, tmp_path):
    results = _load_and_faults(1200, model_dir, good_videos, references, bad_inputs, tmp_path)
    assert 200 in _statuses(results) and max(_statuses(results)) < 500


def test_sigterm_finishes_the_request_in_flight_and_exits(model_dir, good_videos, references):
    import socket

    server = ServerProcess(["--model", model_dir])
    try:
        video = good_videos[3]
        body, content_type = multipart([("file", video.name, "video/mp4", video.read_bytes())])
        post = RawPost(server.port, "/v1/caption", body, content_type)
        post.send(len(body) // 2)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        with pytest.raises(OSError):  # no new connection once it is stopping
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        status, data = post.finish()
        code = server.process.wait(120)
    finally:
        server.kill()
    assert status == 200, data
    answer = json.loads(data)
    assert answer["caption"] == references[str(video), 0][0]["caption"]
    assert code == 0, server.log[-3000:]
    assert "stopped (SIGTERM) after finishing the requests in flight" in server.log
    upload_dir = server.log.split("uploads go to ", 1)[1].split()[0]
    assert not Path(upload_dir).exists()  # the server's own temporary folder is gone
