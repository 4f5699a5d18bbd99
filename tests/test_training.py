"""End to end: the Accelerate recipe on a small embedded benchmark, on CPU.

Two processes must evaluate to exactly the numbers of one process, two machines of one process
each must train and evaluate exactly like two processes on one machine, and a run killed after
a checkpoint and resumed must end where an uninterrupted run ends, with the same data order.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_caption.py"
CONFIG = REPO / "recipes" / "configs" / "synth_tiny.yaml"
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate"


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _launch_args(num_processes: int, num_machines: int = 1, machine_rank: int = 0, port: int = 29517) -> list[str]:
    """``accelerate launch`` on CPU; ``num_processes`` counts every machine's processes together.

    Several machines use the shipped ``multi_node.yaml`` with this machine's rank and the loopback
    address in place of the ones to edit (options on the command line win over the file).
    """
    args = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", str(num_machines),
            "--mixed_precision", "no", "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    if num_machines > 1:
        args += ["--config_file", str(ACCELERATE_CONFIGS / "multi_node.yaml"), "--machine_rank", str(machine_rank),
                 "--main_process_ip", "127.0.0.1"]
    if num_processes > 1:
        args += ["--multi_gpu", "--main_process_port", str(port)]
    return args


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == kind]


# The reference run of the multi-process tests: 2 processes on one machine, 4 steps, resume states
# at steps 2 and 4, the final evaluation, and the TensorBoard tracker.
TWO_PROCESS_SETTINGS = {"optim.max_steps": 4, "eval.every_steps": 0, "checkpoint.every_steps": 2,
                        "trackers": "[tensorboard]"}


@pytest.fixture(scope="module")
def two_processes(synth_small, tmp_path_factory) -> Path:
    """The output_dir of the reference run (read only: a test that resumes it works on a copy)."""
    out = tmp_path_factory.mktemp("two_processes") / "run"
    _run(_launch_args(2) + [str(RECIPE), "--config", str(CONFIG)]
         + _overrides(synth_small, out, **TWO_PROCESS_SETTINGS))
    return out


def test_two_processes_evaluate_exactly_like_one(synth_small, two_processes):
    from calmcap.checkpoint import read_generation
    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.evaluation import DecodeOptions, evaluate
    from calmcap.models.calm import CALMModel

    out = two_processes
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


def test_the_schedule_counts_optimizer_steps_whatever_the_number_of_processes(two_processes):
    """Warm-up and decay are in optimizer steps: accelerate's default would step the scheduler
    once per process, and 2 processes would reach lr 0 at step 2 of 4 (issue #15)."""
    from calmcap.training import lr_lambda

    schedule = lr_lambda(warmup_steps=2, total_steps=4, schedule="cosine")
    expected = [1e-3 * schedule(step) for step in (1, 2, 3, 4)]  # a record's lr is the next step's: [1, 1, 0.5, 0] e-3
    assert [r["lr"] for r in _records(two_processes, "train")] == pytest.approx(expected)


def test_two_machines_train_and_evaluate_exactly_like_two_processes(synth_small, two_processes, tmp_path):
    """2 machines x 1 process on the loopback address (recipes/accelerate/multi_node.yaml), both
    ranks launched at once: the same data per step, the same losses, the same evaluation."""
    out = tmp_path / "two_machines"
    port = _free_port()
    command = [str(RECIPE), "--config", str(CONFIG)] + _overrides(synth_small, out, **TWO_PROCESS_SETTINGS)
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]  # files, not pipes: neither rank blocks on output
    machines = []
    try:
        for rank, log in enumerate(logs):
            args = _launch_args(2, num_machines=2, machine_rank=rank, port=port) + command
            with log.open("w") as handle:
                machines.append(subprocess.Popen(args, env=_env(), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                                 start_new_session=True))
        deadline = time.time() + 600
        # Until both are done, or one failed (the other would wait for it until the timeout).
        while any(m.poll() is None for m in machines) and not any(m.returncode for m in machines):
            assert time.time() < deadline, "the two machines did not finish"
            time.sleep(0.2)
    finally:
        for machine in machines:
            if machine.poll() is None:
                os.killpg(machine.pid, signal.SIGKILL)
                machine.wait()
    for rank, (machine, log) in enumerate(zip(machines, logs, strict=True)):
        assert machine.returncode == 0, f"machine {rank}: {log.read_text()[-4000:]}"

    expected, got = _records(two_processes, "train"), _records(out, "train")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(expected, got, strict=True):
        assert b["items"] == a["items"]
        assert {k: v for k, v in b.items() if k.startswith("loss") or k == "lr"} == \
            {k: v for k, v in a.items() if k.startswith("loss") or k == "lr"}
    (expected_eval,), (got_eval,) = _records(two_processes, "eval"), _records(out, "eval")
    assert {k: v for k, v in got_eval.items() if k != "time"} == {k: v for k, v in expected_eval.items() if k != "time"}


def test_resuming_with_another_number_of_processes_is_refused(two_processes, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(two_processes, out)
    # One process, without the launcher (which turns exit status 2 into 1 and adds its traceback).
    # Refused before anything is built: the manifest is never read.
    result = subprocess.run([sys.executable, str(RECIPE), "--config", str(CONFIG), "--resume", "latest"]
                            + _overrides("unused.jsonl", out, **TWO_PROCESS_SETTINGS),
                            env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2, result.stderr[-4000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"train_caption: error: {out / 'checkpoints' / 'step_00000004'}: saved by 2 process(es), this run has 1; "
        "resuming with another number of processes would change each step's batch and data, so launch 2 "
        "process(es) or use a new output_dir"
    )
    assert _records(out, "train") == _records(two_processes, "train")  # nothing was touched


def test_tensorboard_tracker_logs_what_metrics_jsonl_holds(two_processes):
    """``trackers: [tensorboard]``: the main process alone writes events under output_dir/trackers/,
    with the scalars of metrics.jsonl at their steps and the run's settings as hyperparameters."""
    import numpy as np
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = two_processes / "trackers" / two_processes.name
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1  # one writer: rank 0's
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    train, (final_eval,) = _records(two_processes, "train"), _records(two_processes, "eval")
    for key in ("loss", "loss/caption", "loss/retrieval", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], np.float32(r[key])) for r in train], key  # TensorBoard keeps float32
    for key in ("caption/CIDEr", "t2v/R@1", "v2t/R@1"):
        assert [(e.step, e.value) for e in events.Scalars(f"eval/{key}")] == [(4, np.float32(final_eval[key]))]
    assert "train/items" not in events.Tags()["scalars"]  # not a number: metrics.jsonl alone keeps it
    (hparams,) = logdir.glob("*/hparams.yml")
    settings = yaml.safe_load(hparams.read_text())
    assert settings["optim.max_steps"] == 4 and settings["trackers"] == '["tensorboard"]'
    assert settings["eval.decode.max_length"] == 8 and settings["model.init_from"] == "null"


def test_two_processes_resume_exactly_and_tensorboard_shows_each_step_once(two_processes, synth_small, tmp_path):
    """Resumed from its step-2 state with the same 2 processes, the reference run logs steps 3 and 4
    again with the same data and losses; TensorBoard hides the first writer's steps 3 and 4, as
    metrics.jsonl drops their records."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    shutil.copytree(two_processes, out)
    state = out / "checkpoints" / "step_00000002"
    _run(_launch_args(2) + [str(RECIPE), "--config", str(CONFIG), "--resume", str(state)]
         + _overrides(synth_small, out, **TWO_PROCESS_SETTINGS))
    expected, resumed = _records(two_processes, "train"), _records(out, "train")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(expected, resumed, strict=True):
        assert b["items"] == a["items"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    logdir = out / "trackers" / out.name
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # the first run's writer and the resumed one's
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(r["step"], np.float32(r["loss"]))
                                                                          for r in resumed]


@pytest.mark.parametrize("name, distributed_type, num_machines", [
    ("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 1), ("multi_node", "MULTI_GPU", 2)])
def test_the_shipped_accelerate_configs_load(name, distributed_type, num_machines):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type and config.num_machines == num_machines
    assert config.use_cpu is False and config.mixed_precision == "bf16"
    # The file starts with the command that runs it (as recipes/configs/ do), under its own name.
    header = (ACCELERATE_CONFIGS / f"{name}.yaml").read_text().split("\ncompute_environment:")[0]
    assert f"accelerate launch --config_file recipes/accelerate/{name}.yaml" in header


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
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-6)
    # Only the newest resume state is kept.
    assert sorted(p.name for p in (crashed / "checkpoints").iterdir()) == ["step_00000008"]

    from safetensors.torch import load_file

    wa = load_file(str(straight / "model" / "model.safetensors"))
    wb = load_file(str(crashed / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


def test_scst_stage_trains_the_decoder_alone_and_logs_its_rewards(synth_small, tmp_path, make_model, tokenizer):
    """``scst.enabled``: the self-critical step runs in the recipe's loop, only the decoder moves."""
    from calmcap.models.calm import CALMModel

    start = tmp_path / "start"
    make_model(seed=0).save_pretrained(start)
    out = tmp_path / "scst"
    settings = {"model.init_from": start, "scst.enabled": "true", "scst.num_samples": 2, "scst.max_length": 5,
                "optim.max_steps": 2, "optim.lr": "1.0e-2", "eval.every_steps": 0, "eval.at_end": "false",
                "checkpoint.every_steps": 0}
    _run(_launch_args(1) + [str(RECIPE), "--config", str(CONFIG)] + _overrides(synth_small, out, **settings))
    train = _records(out, "train")
    assert [r["step"] for r in train] == [1, 2]
    assert all({"loss", "scst/greedy_cider", "scst/sample_cider"} <= r.keys() for r in train)
    assert not any(key.startswith("loss/") for r in train for key in r)  # no cross-entropy terms
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["best_metric"] is None
    before = dict(CALMModel.from_pretrained(start).named_parameters())
    after = dict(CALMModel.from_pretrained(out / "model").named_parameters())
    assert before.keys() == after.keys()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("decoder.") for name in moved), sorted(moved)[:5]


# ============================================================================ the recipe's helpers


@pytest.fixture(scope="module")
def recipe():
    """recipes/train_caption.py imported as a module (it is a script, outside the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_caption_recipe", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _trainable(recipe, model, **settings) -> set[str]:
    from calmcap.train_config import TrainConfig

    cfg = TrainConfig()
    for key, value in settings.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    recipe.freeze_parameters(model, cfg)
    return {name for name, param in model.named_parameters() if param.requires_grad}


def test_train_mode_keeps_frozen_parts_in_inference_mode(recipe, make_model):
    from calmcap.train_config import TrainConfig

    model = make_model()
    cfg = TrainConfig()
    cfg.train.freeze_image_tower = True
    recipe.freeze_parameters(model, cfg)
    model.eval()
    recipe.train_mode(model)
    assert model.training and model.decoder.training and model.clip.training
    assert not any(module.training for module in model.clip.visual.modules())
    assert all(module.training for name, module in model.clip.named_modules() if not name.startswith("visual"))

    # A frozen BatchNorm (a ResNet tower's) keeps its running statistics through training batches,
    # and a parameterless Dropout follows the module it sits in.
    net = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))
    net[0].requires_grad_(False)
    recipe.train_mode(net)
    assert not net[0].training and net[1].training and net[2].training
    net(torch.randn(8, 3) * 5 + 2)
    assert torch.equal(net[0].running_mean, torch.zeros(3)) and torch.equal(net[0].running_var, torch.ones(3))


def test_freezing_follows_the_run_settings(recipe, make_model):
    # The model itself keeps open_clip's unused temperature frozen: "everything" is the rest.
    everything = {name for name, param in make_model().named_parameters() if param.requires_grad}
    image_tower = {name for name in everything if name.startswith("clip.visual.")}
    text_tower = {name for name in everything if name.startswith("clip.") and name not in image_tower}
    decoder = {name for name in everything if name.startswith("decoder.")}
    assert image_tower and text_tower and decoder

    assert _trainable(recipe, make_model()) == everything
    assert _trainable(recipe, make_model(), train__freeze_image_tower=True) == everything - image_tower
    # A feature cache holds the image tower's outputs: the tower never runs, so it cannot train.
    assert _trainable(recipe, make_model(), data__feature_cache="features") == everything - image_tower
    assert _trainable(recipe, make_model(), train__freeze_text_tower=True) == everything - text_tower
    assert _trainable(recipe, make_model(), train__task="retrieval") == everything - decoder
    assert _trainable(recipe, make_model(), scst__enabled=True) == decoder
    assert _trainable(recipe, make_model(), scst__enabled=True, train__task="retrieval") == decoder


def test_disable_dropout_zeroes_every_dropout(recipe, make_model):
    model = make_model()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert any(m.p > 0 for m in dropouts)
    recipe.disable_dropout(model)
    assert all(m.p == 0.0 for m in dropouts) and model.training


class _Processes:
    """An accelerator stand-in: ``reduce`` adds the other processes' values to this one's."""

    def __init__(self, *others: float) -> None:
        self.others = others
        self.num_processes = 1 + len(others)

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return tensor + sum(self.others)


def test_a_non_finite_loss_on_any_process_fails_the_check_on_all(recipe):
    check = recipe.finite_on_every_process
    assert check(_Processes(), torch.tensor(0.5))
    assert not check(_Processes(), torch.tensor(float("nan")))
    assert not check(_Processes(), torch.tensor(float("-inf")))
    assert check(_Processes(1.0), torch.tensor(0.5))  # the other process was finite too
    assert not check(_Processes(0.0), torch.tensor(0.5))  # the other process had a NaN


def test_non_finite_steps_are_skipped_then_stop_the_run(recipe, tmp_path):
    from types import SimpleNamespace

    from calmcap.errors import CalmcapError
    from calmcap.losses import LOSS_TOTAL
    from calmcap.train_config import TrainConfig
    from calmcap.training import TrainState

    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.ones(2)
    cfg = TrainConfig()
    cfg.train.max_bad_steps = 2
    run = SimpleNamespace(cfg=cfg, state=TrainState(step=7), optimizer=torch.optim.SGD([param], lr=0.1), out=tmp_path)
    terms = {LOSS_TOTAL: torch.tensor(float("nan"))}
    recipe.skip_non_finite_step(run, terms)
    assert param.grad is None  # nothing of the bad step reaches the next one
    assert (run.state.bad_steps_in_a_row, run.state.skipped_steps) == (1, 1)
    with pytest.raises(CalmcapError, match="2 non-finite losses in a row at step 7"):
        recipe.skip_non_finite_step(run, terms)
    assert run.state.skipped_steps == 2
