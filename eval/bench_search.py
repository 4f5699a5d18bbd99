"""Benchmark: text-to-video search in an on-disk index of 100,000 videos.

Writes a synthetic index (``--num-videos`` x ``--dim`` random unit vectors, float16, the
format ``calmcap index`` writes, through :class:`calmcap.video_index.IndexWriter`) and times,
median of ``--repeats``:

* ``open``: :meth:`VideoIndex.open` (index.json, ids.json, memory-mapped embeddings.npy);
* ``search``: top-``k`` of one query (a float16 -> float32 chunked matrix-vector product and a
  partial sort), the index already open;
* ``open + search``: what one ``calmcap retrieve`` query costs besides loading the model and
  encoding the text (~0.02 s for one sentence with the tiny model).

The search is checked against a brute-force ranking. Prints a Markdown table, writes JSON.

    python eval/bench_search.py --out bench_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calmcap.video_index import IndexWriter, VideoIndex  # noqa: E402


def build(path: Path, num_videos: int, dim: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    writer = IndexWriter(path, model={"path": None, "name": "synthetic", "sha256": None, "config_sha256": None},
                         embed_dim=dim, num_frames=12, overwrite=True)
    for start in range(0, num_videos, 10_000):
        n = min(10_000, num_videos - start)
        block = rng.standard_normal((n, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        writer.add([f"/videos/{i:07d}.mp4" for i in range(start, start + n)], block)
        writer.flush()
    writer.finalize()


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-videos", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, help="embedding size (512: ViT-B/32 and B/16)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--work-dir", default=None, help="where the index is written (default: a temp dir)")
    parser.add_argument("--out", default="bench_search.json")
    args = parser.parse_args(argv)

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="calmcap-search-"))
    path = work / "index"
    start = time.perf_counter()
    build(path, args.num_videos, args.dim)
    build_seconds = time.perf_counter() - start
    size_mb = (path / "embeddings.npy").stat().st_size / 1e6

    rng = np.random.default_rng(1)
    query = rng.standard_normal(args.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    index = VideoIndex.open(path)
    hits = index.search(query, args.top_k)[0]
    brute = np.load(path / "embeddings.npy").astype(np.float32) @ query
    expected = np.argsort(-brute, kind="stable")[: args.top_k]
    assert [h.video for h in hits] == [index.ids[i] for i in expected], "search disagrees with brute force"

    open_s, _ = timed(lambda: VideoIndex.open(path), args.repeats)
    search_s, _ = timed(lambda: index.search(query, args.top_k), args.repeats)
    both_s, _ = timed(lambda: VideoIndex.open(path).search(query, args.top_k), args.repeats)
    rows = [("open", open_s), (f"search (top-{args.top_k}, one query)", search_s), ("open + search", both_s)]
    print(f"## Search in {args.num_videos:,} x {args.dim} float16 ({size_mb:.0f} MB), median of {args.repeats}\n")
    print("| step | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")
    result = {
        "benchmark": "search",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "num_videos": args.num_videos, "dim": args.dim, "top_k": args.top_k, "repeats": args.repeats,
        "index_mb": size_mb, "build_seconds": build_seconds,
        "open_seconds": open_s, "search_seconds": search_s, "open_and_search_seconds": both_s,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
