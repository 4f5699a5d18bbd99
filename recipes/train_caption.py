#!/usr/bin/env python
"""Train calmcap's multi-task model (captions + retrieval) with Hugging Face Accelerate.

    accelerate launch recipes/train_caption.py --config recipes/configs/synth_tiny.yaml [key.sub=value ...]
    accelerate launch recipes/train_caption.py --config ... --resume latest

L = w_cap * L_caption + w_ret * L_InfoNCE + w_align * (L_rec + alpha * L_KL)   (docs/DESIGN.md section 2)

With ``scst.enabled`` the same loop fine-tunes the caption decoder of a trained model by
self-critical sequence training instead (CIDEr-D reward, greedy baseline; ``calmcap.scst``).

The script reads top to bottom: set-up (``setup`` and the ``build_*`` functions it calls), the
step functions (``loss_step``, ``scst_step``) and the guard against non-finite steps, evaluation
(``evaluate_and_keep_best``), saving (``save_checkpoint``, ``save_final``), and ``train``, the
loop that calls them. The loop is written out in accelerate's idioms: ``accumulate``,
``backward``, ``clip_grad_norm_``, ``gather_for_metrics`` (inside ``calmcap.evaluation``),
``save_state`` (inside ``calmcap.training.save_resume_state``) / ``load_state`` and
``skip_first_batches``. Outputs in ``output_dir``: ``config.yaml`` (the resolved run config),
``tokenizer.model``, ``metrics.jsonl``, ``curves.png``, ``bad_videos.txt`` (training videos that
could not be decoded), ``checkpoints/step_*`` (resume states), ``best/`` (the best model by
``eval.metric``), ``model/`` (the exported final model: the best one, or the last when nothing
was evaluated), ``summary.json`` and ``trackers/`` (the files of the ``trackers`` the run logs
to through accelerate's ``init_trackers`` / ``log``, e.g. TensorBoard's events). Exit status: 0
done, 2 a user error (a one-line message), 143 stopped by SIGTERM/SIGINT after saving a resume
state.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader

from calmcap.checkpoint import read_generation, save_pretrained
from calmcap.cider import CiderD
from calmcap.config import DecodeOptions, get_model_config
from calmcap.data.dataset import Collator, VideoCaptionDataset, VideoSource
from calmcap.data.manifest import read_manifest
from calmcap.errors import CalmcapError
from calmcap.evaluation import evaluate
from calmcap.losses import LOSS_TOTAL, CALMLoss
from calmcap.models.calm import CALMModel
from calmcap.models.encoders import clip_text_tokenizer, save_clip_weights
from calmcap.scst import rewards, sample_captions, scst_loss, teacher_forcing_inputs
from calmcap.tokenizer import CaptionTokenizer
from calmcap.train_config import TrainConfig, load_train_config
from calmcap.training import (
    EpochSampler,
    GracefulStop,
    MetricsLog,
    TrainState,
    anchor_offset_statistics,
    anchor_statistics,
    assert_finite,
    check_resume_processes,
    lr_lambda,
    parameter_groups,
    plot_training_curves,
    resolve_resume,
    save_resume_state,
    truncate_metrics_log,
)

if TYPE_CHECKING:
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler

logger = logging.getLogger("calmcap.train")

EXIT_USER_ERROR = 2
EXIT_SIGNALLED = 143  # 128 + SIGTERM, what a shell reports for a process the signal killed
TRACKERS_DIR = "trackers"  # under output_dir: where file-based trackers (TensorBoard, Aim, ...) write


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--config``, ``--resume``, ``--debug`` and ``key.sub=value`` overrides."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/configs/*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoints/step_* directory")
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the YAML")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; a user error (``CalmcapError``) is one line on stderr and exit status 2."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("calmcap").setLevel(logging.INFO)
    try:
        return train(args)
    except CalmcapError as error:
        if args.debug:
            raise
        print(f"train_caption: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


# =============================================================================== set-up


@dataclass
class Run:
    """What set-up builds and the step, evaluation and saving functions share."""

    cfg: TrainConfig
    accelerator: Accelerator
    out: Path  # cfg.output_dir
    model: torch.nn.Module  # prepared by accelerate (wrapped for several processes): forward passes
    core: CALMModel  # the same model unwrapped: sampling, diagnostics, saving
    tokenizer: CaptionTokenizer
    train_set: VideoCaptionDataset
    train_loader: DataLoader  # prepared: this process's shard of each epoch
    val_set: VideoCaptionDataset
    optimizer: AcceleratedOptimizer
    scheduler: AcceleratedScheduler
    loss_fn: CALMLoss
    cider: CiderD | None  # SCST's reward (document frequencies of the training captions); else None
    generation: DecodeOptions | None  # the decoding saved into exported checkpoints
    state: TrainState  # saved with every resume state
    log: MetricsLog
    steps_per_epoch: int
    total_steps: int

    @property
    def captioning(self) -> bool:
        """False for a retrieval-only run (``train.task: retrieval``)."""
        return self.cfg.train.task == "caption"


def setup(args: argparse.Namespace) -> Run:
    """Everything before the first step: config, data, tokenizer, model, optimiser, resume state."""
    cfg = load_train_config(args.config, args.overrides)
    check_trackers_installed(cfg.trackers)
    out = Path(cfg.output_dir)
    # The scheduler is stepped by hand once per optimizer step: accelerate's default steps it once
    # per process, which would run the warm-up and decay num_processes times too fast (issue #15).
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.optim.grad_accum_steps, step_scheduler_with_optimizer=False,
        log_with=cfg.trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TRACKERS_DIR)),
    )
    # Checked before anything is built: a resume state saved by another number of processes is refused.
    resume_from = resolve_resume(out, args.resume)
    if resume_from is not None:
        check_resume_processes(resume_from, accelerator.num_processes)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_json(), sort_keys=False), encoding="utf-8")
    set_seed(cfg.seed)
    captioning = cfg.train.task == "caption"

    generate_missing_data(cfg, accelerator, get_model_config(cfg.model.name, cfg.model.overrides).image_size)
    tokenizer = build_tokenizer(cfg, accelerator, out)
    set_seed(cfg.seed)  # the model's init does not depend on what data generation consumed
    model = build_model(cfg, tokenizer)
    check_settings(cfg, model)
    # Exported checkpoints decode as validation did unless a caller says otherwise (a retrieval run
    # keeps its starting model's decoder, and the decoding that was validated with it).
    generation = cfg.eval.decode if captioning else None
    if not captioning and cfg.model.init_from:
        generation = read_generation(cfg.model.init_from)
    freeze_parameters(model, cfg)
    if cfg.scst.enabled:
        # Policy gradient scores the captions the policy sampled: sampling runs without dropout,
        # so the teacher-forced pass that gives their log-probabilities must too.
        disable_dropout(model)
    if cfg.train.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)

    train_set, train_loader, val_set = build_data(cfg, model, tokenizer)
    steps_per_epoch, total_steps = count_steps(cfg, accelerator, train_loader, len(train_set))
    optimizer, scheduler = build_optimizer(cfg, model, total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    core: CALMModel = accelerator.unwrap_model(model)
    loss_weights = cfg.loss if captioning else type(cfg.loss)(**{**vars(cfg.loss), "caption": 0.0})
    loss_fn = CALMLoss(loss_weights, variant=core.variant)
    cider = CiderD([entry.captions for entry in train_set.entries]) if cfg.scst.enabled else None

    state = TrainState()
    accelerator.register_for_checkpointing(state)  # save_state/load_state carry it with the model and optimiser
    resume(accelerator, state, out, resume_from)
    # The run's name is the tracker project (TensorBoard: output_dir/trackers/<name>/); only the main
    # process logs. A resumed run hides from TensorBoard what was logged after its state, as it drops
    # those records from metrics.jsonl: the run logs them again.
    init_kwargs = {"tensorboard": {"purge_step": state.step + 1}} if resume_from is not None else {}
    accelerator.init_trackers(out.resolve().name, config=cfg.tracker_config(), init_kwargs=init_kwargs)
    log = MetricsLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    n_params = sum(p.numel() for p in core.parameters() if p.requires_grad)
    logger.info("training %s (%s, %.2f M trainable) for %d steps (%d per epoch) on %d process(es)",
                core.config.name, core.variant, n_params / 1e6, total_steps, steps_per_epoch, accelerator.num_processes)
    return Run(cfg=cfg, accelerator=accelerator, out=out, model=model, core=core, tokenizer=tokenizer,
               train_set=train_set, train_loader=train_loader, val_set=val_set, optimizer=optimizer,
               scheduler=scheduler, loss_fn=loss_fn, cider=cider, generation=generation, state=state, log=log,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def check_trackers_installed(trackers: list[str]) -> None:
    """A tracker the config names but whose package is missing is an error (accelerate would skip it)."""
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in trackers:
        if name not in available:
            raise CalmcapError(f"trackers: {name} is not installed (pip install {name}), or remove it from trackers")


def generate_missing_data(cfg: TrainConfig, accelerator: Accelerator, image_size: int) -> None:
    """Generate the embedded benchmark and the frame cache if the config asks and they are missing."""
    manifest = Path(cfg.data.manifest)
    if accelerator.is_main_process:
        if cfg.data.synth.enabled and not manifest.is_file():
            s = cfg.data.synth
            if s.corpus == "pretrain":
                from calmcap.data.pretrain_corpus import generate_pretrain_corpus

                logger.info("generating the pretraining corpus into %s", manifest.parent)
                generate_pretrain_corpus(manifest.parent, seed=s.seed, num_videos=s.num_videos, num_val=s.num_val,
                                         workers=s.workers)
            else:
                from calmcap.data.synth import generate_benchmark

                logger.info("generating the embedded benchmark into %s", manifest.parent)
                generate_benchmark(manifest.parent, seed=s.seed, num_train=s.num_train, num_val=s.num_val,
                                   num_test=s.num_test, num_test_ood=s.num_test_ood,
                                   num_test_ood_visual=s.num_test_ood_visual, num_test_ood_text=s.num_test_ood_text,
                                   workers=s.workers)
        if cfg.data.frame_cache:
            from calmcap.data.frame_cache import cache_frames

            splits = sorted({cfg.data.train_split, cfg.data.val_split})
            cache_frames(manifest, cfg.data.frame_cache, image_size, splits=splits,
                         workers=max(1, cfg.data.num_workers))
    accelerator.wait_for_everyone()


def build_tokenizer(cfg: TrainConfig, accelerator: Accelerator, out: Path) -> CaptionTokenizer:
    """Train the caption tokenizer on the training captions once; reuse it on resume."""
    path = out / "tokenizer.model"
    if cfg.model.init_from:  # continue with the starting model's own vocabulary
        tokenizer = CaptionTokenizer.load(Path(cfg.model.init_from) / "tokenizer.model")
        if accelerator.is_main_process:
            tokenizer.save(path)
        return tokenizer
    if accelerator.is_main_process and not path.is_file():
        entries = read_manifest(cfg.data.manifest, cfg.data.train_split)
        CaptionTokenizer.train([c for e in entries for c in e.captions], cfg.data.tokenizer_vocab_size).save(path)
    accelerator.wait_for_everyone()
    return CaptionTokenizer.load(path)


def build_model(cfg: TrainConfig, tokenizer: CaptionTokenizer) -> CALMModel:
    """The starting model (``model.init_from``) or a new one of the architecture ``model.name``."""
    if cfg.model.init_from:
        return CALMModel.from_pretrained(cfg.model.init_from)
    config = get_model_config(cfg.model.name, cfg.model.overrides)
    return CALMModel.create(config, tokenizer)


def check_settings(cfg: TrainConfig, model: CALMModel) -> None:
    """Settings that are valid alone but not together, or not with this architecture."""
    if cfg.scst.enabled and not cfg.model.init_from:
        raise CalmcapError("scst.enabled needs model.init_from: a cross-entropy-trained model directory")
    if cfg.train.task == "caption" and cfg.data.max_caption_length - 1 > model.config.decoder.max_positions:
        raise CalmcapError(
            f"data.max_caption_length={cfg.data.max_caption_length} needs decoder.max_positions >= "
            f"{cfg.data.max_caption_length - 1} (the architecture has {model.config.decoder.max_positions})"
        )


def freeze_parameters(model: CALMModel, cfg: TrainConfig) -> None:
    """Turn gradients off for what this run keeps as it is.

    The image tower with ``train.freeze_image_tower``, or when ``data.feature_cache`` holds its
    outputs (then it never runs); the text tower with ``train.freeze_text_tower``; the decoder in
    a retrieval-only run; everything but the decoder in the SCST stage, so the starting model's
    retrieval scores are kept.
    """
    if cfg.train.freeze_image_tower or cfg.data.feature_cache:
        model.clip.visual.requires_grad_(False)
    if cfg.train.freeze_text_tower:
        for name, param in model.clip.named_parameters():
            if not name.startswith("visual."):
                param.requires_grad_(False)
    if cfg.train.task != "caption":
        model.decoder.requires_grad_(False)
    if cfg.scst.enabled:
        model.requires_grad_(False)
        model.decoder.requires_grad_(True)


def train_mode(model: torch.nn.Module) -> None:
    """Training mode for what trains; inference mode for every sub-module none of whose parameters train.

    A frozen tower keeps its BatchNorm running statistics (a ResNet image tower's would otherwise
    drift with each training batch while its weights stay) and runs without dropout, as it
    will at inference. A module without parameters (a bare ``Dropout``) follows its parent.
    """
    model.train()
    pending = [model]
    while pending:
        module = pending.pop()
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
        else:
            pending.extend(module.children())


def disable_dropout(model: torch.nn.Module) -> None:
    """Set the probability of every ``Dropout`` in ``model`` to 0 (training mode otherwise unchanged)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def build_data(cfg: TrainConfig, model: CALMModel,
               tokenizer: CaptionTokenizer) -> tuple[VideoCaptionDataset, DataLoader, VideoCaptionDataset]:
    """The training set and its loader (not yet prepared), and the validation videos."""
    source = VideoSource(feature_cache=cfg.data.feature_cache, frame_cache=cfg.data.frame_cache,
                         backend=cfg.data.backend, max_side=cfg.data.max_side)
    num_frames, image_size = model.config.num_frames, model.config.image_size
    train_set = VideoCaptionDataset(cfg.data.manifest, cfg.data.train_split, num_frames, image_size,
                                    mode=cfg.data.mode, train=True, seed=cfg.seed, source=source)
    val_entries = read_manifest(cfg.data.manifest, cfg.data.val_split)[: cfg.eval.max_videos]
    val_set = VideoCaptionDataset(cfg.data.manifest, cfg.data.val_split, num_frames, image_size,
                                  mode="videos", source=source, entries=val_entries)
    # An order drawn from (seed, epoch) alone: a resumed run sees the batches an uninterrupted one saw.
    sampler = EpochSampler(len(train_set), seed=cfg.seed)
    collate = Collator(clip_text_tokenizer(model.config.clip.arch), tokenizer if cfg.train.task == "caption" else None,
                       cfg.data.max_caption_length)
    train_loader = DataLoader(train_set, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                              num_workers=cfg.data.num_workers, collate_fn=collate)
    return train_set, train_loader, val_set


def count_steps(cfg: TrainConfig, accelerator: Accelerator, train_loader: DataLoader,
                num_items: int) -> tuple[int, int]:
    """Optimizer steps per epoch and in the whole run (``optim.max_steps``, else ``optim.epochs``)."""
    # The loader is not prepared yet: its batches are every process's together.
    steps_per_epoch = len(train_loader) // max(1, accelerator.num_processes) // cfg.optim.grad_accum_steps
    if steps_per_epoch == 0:
        raise CalmcapError(f"{num_items} training items make no full batch of {cfg.optim.batch_size} per process")
    return steps_per_epoch, cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch


def build_optimizer(cfg: TrainConfig, model: CALMModel,
                    total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters' groups, and the warm-up + decay schedule."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg.optim.lr, cfg.optim.clip_lr, cfg.optim.weight_decay,
                         cfg.optim.anchor_offset_decay, cfg.optim.anchor_offset_lr),
        betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
    )
    schedule = lr_lambda(cfg.optim.warmup_steps, total_steps, cfg.optim.schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler


def resume(accelerator: Accelerator, state: TrainState, out: Path, resume_from: Path | None) -> None:
    """Load the resume state ``--resume`` named (model, optimiser, scheduler, RNGs, ``state``), if any.

    ``metrics.jsonl`` loses its records after the resumed step: the run writes them again.
    """
    if resume_from is None:
        return
    accelerator.load_state(str(resume_from))
    logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, state.step, state.epoch,
                state.batches_in_epoch)
    if accelerator.is_main_process:
        truncate_metrics_log(out / "metrics.jsonl", state.step)


# =============================================================================== one step


@dataclass
class StepOutput:
    """One micro-batch's forward pass: the loss terms (the total under ``LOSS_TOTAL``) and the model's outputs."""

    terms: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]

    @property
    def loss(self) -> torch.Tensor:
        """The scalar to back-propagate."""
        return self.terms[LOSS_TOTAL]


def loss_step(run: Run, batch: dict[str, Any]) -> StepOutput:
    """Cross-entropy captioning and/or retrieval: the weighted multi-task loss of one micro-batch."""
    outputs = run.model(batch)
    return StepOutput(run.loss_fn(outputs), outputs)


def scst_step(run: Run, batch: dict[str, Any]) -> StepOutput:
    """Self-critical sequence training (Rennie et al., 2017) on one micro-batch.

    ``scst.num_samples`` captions are sampled per video and one is decoded greedily (no
    gradients, the unwrapped model); each sample's advantage is its CIDEr-D minus the greedy
    caption's, and the loss weighs the sample's log-probability by it. The teacher-forced pass
    that gives those log-probabilities goes through the prepared model, so its gradients are
    synchronised like any other step's. The reward statistics ride along as loss terms, to be
    logged.
    """
    scst = run.cfg.scst
    references = [run.train_set.entries[i].captions for i in batch["video_index"].tolist()]
    greedy, sampled = sample_captions(run.core, batch, scst.num_samples, scst.max_length, scst.top_p, scst.temperature)
    advantage, reward_stats = rewards(run.cider, run.tokenizer, greedy, sampled, references)
    caption_ids, caption_mask = teacher_forcing_inputs(sampled)
    # The videos of the batch with the sampled captions in place of the references. The latent is
    # the VAE's mean (sample_latent=False), as in the generation that produced the samples.
    policy_batch = {k: batch[k] for k in ("video", "frame_features", "video_mask", "item_index") if k in batch}
    policy_batch.update(caption_ids=caption_ids, caption_mask=caption_mask, bad_videos=[],
                        caption_repeats=scst.num_samples, sample_latent=False)
    outputs = run.model(policy_batch)
    loss = scst_loss(outputs["caption_logits"], outputs["caption_targets"], advantage)
    return StepOutput({LOSS_TOTAL: loss, **{k: torch.tensor(v) for k, v in reward_stats.items()}}, outputs)


def finite_on_every_process(accelerator: Accelerator, value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every process.

    One reduction gives all processes the same answer, so a NaN/inf on any one of them skips the
    step on all of them and their models stay identical (issue #7).
    """
    finite = accelerator.reduce(torch.isfinite(value.detach()).float().reshape(1), reduction="sum")
    return finite.item() == accelerator.num_processes


def skip_non_finite_step(run: Run, terms: dict[str, torch.Tensor]) -> None:
    """Drop the gradients of a step whose loss or gradient is not finite, and count it.

    ``train.max_bad_steps`` in a row stop the run with a ``CalmcapError`` before anything else
    is saved: the weights may already be poisoned, and the last resume state is the good one.
    """
    state = run.state
    run.optimizer.zero_grad(set_to_none=True)
    state.bad_steps_in_a_row += 1
    state.skipped_steps += 1
    logger.warning("step %d: non-finite loss or gradient (%s); step skipped", state.step,
                   ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
    if state.bad_steps_in_a_row >= run.cfg.train.max_bad_steps:
        raise CalmcapError(
            f"{state.bad_steps_in_a_row} non-finite losses in a row at step {state.step}; stopping "
            f"without saving (lower optim.lr or check the data); last good state: {run.out / 'checkpoints'}"
        )


def log_train_step(run: Run, step: StepOutput, batch: dict[str, Any], clips_per_second: float) -> dict[str, Any]:
    """Write one ``kind: train`` record: the loss terms averaged over processes, diagnostics, items seen."""
    accelerator, core = run.accelerator, run.core
    values = {k: accelerator.reduce(v.detach().reshape(1), reduction="mean").item() for k, v in step.terms.items()}
    values.update(anchor_statistics(step.outputs))  # this process's batch: a diagnostic
    values.update(anchor_offset_statistics(core))
    values.update(lr=run.scheduler.get_last_lr()[-1], clips_per_second=clips_per_second,
                  logit_scale=core.retrieval.logit_scale.item(), epoch=run.state.epoch,
                  items=accelerator.gather(batch["item_index"]).tolist())
    log_metrics(run, values)
    return values


def log_metrics(run: Run, values: dict[str, Any], kind: str = "train") -> None:
    """One record in ``metrics.jsonl`` (always) and its numbers, as ``kind/key``, to the run's trackers."""
    run.log.write(run.state.step, values, kind=kind)
    scalars = {f"{kind}/{key}": value for key, value in values.items() if isinstance(value, (int, float))}
    run.accelerator.log(scalars, step=run.state.step)  # a no-op without trackers; the main process alone logs


def record_bad_videos(run: Run, messages: list[str]) -> None:
    """Append the batch's undecodable training videos (one ``path: reason`` a line) to bad_videos.txt."""
    if messages and run.accelerator.is_main_process:
        with (run.out / "bad_videos.txt").open("a", encoding="utf-8") as handle:
            handle.writelines(f"{message}\n" for message in messages)


# =============================================================================== evaluation


def evaluate_and_keep_best(run: Run) -> dict[str, float]:
    """Validate, write a ``kind: eval`` record, and save ``best/`` when ``eval.metric`` improved."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    result = evaluate(run.model, run.val_set, accelerator=accelerator, batch_size=cfg.eval.batch_size,
                      captioning=run.captioning, decode=cfg.eval.decode, meteor=cfg.eval.meteor)
    metrics = dict(result.metrics)
    metrics["videos_skipped"] = result.counts["videos_skipped"]
    log_metrics(run, metrics, kind="eval")
    score = metrics.get(cfg.eval.metric)
    if score is None:
        raise CalmcapError(f"eval.metric {cfg.eval.metric!r} is not among the metrics: {', '.join(sorted(metrics))}")
    if score > state.best_metric:
        state.best_metric, state.best_step = score, state.step
        assert_finite(run.core)
        if accelerator.is_main_process:
            save_pretrained(run.core, run.out / "best", generation=run.generation)
    accelerator.wait_for_everyone()
    logger.info("step %d: %s", state.step, ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if "/" in k))
    return metrics


# =============================================================================== saving


def save_checkpoint(run: Run) -> Path:
    """A resume state of the current step (``checkpoints/step_*``), refused if a weight is not finite."""
    assert_finite(run.core)
    return save_resume_state(run.accelerator, run.out, run.state.step, run.cfg.checkpoint.keep)


def export_model(run: Run) -> Path:
    """``model/``: a copy of ``best/``, or the last weights when nothing was evaluated (main process)."""
    final = run.out / "model"
    if (run.out / "best").is_dir():
        # Copy aside, then rename: a kill mid-copy never leaves a half-written model/.
        tmp = run.out / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(run.out / "best", tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    else:
        assert_finite(run.core)
        save_pretrained(run.core, final, generation=run.generation)
    return final


def save_final(run: Run) -> dict[str, Any]:
    """Main process: ``model/``, the CLIP towers (``export.clip_weights``), ``summary.json``, ``curves.png``."""
    cfg, state = run.cfg, run.state
    final = export_model(run)
    best = state.best_metric if math.isfinite(state.best_metric) else None  # None: never evaluated
    summary: dict[str, Any] = {"steps": state.step, "best_step": state.best_step, "best_metric": best,
                               "metric": cfg.eval.metric, "skipped_steps": state.skipped_steps, "model": str(final)}
    if cfg.export.clip_weights:
        exported = CALMModel.from_pretrained(final)  # the exported model, which may be best/ rather than the last
        digest = save_clip_weights(exported.clip, cfg.export.clip_weights, logit_scale=exported.retrieval.logit_scale,
                                   dtype=getattr(torch, cfg.export.clip_dtype))
        summary["clip_weights"] = {"path": cfg.export.clip_weights, "sha256": digest}
        logger.info("exported the CLIP towers of %s to %s (sha256 %s)", final, cfg.export.clip_weights, digest)
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot_training_curves(run.out / "metrics.jsonl", run.out / "curves.png")
    logger.info("done: %s", json.dumps(summary))
    return summary


# =============================================================================== the loop


def train(args: argparse.Namespace) -> int:
    """Set up, train to ``total_steps``, evaluate and save; the exit status (143 after a signal)."""
    run = setup(args)
    cfg, accelerator, model, state = run.cfg, run.accelerator, run.model, run.state
    optimizer, scheduler = run.optimizer, run.scheduler
    step_fn: Callable[[Run, dict[str, Any]], StepOutput] = scst_step if cfg.scst.enabled else loss_step
    stop = GracefulStop()
    progress = None
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=run.total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    train_mode(model)
    window_start, window_clips = time.time(), 0  # clips per second since the last log line
    while state.step < run.total_steps:
        loader = run.train_loader
        if state.batches_in_epoch:  # resumed mid-epoch: the batches before the resume state were consumed
            loader = skip_first_batches(run.train_loader, state.batches_in_epoch)
        # The prepared loader re-seeds its sampler from its own epoch counter on every pass;
        # set it from ours so a resumed run sees the permutation an uninterrupted one saw.
        loader.set_epoch(state.epoch)
        run.train_set.set_epoch(state.epoch)
        for batch in loader:
            state.batches_in_epoch += 1
            record_bad_videos(run, batch["bad_videos"])
            # Dropout and the VAE's samples draw from a seed fixed by (seed, epoch, batch, process):
            # a resumed run repeats them exactly, whatever else consumed random numbers meanwhile.
            torch.manual_seed(hash((cfg.seed, state.epoch, state.batches_in_epoch, accelerator.process_index)) % 2**62)
            with accelerator.accumulate(model):
                step = step_fn(run, batch)
                finite = finite_on_every_process(accelerator, step.loss)
                if finite:
                    accelerator.backward(step.loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
                        # Gradients are synchronised by now: every process sees the same norm.
                        finite = bool(torch.isfinite(torch.as_tensor(grad_norm)))
                if not finite:
                    skip_non_finite_step(run, step.terms)
                    continue
                optimizer.step()
                if accelerator.sync_gradients:  # once per optimizer step (step_scheduler_with_optimizer=False)
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue  # a micro-batch of an accumulated step: no optimizer step yet
            state.bad_steps_in_a_row = 0
            state.step += 1
            window_clips += batch["video_mask"].shape[0] * accelerator.num_processes * cfg.optim.grad_accum_steps
            if state.step % cfg.log_every_steps == 0 or state.step == run.total_steps:
                values = log_train_step(run, step, batch, window_clips / max(time.time() - window_start, 1e-9))
                if progress is not None:
                    progress.set_postfix(loss=f"{values[LOSS_TOTAL]:.3f}", clips_s=f"{values['clips_per_second']:.1f}")
                window_start, window_clips = time.time(), 0
            if progress is not None:
                progress.update(1)
            if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < run.total_steps:
                evaluate_and_keep_best(run)
                train_mode(model)
            if stop.requested(accelerator):
                path = save_checkpoint(run)
                logger.warning("stopped by a signal at step %d; resume with --resume latest (state: %s)",
                               state.step, path)
                accelerator.end_training()
                return EXIT_SIGNALLED
            if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                save_checkpoint(run)
            if state.step >= run.total_steps:
                break
        else:  # the epoch ran out before total_steps
            state.epoch += 1
            state.batches_in_epoch = 0
    if progress is not None:
        progress.close()

    if cfg.eval.at_end and len(run.val_set):
        evaluate_and_keep_best(run)
    if accelerator.is_main_process:
        save_final(run)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
