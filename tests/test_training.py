"""End to end: the Accelerate recipe on a small embedded benchmark, on CPU.

Two processes must evaluate to exactly the numbers of one process, and a run killed after a
checkpoint and resumed must end where an uninterrupted run ends, with the same data order.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_caption.py"
CONFIG = REPO / "recipes" / "configs" / "synth_tiny.yaml"


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _launch_args(num_processes: int) -> list[str]:
    args = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_processes > 1:
        args += ["--multi_gpu", "--main_process_port", "29517"]
    return args


def _overrides(manifest, out, **extra):
    values = {
        "output_dir": out,
        "data.manifest": manifest,
        "data.synth.enabled": "false",
        "data.frame_cache": "null",
        "data.num_workers": "0",
        "data.tokenizer_vocab_size": "200",
        "optim.batch_size": "8",
        "optim.warmup_steps": "2",
        "eval.batch_size": "3",  # 7 val videos: uneven shards that even batching pads
        "eval.max_videos": "null",
        "eval.decode.max_length": "8",
        "log_every_steps": "1",
    }
    values.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def _run(args, timeout=600):
    result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(out, kind):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if json.loads(line)["kind"] == kind]


def test_two_processes_evaluate_exactly_like_one(synth_small, tmp_path):
    from calmcap.checkpoint import read_generation
    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.evaluation import DecodeOptions, evaluate
    from calmcap.models.calm import CALMModel

    out = tmp_path / "run2"
    _run(_launch_args(2) + [str(RECIPE), "--config", str(CONFIG)]
         + _overrides(synth_small, out, **{"optim.max_steps": 4, "eval.every_steps": 0, "checkpoint.every_steps": 0}))
    (final_eval,) = _records(out, "eval")
    train = _records(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    # Each step saw 2 x 8 distinct items: both processes contributed different data.
    assert all(len(r["items"]) == 16 and len(set(r["items"])) == 16 for r in train)

    model = CALMModel.from_pretrained(out / "model")
    # The exported model decodes as its validation did when a caller sets nothing (calmcap caption).
    generation = read_generation(out / "model")
    assert generation.max_length == 8 and generation.num_beams == 3
    dataset = VideoCaptionDataset(synth_small, "val", model.config.num_frames, model.config.image_size, mode="videos")
    single = evaluate(model, dataset, batch_size=5, decode=DecodeOptions(max_length=8), meteor=False)
    assert single.counts["videos"] == 7
    for key, value in single.metrics.items():
        assert final_eval[key] == value, key


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()[-4000:] if process.stderr else "training exited early"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_kill_and_resume_matches_an_uninterrupted_run(synth_small, tmp_path):
    settings = {"optim.max_steps": 10, "eval.every_steps": 0, "eval.at_end": "false", "checkpoint.every_steps": 4,
                "checkpoint.keep": 1}
    straight = tmp_path / "straight"
    _run(_launch_args(1) + [str(RECIPE), "--config", str(CONFIG)] + _overrides(synth_small, straight, **settings))

    crashed = tmp_path / "crashed"
    args = _launch_args(1) + [str(RECIPE), "--config", str(CONFIG)] + _overrides(synth_small, crashed, **settings)
    process = subprocess.Popen(args, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _wait_for(crashed / "checkpoints" / "step_00000004" / "COMPLETE", process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # no clean-up, like a crash
        process.wait()
    assert not (crashed / "model").exists()
    _run(_launch_args(1) + [str(RECIPE), "--config", str(CONFIG), "--resume", "latest"]
         + _overrides(synth_small, crashed, **settings))

    a, b = _records(straight, "train"), _records(crashed, "train")
    assert [r["step"] for r in b] == list(range(1, 11))
    assert [r["items"] for r in a] == [r["items"] for r in b]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    # Only the newest resume state is kept.
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step_00000008"]

    from safetensors.torch import load_file

    wa = load_file(str(straight / "model" / "model.safetensors"))
    wb = load_file(str(crashed / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)
