"""Benchmark: sparse frame sampling vs a per-second seek-and-read loader vs full decoding.

Generates 30 s H.264 clips (moving shapes over a scrolling textured background with film grain,
30 fps) at 720p and 360p, each with a keyframe every 10 s and every 2 s, then times, per clip
(median of --repeats runs):

* ``calmcap decord``: ``read_frames(path, 12, "uniform", backend="decord")``: 12 segment-middle
  frames, decord's sparse ``get_batch``.
* ``calmcap pyav``: the same through the PyAV backend (seek to keyframe, decode forward).
* ``per-second seek``: CLIP4Clip's ``RawVideoExtractorCV2`` access pattern: for each second,
  ``cap.set(cv2.CAP_PROP_POS_FRAMES, second * fps)`` and ``cap.read()`` one frame, then keep 12
  of those with ``np.linspace`` (CLIP preprocessing excluded here, as for the others). Without
  OpenCV the same pattern runs on PyAV seeks, and the output says so.
* ``decode all``: decode every frame once, sequentially (PyAV), keeping 12 (only those 12 are
  converted to RGB).

All decoders get the same thread count (--threads). Prints a Markdown table and writes JSON.

    python eval/bench_decode.py --out bench_decode.json
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
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calmcap.data.video import encode_video, probe_video, read_frames, sample_indices  # noqa: E402

RESOLUTIONS = {"720p": (1280, 720), "360p": (640, 360)}


# ---------------------------------------------------------------------------------------------
# Clip generation
# ---------------------------------------------------------------------------------------------


def synthetic_frames(width: int, height: int, num_frames: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Moving content with real texture, so the encoder has work to do (uint8 [H, W, 3] frames).

    A smooth random texture twice the frame size scrolls diagonally; eight coloured rectangles
    move and bounce; a bank of film-grain patterns is cycled so every frame differs.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[: 2 * height, : 2 * width]
    # cheap blur: average of shifted copies softens the block edges
    shifted_sum = texture[:-4, :-4].astype(np.uint16) + texture[4:, 4:] + texture[:-4, 4:] + texture[4:, :-4]
    texture = (shifted_sum // 4).astype(np.uint8)
    grain = [rng.integers(-6, 7, (height, width, 1), dtype=np.int16) for _ in range(8)]
    boxes = []
    for _ in range(8):
        w, h = int(rng.integers(width // 12, width // 4)), int(rng.integers(height // 12, height // 4))
        boxes.append(
            [float(rng.integers(0, width - w)), float(rng.integers(0, height - h)), w, h,
             float(rng.uniform(-9, 9)), float(rng.uniform(-6, 6)), rng.integers(0, 256, 3, dtype=np.uint8)]
        )
    max_y, max_x = texture.shape[0] - height, texture.shape[1] - width
    for t in range(num_frames):
        y, x = (2 * t) % max_y, (3 * t) % max_x
        frame = texture[y : y + height, x : x + width].astype(np.int16)
        for box in boxes:
            bx, by, w, h, vx, vy, colour = box
            frame[int(by) : int(by) + h, int(bx) : int(bx) + w] = colour
            bx, by = bx + vx, by + vy
            if not 0 <= bx <= width - w:
                vx, bx = -vx, min(max(bx, 0), width - w)
            if not 0 <= by <= height - h:
                vy, by = -vy, min(max(by, 0), height - h)
            box[:2], box[4:6] = [bx, by], [vx, vy]
        frame += grain[t % len(grain)]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_clips(
    out_dir: Path, seconds: int, fps: int, keyframe_seconds: list[int], resolutions: list[str], threads: int
) -> list[dict]:
    clips = []
    for res in resolutions:
        width, height = RESOLUTIONS[res]
        for gap in keyframe_seconds:
            path = out_dir / f"clip_{res}_gop{gap}s.mp4"
            if not path.exists():
                start = time.perf_counter()
                encode_video(
                    path, synthetic_frames(width, height, seconds * fps), fps=fps,
                    keyframe_interval=gap * fps, crf=23, threads=threads,
                )
                print(f"encoded {path.name} in {time.perf_counter() - start:.1f}s", flush=True)
            info = probe_video(path, backend="pyav")
            clips.append({"name": f"{res}, keyframe every {gap}s", "path": str(path), "resolution": res,
                          "keyframe_seconds": gap, "num_frames": info.num_frames,
                          "keyframes": len(info.keyframe_indices or []), "bytes": path.stat().st_size})
    return clips


# ---------------------------------------------------------------------------------------------
# Loaders under test
# ---------------------------------------------------------------------------------------------


def per_second_indices(num_video_frames: int, fps: float, num_frames: int) -> tuple[list[int], np.ndarray]:
    """CLIP4Clip's pattern: one frame per second (``int(second * fps)``), then ``np.linspace``
    keeps ``num_frames`` of them. Returns (frames read, positions kept among them)."""
    seconds = int((num_video_frames + fps - 1) // fps)
    read = [int(s * fps) for s in range(seconds + 1) if int(s * fps) < num_video_frames]
    keep = np.linspace(0, len(read) - 1, num=num_frames, dtype=int) if len(read) > num_frames else np.arange(len(read))
    return read, keep


def per_second_cv2(path: str, num_frames: int, threads: int) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads])
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        read, keep = per_second_indices(total, fps, num_frames)
        images = []
        for index in read:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            if not ok:
                break
            images.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return np.stack(images)[keep]


def per_second_pyav(path: str, num_frames: int, threads: int) -> np.ndarray:
    """The same pattern without OpenCV: one seek to the preceding keyframe + decode forward per second."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        fps = float(stream.average_rate)
        read, keep = per_second_indices(stream.frames, fps, num_frames)
        step = 1 / (fps * stream.time_base)
        images = []
        for index in read:
            target = int(round(index * step))
            container.seek(target, stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts >= target:
                    images.append(frame.to_ndarray(format="rgb24"))
                    break
    return np.stack(images)[keep]


def decode_all_pyav(path: str, num_frames: int, threads: int) -> np.ndarray:
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        keep = set(sample_indices(stream.frames, num_frames)[0].tolist())
        out = [frame.to_ndarray(format="rgb24") for i, frame in enumerate(container.decode(stream)) if i in keep]
    return np.stack(out)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_decode.json"), help="JSON results file")
    parser.add_argument("--video-dir", type=Path, default=None,
                        help="where clips are written (default: a temp dir); existing clips are reused")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--keyframe-seconds", type=int, nargs="+", default=[10, 2])
    parser.add_argument("--resolutions", nargs="+", default=["720p", "360p"], choices=sorted(RESOLUTIONS))
    parser.add_argument("--num-frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="decoder threads for every loader (1: one DataLoader worker per core)")
    args = parser.parse_args(argv)

    try:
        import cv2

        cv2.setNumThreads(args.threads)
        per_second, per_second_name = per_second_cv2, f"per-second seek (OpenCV {cv2.__version__})"
        per_second_note = "per-second loader: OpenCV cv2.VideoCapture + CAP_PROP_POS_FRAMES, as CLIP4Clip"
    except ImportError:
        per_second, per_second_name = per_second_pyav, "per-second seek (PyAV, no OpenCV)"
        per_second_note = "OpenCV is not installed: the per-second loader uses PyAV seeks in the same pattern"
    print(per_second_note, flush=True)

    temp = None
    video_dir = args.video_dir
    if video_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="calmcap_bench_decode_")
        video_dir = Path(temp.name)
    video_dir.mkdir(parents=True, exist_ok=True)
    clips = make_clips(video_dir, args.seconds, args.fps, args.keyframe_seconds, args.resolutions, threads=2)

    n, th = args.num_frames, args.threads
    methods: dict[str, Callable[[str], object]] = {
        "calmcap decord (sparse)": lambda p: read_frames(p, n, backend="decord", num_threads=th),
        "calmcap pyav (sparse)": lambda p: read_frames(p, n, backend="pyav", num_threads=th),
        per_second_name: lambda p: per_second(p, n, th),
        "decode all (PyAV), keep 12": lambda p: decode_all_pyav(p, n, th),
    }
    results = []
    for clip in clips:
        row = {"clip": clip, "seconds": {}, "all_times": {}}
        # sanity: the sparse backends return identical frames
        a, _ = read_frames(clip["path"], n, backend="decord", num_threads=th)
        b, _ = read_frames(clip["path"], n, backend="pyav", num_threads=th)
        row["decord_equals_pyav"] = bool(np.array_equal(a, b))
        # Repeats are interleaved (A B C D, A B C D, ...) so drift in machine load (this is
        # a shared 2-core VM) hits every loader alike rather than whichever ran during a spike.
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, fn in methods.items():
                start = time.perf_counter()
                fn(clip["path"])
                times[name].append(time.perf_counter() - start)
        for name in methods:
            row["seconds"][name], row["all_times"][name] = statistics.median(times[name]), times[name]
            print(f"  {clip['name']:<26} {name:<40} {row['seconds'][name]:7.3f}s  (runs: "
                  + ", ".join(f"{t:.2f}" for t in times[name]) + ")", flush=True)
        base = row["seconds"]["calmcap decord (sparse)"]
        row["ratio_vs_decord"] = {k: v / base for k, v in row["seconds"].items()}
        results.append(row)

    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": vars(args) | {"out": str(args.out), "video_dir": str(args.video_dir)},
        "note": per_second_note,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    names = list(methods)
    print(f"\n{args.num_frames} frames per clip, {args.seconds}s at {args.fps} fps, median of {args.repeats}, "
          f"{args.threads} decoder thread(s), {os.cpu_count()} CPUs; {per_second_note}.\n")
    print("| clip | " + " | ".join(names) + " | per-second / decord | decode-all / decord | pyav / decord |")
    print("|---" * (len(names) + 4) + "|")
    for row in results:
        s, r = row["seconds"], row["ratio_vs_decord"]
        cells = [f"{s[k]:.3f} s" for k in names]
        ratios = [f"{r[per_second_name]:.1f}x", f"{r['decode all (PyAV), keep 12']:.2f}x",
                  f"{r['calmcap pyav (sparse)']:.2f}x"]
        print(f"| {row['clip']['name']} | " + " | ".join(cells + ratios) + " |")
    print(f"\nJSON: {args.out}")
    if temp is not None:
        temp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
