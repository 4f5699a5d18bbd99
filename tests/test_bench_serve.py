"""eval/bench_serve.py end to end on tiny settings: the tiny checkpoint, a synth clip, 2 clients."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_pipeline import checkpoint_dirs, manifest_videos

pytest.importorskip("fastapi", reason="calmcap serve needs FastAPI (pip install 'calmcap[serve]')")
pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]


def test_bench_serve_runs_and_agrees_with_calmcap_caption(tmp_path, tmp_path_factory, make_model, synth_small):
    model = checkpoint_dirs(tmp_path_factory, make_model)["calm"]
    clip = manifest_videos(synth_small, "test")[0]
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "eval" / "bench_serve.py"), "--model", str(model), "--clip", str(clip),
         "--work-dir", str(tmp_path / "work"), "--out", str(out), "--requests", "2", "--videos", "4",
         "--clients", "2", "--max-batch-size", "2", "--num-frames", "8", "--max-length", "8"],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    latency = data["latency"]
    assert latency["round_trip"] >= latency["total"] > 0 and latency["decode_plus_tower"] > 0
    for run in ("concurrent", "one_at_a_time"):
        assert data[run]["videos"] == 4 and data[run]["videos_per_second"] > 0
        assert data[run]["captions_differing_from_cli"] == 0
    assert data["one_at_a_time"]["batch_sizes"] == {"1": 4}
    assert data["cli_batch"]["videos_per_second"] > 0
    assert "round trip / (decode + image tower)" in result.stdout
