"""The ablation runner end to end on a tiny grid: trains, evaluates, tabulates, resumes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ablation_runner_end_to_end_and_resume(synth_small, tmp_path):
    out = tmp_path / "ablate"
    splits = ["--split", f"in-domain={synth_small}:test", "--split", f"out-of-domain={synth_small}:test_ood"]
    command = [
        sys.executable, str(REPO / "eval" / "ablate.py"), "--grid", "main", "--variants", "baseline", "calm-vae",
        "--seeds", "0", "--steps", "3", "--out", str(out), "--parallel", "2", *splits,
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
    # The reference row: the pretrained towers, untrained, on both splits (retrieval metrics only).
    zero_shot = json.loads((out / "table-main.json").read_text())["zero_shot"]
    assert set(zero_shot["splits"]) == {"in-domain", "out-of-domain"}
    assert 0.0 <= zero_shot["splits"]["out-of-domain"]["t2v/R@1"] <= 100.0
    assert "caption/CIDEr" not in zero_shot["splits"]["in-domain"]
    assert text.count("zero-shot towers (reference)") == 2
    assert (out / "ood_gap-main.png").stat().st_size > 0 and (out / "scores-main.png").stat().st_size > 0

    # A second invocation finds every run finished and trains nothing.
    logs = {p: p.stat().st_size for p in out.glob("*.log")}
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert {p: p.stat().st_size for p in out.glob("*.log")} == logs
    assert json.loads((out / "table-main.json").read_text())["table"] == table

    # --table-only tabulates the seeds finished so far, names the others, and trains nothing.
    seeds = command.index("--seeds") + 1
    partial = command[:seeds] + ["0", "1"] + command[seeds + 1:] + ["--table-only"]
    third = subprocess.run(partial, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "left out of the table: baseline_seed1, calm-vae_seed1" in third.stdout
    assert {p: p.stat().st_size for p in out.glob("*.log")} == logs and not (out / "baseline_seed1").exists()
    assert json.loads((out / "table-main.json").read_text())["table"] == table

    # A run that fails is named in one line with its error; the others are still tabulated; exit 1.
    for name in ("baseline_seed1", "calm-vae_seed1"):
        (out / name).write_text("a file where the run directory should be\n")
    fourth = subprocess.run(command[:seeds] + ["0", "1"] + command[seeds + 1:], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert fourth.returncode == 1, fourth.stdout[-3000:] + fourth.stderr[-3000:]
    failure = next(line for line in fourth.stdout.splitlines() if "baseline_seed1 FAILED" in line)
    assert "(exit 1)" in failure and "Error" in failure and "baseline_seed1.log" in failure
    assert "2 of 4 runs failed, left out of the table: baseline_seed1, calm-vae_seed1" in fourth.stderr
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
    assert key(grids["anchors"]["K=all"]) == key(grids["main"]["calm-vae"]) == key(grids["labels"]["synth-world"])
    assert key(grids["anchors"]["baseline"]) == key(grids["main"]["baseline"])
    # With S_p detached (the default), direct CE and direct KL have the same gradients: one run.
    assert key(grids["main"]["direct-ce"]) == key(grids["main"]["direct-kl"])
    assert key(["alignment.variant=ce", "alignment.detach_text_dist=false"]) != key(
        ["alignment.variant=kl", "alignment.detach_text_dist=false"])
    distinct = [grids["main"][v] for v in grids["main"] if v != "direct-ce"]
    distinct += [grids["anchors"]["K=30"], grids["labels"]["coco"]]
    assert len({key(o) for o in distinct}) == len(distinct)
    assert key(["alignment.variant=vae", "alignment.detach_text_dist=false"]) != key(["alignment.variant=vae"])
    assert key(["alignment.variant=vae", "alignment.detach_text_dist=true"]) == key(["alignment.variant=vae"])


def test_significance_is_welchs_t_test_over_seeds():
    ablate = _ablate_module()
    cell = lambda mean, std, n: {"mean": mean, "std": std, "n": n}  # noqa: E731
    # t = 1 / sqrt(1/3 + 1/3) = 1.2247 with 4 degrees of freedom: two-sided p = 0.288.
    assert abs(ablate.welch_p(cell(1.0, 1.0, 3), cell(0.0, 1.0, 3)) - 0.2879) < 1e-3
    assert ablate.welch_p(cell(5.0, 0.1, 3), cell(0.0, 0.1, 3)) < 1e-4
    # Its 95 % interval: 1 +- t(0.975, 4) * sqrt(2/3) = 1 +- 2.776 * 0.8165.
    low, high = ablate.welch_interval(cell(1.0, 1.0, 3), cell(0.0, 1.0, 3))
    assert abs(low + 1.2669) < 1e-3 and abs(high - 3.2669) < 1e-3
    assert all(v != v for v in ablate.welch_interval(cell(1.0, 0.0, 1), cell(0.0, 1.0, 3)))  # one seed: undefined
    assert ablate.welch_p(cell(1.0, 1.0, 1), cell(0.0, 1.0, 3)) != ablate.welch_p(cell(1.0, 1.0, 1), cell(0.0, 1.0, 3))
    table = ablate.aggregate(
        [{"variant": v, "seed": s, "splits": {"in-domain": {"t2v/R@1": x}, "out-of-domain": {}}}
         for v, values in (("baseline", [1.0, 1.1, 0.9]), ("calm-vae", [3.0, 3.1, 2.9])) for s, x in enumerate(values)],
        ["baseline", "calm-vae"], ["in-domain", "out-of-domain"],
    )
    result = table["calm-vae"]["in-domain/t2v/R@1"]
    assert abs(result["diff"] - 2.0) < 1e-9 and result["significant"] and result["p"] < 0.001
    assert 1.6 < result["ci95"][0] < 2.0 < result["ci95"][1] < 2.4


def test_holm_correction_over_each_splits_table():
    ablate = _ablate_module()
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) = (0.03, 0.04, 0.04), made monotone; NaN is no test.
    adjusted = ablate.holm([0.04, 0.01, float("nan"), 0.02])
    assert [round(x, 6) for x in (adjusted[1], adjusted[3], adjusted[0])] == [0.03, 0.04, 0.04]
    assert adjusted[2] != adjusted[2]
    # Three variants that each pass alone at p ~ 0.03 do not all survive the correction of one split's table.
    runs = [{"variant": v, "seed": s, "splits": {"in-domain": {"t2v/R@1": x + shift, "caption/CIDEr": 1.0}}}
            for v, shift in (("baseline", 0.0), ("a", 1.3), ("b", 1.3), ("c", 1.3))
            for s, x in enumerate([1.0, 1.5, 0.5])]
    table = ablate.aggregate(runs, ["baseline", "a", "b", "c"], ["in-domain"])
    cell = table["a"]["in-domain/t2v/R@1"]
    assert cell["p"] < 0.05 and cell["p_holm"] > cell["p"] and not cell["significant"]
    # A variant that reuses another's runs repeats its comparisons: it is not counted twice,
    # also when the run it reuses is another grid's variant, absent from this table.
    copies = [{**run, "variant": "a2"} for run in runs if run["variant"] == "a"]
    shared = ablate.aggregate(runs + copies, ["baseline", "a", "b", "c", "a2"], ["in-domain"], shared={"a2": "a"})
    assert shared["a2"]["in-domain/t2v/R@1"]["p_holm"] == shared["a"]["in-domain/t2v/R@1"]["p_holm"] == cell["p_holm"]
    renamed = [{**run, "variant": {"a": "x1"}.get(run["variant"], run["variant"])} for run in runs]
    renamed += [{**run, "variant": "x2"} for run in renamed if run["variant"] == "x1"]
    shared = ablate.aggregate(renamed, ["baseline", "x1", "x2", "b", "c"], ["in-domain"], shared={"x1": "a", "x2": "a"})
    assert shared["x1"]["in-domain/t2v/R@1"]["p_holm"] == shared["x2"]["in-domain/t2v/R@1"]["p_holm"] == cell["p_holm"]
    # Identical CIDEr in every variant: an undefined test, outside the family.
    assert table["a"]["in-domain/caption/CIDEr"]["p_holm"] != table["a"]["in-domain/caption/CIDEr"]["p_holm"]


def test_paper_scale_grid_builds_its_runs_and_configs_without_data(tmp_path, capsys):
    """The msrvtt preset (issue #12 part 6): calmcap-vitb32 from OpenAI's CLIP, MSR-VTT 1k-A and DiDeMo."""
    ablate = _ablate_module()
    out = tmp_path / "study"
    assert ablate.main(["--preset", "msrvtt", "--grid", "main", "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "study_msrvtt_vitb32.yaml" in printed
    assert "data/msrvtt_9k/manifest.jsonl split test" in printed and "data/didemo/manifest.jsonl split test" in printed
    lines = [line for line in printed.splitlines() if "_seed" in line.split(":")[0]]
    assert len(lines) == 5 * 5  # six variants, five seeds; direct-ce is direct-kl with S_p detached
    assert "25 runs for 6 variants x 5 seeds" in printed
    assert any(line.startswith("calm-vae-grad-sp_seed4:") and "alignment.detach_text_dist=false" in line
               for line in lines)
    assert not any("data.synth" in line for line in lines)
    assert not out.exists()  # a dry run writes nothing

    import argparse

    args = argparse.Namespace(config=str(ablate.PRESETS["msrvtt"].config), override=[], preset="msrvtt", split=None)
    config = ablate.base_config(args)
    assert config.model.name == "calmcap-vitb32" and "clip.pretrained=openai" in config.model.overrides
    assert config.eval.every_steps == 0  # nothing is selected on the 1k-A test
