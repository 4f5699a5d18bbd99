"""eval/bench_gpu_step.py (issue #15) on tiny settings: FLOPs, timings, the correctness check and its verdict.

The default tests run the script's ``main`` on the CPU with calmcap-tiny at batch 2 and the eager
levers, and the end-to-end phase (the recipe itself on a synthetic frame cache); ``torch.compile``
(about two minutes on 2 cores) is covered by a ``slow`` CPU test and a ``gpu`` test.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--override", "model.name=calmcap-tiny", "--override", "data.tokenizer_vocab_size=500",
        "--batch-size", "2", "--warmup", "2", "--steps", "2", "--num-batches", "2", "--check-steps", "3"]
EAGER = ["--variant", "plain=", "--variant", "levers=fused_adamw,no_sync,tf32"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu_step", REPO / "eval" / "bench_gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def run(bench, tmp_path, *args):
    out = tmp_path / "gpu_step.json"
    status = bench.main([*args, "--out", str(out)])
    return status, json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_flops_timings_and_the_check_on_cpu(bench, tmp_path):
    status, result, table = run(bench, tmp_path, *TINY, *EAGER, "--peak-tflops", "2.0")
    assert status == 0, result["errors"]
    plain, levers = result["variants"]
    assert [plain["name"], levers["name"]] == ["plain", "levers"]
    for row in (plain, levers):
        assert "error" not in row
        assert row["flops_per_step"] == row["flops_forward"] + row["flops_backward"]
        assert row["flops_backward"] > row["flops_forward"] > 0  # backward: about twice the forward
        parts = row["flops_forward_by_module"]
        assert parts["image tower"] > 0 and parts["text tower"] > 0 and parts["caption decoder"] > 0
        assert parts["rest of the model"] >= 0 and sum(parts.values()) == row["flops_forward"]
        assert row["clips_per_s"] == pytest.approx(2 / row["step_s"])
        assert row["mfu"] == pytest.approx(row["flops_per_step"] / row["step_s"] / 2.0e12)
        assert row["skipped_steps"] == 0 and row["loss_last"] > 0
    assert plain["flops_per_step"] == levers["flops_per_step"]  # the levers change kernels, not the arithmetic

    check = result["check"]
    assert check["passed"] and check["reference"] == "plain"
    losses = check["reference_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]  # the weights moved: the check can see a wrong update
    row = check["variants"]["levers"]
    assert row["passed"] and row["max_rel_diff_loss"] <= 1e-2
    assert row["update_norm_ratio"] == pytest.approx(1.0, abs=0.01)

    assert "| plain | - |" in table and "| levers | fused_adamw, no_sync, tf32 |" in table
    assert "FlopCounterMode" in table and "| levers |" in table.split("Correctness")[1] and "pass" in table


def test_a_failed_check_fails_the_run(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "UPDATE_NORM_TOLERANCE", -1.0)  # no update can be within it
    status, result, table = run(bench, tmp_path, *TINY, *EAGER, "--steps", "1")
    assert status == 1
    assert result["check"]["passed"] is False and result["check"]["variants"]["levers"]["passed"] is False
    assert "FAIL" in table


@pytest.mark.parametrize("levers", [(), ("fused_adamw", "no_sync")])
def test_a_non_finite_step_is_skipped_with_or_without_host_syncs(bench, levers):
    from calmcap.train_config import load_train_config

    recipe = bench.load_recipe()
    cfg = load_train_config(bench.DEFAULT_CONFIG, ["model.name=calmcap-tiny", "optim.warmup_steps=0"])
    model = bench.build("calmcap-tiny", 500, torch.device("cpu"))
    batch = bench.make_batch(model, 2, 8, 32, torch.device("cpu"), torch.Generator().manual_seed(0))
    poisoned = {**batch, "video": batch["video"].clone()}
    poisoned["video"][0, 0, 0, 0, 0] = float("nan")
    runner = bench.StepRunner(recipe, model, cfg, levers, bf16=False)
    before = bench.flat_trainable(model)
    runner.step(poisoned, seed=0)
    assert int(runner.skipped) == 1 and torch.equal(bench.flat_trainable(model), before)
    assert all(len(state) == 0 or not torch.any(state["exp_avg"]) for state in runner.optimizer.state.values())
    runner.step(batch, seed=1)
    assert int(runner.skipped) == 1 and not torch.equal(bench.flat_trainable(model), before)


def test_compare_catches_a_missing_update_and_a_wrong_loss(bench):
    update = torch.randn(1000)
    reference = ([{"loss": 10.0}, {"loss": 9.0}], update)
    assert bench.compare(reference, ([{"loss": 10.0}, {"loss": 9.01}], update * 1.02), 1e-2)["passed"]
    assert not bench.compare(reference, ([{"loss": 10.0}, {"loss": 10.0}], torch.zeros(1000)), 1e-2)["passed"]
    assert not bench.compare(reference, ([{"loss": 10.0}, {"loss": 9.5}], update), 1e-2)["passed"]
    assert not bench.compare(reference, ([{"loss": 10.0}, {"loss": float("nan")}], update), 1e-2)["passed"]


def test_variants_and_peaks(bench):
    assert bench.parse_variant("fast=compile,fused_adamw,no_sync", "cpu") == ("fast", ("compile", "fused_adamw",
                                                                                        "no_sync"))
    assert bench.parse_variant("plain=", "cpu") == ("plain", ())
    for bad, device in (("x=no_sync", "cuda"), ("x=warp_speed", "cuda"), ("x=fused_sdpa", "cpu"), ("x", "cuda")):
        with pytest.raises(Exception, match="--variant"):
            bench.parse_variant(bad, device)
    assert bench.peak_tflops("NVIDIA H200", None)[0] == 989.4
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None)[0] == 989.4
    assert bench.peak_tflops("NVIDIA H100 PCIe", None)[0] == 756.0
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB", None)[0] == 312.0
    assert bench.peak_tflops("Some Card", None)[0] is None
    assert bench.peak_tflops("Some Card", 100.0) == (100.0, "--peak-tflops")


@pytest.mark.slow
def test_compiled_step_matches_the_plain_one_on_cpu(bench, tmp_path):
    status, result, _ = run(bench, tmp_path, *TINY, "--variant", "plain=",
                            "--variant", "fast=compile,fused_adamw,no_sync,tf32")
    assert status == 0, result["errors"]
    fast = result["variants"][1]
    assert fast["flops_per_step"] == result["variants"][0]["flops_per_step"]
    assert fast["graph_breaks"] >= 0 and fast["unique_graphs"] >= 1
    assert result["check"]["variants"]["fast"]["passed"]


def test_end_to_end_recipe_on_a_synthetic_frame_cache(bench, tmp_path):
    status, result, table = run(bench, tmp_path, *TINY, "--variant", "plain=", "--check-steps", "0", "--e2e",
                                "--e2e-steps", "4", "--e2e-log-every", "2", "--e2e-workers", "0",
                                "--e2e-loader-batches", "2", "--e2e-distinct-clips", "3", "--e2e-cached-frames", "10",
                                "--work-dir", str(tmp_path / "work"))
    assert status == 0, result["errors"]
    e2e = result["e2e"]
    assert e2e["loader"]["clips_per_s"] > 0 and e2e["recipe"]["clips_per_s"] > 0
    assert e2e["recipe"]["steps_timed"] == 2 and e2e["caption_vocab"] <= 500
    assert (tmp_path / "work" / "run" / "model" / "config.json").is_file()  # the recipe ran to its end
    assert "Recipe / step only" in table


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_lever_on_cuda(bench, tmp_path):
    args = [a if a != "cpu" else "cuda" for a in TINY]
    status, result, table = run(bench, tmp_path, *args, "--variant", "plain=",
                                "--variant", "fast=compile,fused_adamw,no_sync,tf32,fused_sdpa",
                                "--peak-tflops", "100", "--no-matmul-ceiling")
    assert status == 0, result["errors"]
    assert all(row["flops_per_step"] > 0 and row["peak_memory_gib"] > 0 for row in result["variants"])
    assert result["check"]["variants"]["fast"]["passed"]
    assert "| fast |" in table
