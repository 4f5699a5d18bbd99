"""Faults in training: SIGTERM, a kill during a checkpoint write, NaN losses (issue #7)."""

import os
import signal
import subprocess
import time

import pytest

from calmcap.training import COMPLETE_MARKER, list_checkpoints, resolve_resume
from tests.test_training import CONFIG, RECIPE, REPO, _env, _launch_args, _overrides, _records, _run


def test_sigterm_saves_a_resume_state_and_resume_finishes(synth_small, tmp_path):
    out = tmp_path / "run"
    settings = {"optim.max_steps": 40, "eval.every_steps": 0, "eval.at_end": "false", "checkpoint.every_steps": 0}
    args = _launch_args(1) + [str(RECIPE), "--config", str(CONFIG)] + _overrides(synth_small, out, **settings)
    process = subprocess.Popen(args, env=_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    log = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 3):
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "resume with --resume latest" in stderr
    (state,) = list_checkpoints(out)  # no periodic checkpoints: this one is the signal's
    stopped_at = int(state.name.split("_")[1])
    assert 3 <= stopped_at < 40
    _run(_launch_args(1) + [str(RECIPE), "--config", str(CONFIG), "--resume", "latest"]
         + _overrides(synth_small, out, **settings))
    steps = [r["step"] for r in _records(out, "train")]
    assert steps == list(range(1, 41))  # nothing lost, nothing repeated
    assert (out / "model" / "model.safetensors").is_file()


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((100, True), (200, True), (300, False)):
        path = root / f"step_{step:08d}"
        path.mkdir(parents=True)
        if complete:
            (path / COMPLETE_MARKER).write_text("{}")
    (root / "step_00000400.tmp").mkdir()  # killed while accelerate was writing
    assert resolve_resume(tmp_path, "latest").name == "step_00000200"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000100", "step_00000200"]
    with pytest.raises(Exception, match="not a complete resume state"):
        resolve_resume(tmp_path, str(root / "step_00000300"))
    assert resolve_resume(tmp_path / "elsewhere", "latest") is None


def test_repeated_nan_losses_stop_the_run_without_saving(synth_small, tmp_path):
    out = tmp_path / "nan"
    # A learning rate this large overflows the weights after the first update.
    settings = {"optim.max_steps": 30, "optim.lr": "1.0e+30", "optim.clip_lr": "1.0e+30", "optim.warmup_steps": 0,
                "optim.grad_clip": 0, "eval.every_steps": 0, "checkpoint.every_steps": 0, "train.max_bad_steps": 3}
    command = _launch_args(1) + [str(RECIPE), "--config", str(CONFIG)] + _overrides(synth_small, out, **settings)
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode != 0
    assert "non-finite losses in a row" in result.stderr
    assert "step skipped" in result.stderr
    assert not (out / "model").exists() and not (out / "best").exists()
