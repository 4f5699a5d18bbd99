"""The ablation runner end to end on a tiny grid: trains, evaluates, tabulates, resumes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ablation_runner_end_to_end_and_resume(synth_small, tmp_path):
    out = tmp_path / "ablate"
    command = [
        sys.executable, str(REPO / "eval" / "ablate.py"), "--grid", "main", "--variants", "baseline", "calm-vae",
        "--seeds", "0", "--steps", "3", "--out", str(out), "--parallel", "2",
        "--override", f"data.manifest={synth_small}", "--override", "data.synth.enabled=false",
        "--override", "data.frame_cache=null", "--override", "optim.batch_size=8",
        "--override", "data.tokenizer_vocab_size=200", "--override", "eval.every_steps=0",
        "--override", "checkpoint.every_steps=0", "--override", "eval.decode.max_length=6",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    table = json.loads((out / "table-main.json").read_text())["table"]
    assert set(table) == {"baseline", "calm-vae"}
    for label in ("in-domain", "out-of-domain"):
        cell = table["calm-vae"][f"{label}/t2v/R@1"]
        assert 0.0 <= cell["mean"] <= 100.0 and cell["n"] == 1 and "diff" in cell
        assert f"{label}/caption/CIDEr" in table["baseline"]
    results = json.loads((out / "calm-vae_seed0" / "results.json").read_text())
    assert results["splits"]["out-of-domain"]["videos"] == 5
    assert results["decode"]["max_length"] == 6  # the run's own eval.decode, not the library default
    # The anchor branch's state at the last step is tabulated for CALM, absent for the baseline.
    assert 0.0 <= table["calm-vae"]["training/anchor/text_top_share"]["mean"] <= 1.0
    assert not any(key.startswith("training/") for key in table["baseline"])
    text = (out / "table-main.md").read_text()
    assert text.count("| calm-vae |") == 3 and "### anchor branch at the last training step" in text  # in, out, anchors
    assert (out / "ood_gap-main.png").stat().st_size > 0

    # A second invocation finds every run finished and trains nothing.
    logs = {p: p.stat().st_size for p in out.glob("*.log")}
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_size for p in out.glob("*.log")} == logs
    assert json.loads((out / "table-main.json").read_text())["table"] == table


def _ablate_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablate", REPO / "eval" / "ablate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_variants_that_build_the_same_model_share_one_run():
    ablate = _ablate_module()
    key = lambda overrides: ablate.model_key("calmcap-tiny", overrides)  # noqa: E731
    grids = ablate.GRIDS
    # All 55 labels of the world's label set are the default CALM model; K=0 removes the branch like 'none'.
    assert key(grids["anchors"]["K=55"]) == key(grids["main"]["calm-vae"]) == key(grids["labels"]["synth-world"])
    assert key(grids["anchors"]["baseline"]) == key(grids["main"]["baseline"])
    distinct = [grids["main"][v] for v in grids["main"]] + [grids["anchors"]["K=30"], grids["labels"]["coco"]]
    assert len({key(o) for o in distinct}) == len(distinct)
    assert key(["alignment.variant=vae", "alignment.detach_text_dist=false"]) != key(["alignment.variant=vae"])
    assert key(["alignment.variant=vae", "alignment.detach_text_dist=true"]) == key(["alignment.variant=vae"])


def test_significance_is_welchs_t_test_over_seeds():
    ablate = _ablate_module()
    cell = lambda mean, std, n: {"mean": mean, "std": std, "n": n}  # noqa: E731
    # t = 1 / sqrt(1/3 + 1/3) = 1.2247 with 4 degrees of freedom: two-sided p = 0.288.
    assert abs(ablate.welch_p(cell(1.0, 1.0, 3), cell(0.0, 1.0, 3)) - 0.2879) < 1e-3
    assert ablate.welch_p(cell(5.0, 0.1, 3), cell(0.0, 0.1, 3)) < 1e-4
    assert ablate.welch_p(cell(1.0, 1.0, 1), cell(0.0, 1.0, 3)) != ablate.welch_p(cell(1.0, 1.0, 1), cell(0.0, 1.0, 3))
    table = ablate.aggregate(
        [{"variant": v, "seed": s, "splits": {"in-domain": {"t2v/R@1": x}, "out-of-domain": {}}}
         for v, values in (("baseline", [1.0, 1.1, 0.9]), ("calm-vae", [3.0, 3.1, 2.9])) for s, x in enumerate(values)],
        ["baseline", "calm-vae"],
    )
    result = table["calm-vae"]["in-domain/t2v/R@1"]
    assert abs(result["diff"] - 2.0) < 1e-9 and result["significant"] and result["p"] < 0.001
