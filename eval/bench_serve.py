"""Benchmark: ``calmcap serve`` warm latency, and concurrent clients against ``calmcap caption``'s batch mode.

Set-up (once, in --work-dir): the checkpoint and clip of eval/bench_caption_latency.py
(``calmcap-vitb32`` with random weights, a 10 s 1280x720 H.264 clip), unless --model and --clip
name others. Every caption uses 12 frames, beam 3, at most 20 tokens (--num-frames, --num-beams,
--max-length for another model).

1. **Warm latency.** A server (``calmcap serve``, a child process) answers ``--requests`` uploads
   of the clip one after another, after two warm-up requests. Per request: the round trip the
   client measures, and from the server's ``Server-Timing`` header of the same request the
   upload, decode (+ preprocessing), wait for the model, image tower and beam search. The
   question: how much the server adds to decode + image tower, measured in the same run.
2. **Concurrency.** ``--videos`` copies of the clip (copies decode exactly like distinct clips):
   uploaded by ``--clients`` concurrent clients; uploaded one at a time; and captioned by
   ``calmcap caption COPIES --batch-size B`` (a child process; its own videos/s after the model
   loaded). Videos per second of each, the batch sizes the server ran, and whether the captions
   agree.

    python eval/bench_serve.py --out bench_serve.json

Prints Markdown tables and writes JSON. ``--threads`` (default 2) sets OMP_NUM_THREADS of the
measured processes.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "eval"))

from bench_caption_latency import MAX_LENGTH, NUM_BEAMS, NUM_FRAMES, prepare  # noqa: E402

_RUNNING = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")
_STEADY = re.compile(r"([\d.]+) videos/s after the model loaded")


def child_env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


class Server:
    """``calmcap serve`` in a child process on a free loopback port."""

    def __init__(self, model: Path, max_batch_size: int, queue_size: int, threads: int,
                 extra: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "calmcap.cli", "serve", "--model", str(model), "--port", "0",
             "--max-batch-size", str(max_batch_size), "--queue-size", str(queue_size), "--log-level", "info",
             *(extra or [])],
            cwd=REPO, env=child_env(threads), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                self.lines.append(line)
                match = _RUNNING.search(line)
                if match:
                    self.url = match.group(1)
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        while not ready.wait(0.2):
            if self.process.poll() is not None:
                raise RuntimeError("calmcap serve did not start:\n" + "".join(self.lines)[-3000:])

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)


def post_clip(http, clip: Path, fields: dict[str, str]) -> dict:
    """One caption request: its answer, round trip and the server's timing (seconds)."""
    start = time.perf_counter()
    response = http.post("/v1/caption", data=fields, files={"file": (clip.name, clip.read_bytes(), "video/mp4")})
    round_trip = time.perf_counter() - start
    response.raise_for_status()
    timing = {name: float(ms) / 1000 for name, ms in
              (part.split(";dur=") for part in response.headers["Server-Timing"].split(", "))}
    return {"caption": response.json()["caption"], "round_trip": round_trip, "server": timing,
            "batch_size": int(response.headers["X-Calmcap-Batch-Size"])}


def warm_latency(server: Server, clip: Path, requests: int, fields: dict[str, str]) -> dict:
    import httpx

    with httpx.Client(base_url=server.url, timeout=600) as http:
        for _ in range(2):
            post_clip(http, clip, fields)
        runs = [post_clip(http, clip, fields) for _ in range(requests)]

    def median(values: list[float]) -> float:
        return statistics.median(values)

    stages = ("upload", "decode", "queue", "tower", "generate", "total")
    out = {"requests": requests, "round_trip": median([r["round_trip"] for r in runs]),
           **{stage: median([r["server"][stage] for r in runs]) for stage in stages},
           "decode_plus_tower": median([r["server"]["decode"] + r["server"]["tower"] for r in runs]),
           "caption": runs[0]["caption"]}
    out["round_trip_over_decode_plus_tower"] = out["round_trip"] / out["decode_plus_tower"]
    return out


def concurrent_run(server: Server, clips: list[Path], clients: int, fields: dict[str, str]) -> dict:
    import httpx

    pending = list(clips)
    lock = threading.Lock()
    results: dict[str, dict] = {}

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    clip = pending.pop(0)
                results[str(clip)] = post_clip(http, clip, fields)

    import psutil

    server_process = psutil.Process(server.process.pid)
    cpu_before = sum(server_process.cpu_times()[:2])  # user + system, every thread of the server
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - start
    cpu = sum(server_process.cpu_times()[:2]) - cpu_before
    sizes = [r["batch_size"] for r in results.values()]
    # CPU seconds per video and cores kept busy: a run near os.cpu_count() busy cores is CPU-bound,
    # and more videos/s then needs less work per video, not more overlap.
    return {"clients": clients, "videos": len(clips), "wall_seconds": wall, "videos_per_second": len(clips) / wall,
            "server_cpu_seconds_per_video": cpu / len(clips), "server_cores_busy": cpu / wall,
            "batch_sizes": {str(b): sizes.count(b) for b in sorted(set(sizes))},
            "median_round_trip": statistics.median(r["round_trip"] for r in results.values()),
            "captions": {clip: r["caption"] for clip, r in results.items()}}


def cli_batch(model: Path, clips: list[Path], batch_size: int, threads: int, fields: dict[str, str]) -> dict:
    flags = [arg for name, value in fields.items() for arg in ("--" + name.replace("_", "-"), value)]
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "calmcap.cli", "caption", *map(str, clips), "--model", str(model), "--json",
         "--batch-size", str(batch_size), *flags], cwd=REPO, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"calmcap caption failed:\n{result.stderr[-3000:]}")
    steady = _STEADY.search(result.stderr)
    return {"batch_size": batch_size, "videos": len(clips), "process_wall_seconds": wall,
            "videos_per_second": float(steady.group(1)) if steady else None,
            "captions": {item["video"]: item["caption"] for item in json.loads(result.stdout)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=None, help="where the checkpoint and clip live (default: a temp dir)")
    parser.add_argument("--model", default=None, help="a checkpoint instead of the random calmcap-vitb32")
    parser.add_argument("--clip", default=None, help="a clip instead of the 720p one")
    parser.add_argument("--out", default="bench_serve.json", help="JSON results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--server-arg", action="append", default=[], help="an extra `calmcap serve` argument")
    parser.add_argument("--requests", type=int, default=10, help="warm-latency requests (median reported)")
    parser.add_argument("--videos", type=int, default=16, help="copies of the clip in the concurrency runs")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch-size", type=int, default=8, help="the server's and calmcap caption's batch size")
    parser.add_argument("--num-frames", type=int, default=NUM_FRAMES)
    parser.add_argument("--num-beams", type=int, default=NUM_BEAMS)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    args = parser.parse_args(argv)
    fields = {"num_beams": str(args.num_beams), "max_length": str(args.max_length), "num_frames": str(args.num_frames)}

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="calmcap-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model and args.clip:
        model_dir, clip = Path(args.model), Path(args.clip)
    else:
        model_dir, clip = prepare(work)
    copies = []
    for i in range(args.videos):
        copy = work / f"serve_{i:02d}{clip.suffix}"
        if not copy.exists():
            copy.write_bytes(clip.read_bytes())
        copies.append(copy)

    server = Server(model_dir, args.max_batch_size, queue_size=4 * args.clients, threads=args.threads,
                    extra=args.server_arg)
    try:
        latency = warm_latency(server, clip, args.requests, fields)
        together = concurrent_run(server, copies, args.clients, fields)
        alone = concurrent_run(server, copies, 1, fields)
    finally:
        server.stop()
    batch = cli_batch(model_dir, copies, args.max_batch_size, args.threads, fields)
    reference = batch["captions"]
    for run in (together, alone):
        run["captions_differing_from_cli"] = sum(run["captions"][str(c)] != reference[str(c)] for c in copies)

    print(f"## Warm latency: one clip ({clip.name}), {args.num_frames} frames, beam {args.num_beams}, "
          f"{args.threads} threads; median of {args.requests} requests\n")
    print("| stage | seconds |\n|---|---:|")
    for key, name in [("round_trip", "round trip (client)"), ("upload", "upload (server)"),
                      ("decode", "decode + preprocess"), ("queue", "waiting for the model"),
                      ("tower", "image tower"), ("generate", "beam search"), ("total", "total (server)"),
                      ("decode_plus_tower", "decode + image tower")]:
        print(f"| {name} | {latency[key]:.3f} |")
    print(f"\nround trip / (decode + image tower) = {latency['round_trip_over_decode_plus_tower']:.2f}")
    print(f"\n## Throughput: {args.videos} copies of the clip\n")
    print("| how | videos/s | server CPU s / video | cores busy | batch sizes | captions differing from "
          "`calmcap caption` |\n|---|---:|---:|---:|---|---:|")
    for name, run in ((f"{args.clients} concurrent clients", together), ("one client, one at a time", alone)):
        print(f"| {name} | {run['videos_per_second']:.2f} | {run['server_cpu_seconds_per_video']:.2f} "
              f"| {run['server_cores_busy']:.2f} | {run['batch_sizes']} | {run['captions_differing_from_cli']} |")
    rate = f"{batch['videos_per_second']:.2f}" if batch["videos_per_second"] else "?"
    print(f"| `calmcap caption --batch-size {args.max_batch_size}` (after load) | {rate} | — | — | — | — |")

    result = {
        "benchmark": "serve",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {"model": str(model_dir), "clip": str(clip), "num_frames": args.num_frames,
                     "num_beams": args.num_beams, "max_length": args.max_length, "threads": args.threads,
                     "clients": args.clients,
                     "max_batch_size": args.max_batch_size},
        "latency": latency, "concurrent": together, "one_at_a_time": alone, "cli_batch": batch,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
