#!/usr/bin/env python
"""Train calmcap's multi-task model (captions + retrieval) with Hugging Face Accelerate.

    accelerate launch recipes/train_caption.py --config recipes/configs/synth_tiny.yaml [key.sub=value ...]
    accelerate launch recipes/train_caption.py --config ... --resume latest

L = w_cap * L_caption + w_ret * L_InfoNCE + w_align * (L_rec + alpha * L_KL)   (DESIGN.md section 2)

The loop is written out here in accelerate's idioms: ``accumulate``, ``backward``,
``clip_grad_norm_``, ``gather_for_metrics`` (inside ``calmcap.evaluation``), ``save_state`` /
``load_state`` and ``skip_first_batches``. Outputs in ``output_dir``: ``config.yaml`` (the
resolved run config), ``tokenizer.model``, ``metrics.jsonl``, ``curves.png``,
``checkpoints/step_*`` (resume states), ``best/`` (the best model by ``eval.metric``) and
``model/`` (the exported final model: the best one, or the last when nothing was evaluated).
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
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from calmcap.checkpoint import read_generation, save_pretrained
from calmcap.cider import CiderD
from calmcap.config import get_model_config
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
    anchor_offset_statistics,
    anchor_statistics,
    assert_finite,
    MetricsLog,
    TrainState,
    lr_lambda,
    parameter_groups,
    plot_training_curves,
    resolve_resume,
    save_resume_state,
    truncate_metrics_log,
)

logger = logging.getLogger("calmcap.train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/configs/*.yaml)")
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoints/step_* directory")
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the YAML")
    return parser.parse_args(argv)


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
            cache_frames(manifest, cfg.data.frame_cache, image_size, splits=splits, workers=max(1, cfg.data.num_workers))
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
    if cfg.model.init_from:
        model = CALMModel.from_pretrained(cfg.model.init_from)
        model.train()
        return model
    config = get_model_config(cfg.model.name, cfg.model.overrides)
    return CALMModel.create(config, tokenizer)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("calmcap").setLevel(logging.INFO)
    try:
        return train(args)
    except CalmcapError as error:
        if args.debug:
            raise
        print(f"train_caption: error: {error}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config, args.overrides)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.optim.grad_accum_steps)
    out = Path(cfg.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_json(), sort_keys=False), encoding="utf-8")
    set_seed(cfg.seed)
    captioning = cfg.train.task == "caption"

    # ---- data, tokenizer, model
    model_config = get_model_config(cfg.model.name, cfg.model.overrides)
    generate_missing_data(cfg, accelerator, model_config.image_size)
    tokenizer = build_tokenizer(cfg, accelerator, out)
    set_seed(cfg.seed)  # the model's init does not depend on what data generation consumed
    model = build_model(cfg, tokenizer)
    # Exported checkpoints decode as validation did unless a caller says otherwise (a retrieval run
    # keeps its starting model's decoder, and the decoding that was validated with it).
    generation = cfg.eval.decode if captioning else (read_generation(cfg.model.init_from) if cfg.model.init_from else None)
    if cfg.train.freeze_image_tower or cfg.data.feature_cache:
        model.clip.visual.requires_grad_(False)
    if cfg.train.freeze_text_tower:
        for name, param in model.clip.named_parameters():
            if not name.startswith("visual."):
                param.requires_grad_(False)
    if not captioning:
        model.decoder.requires_grad_(False)  # retrieval only: the decoder stays as it is
    if cfg.scst.enabled:
        if not cfg.model.init_from:
            raise CalmcapError("scst.enabled needs model.init_from: a cross-entropy-trained model directory")
        model.requires_grad_(False)  # self-critical stage: the caption decoder only
        model.decoder.requires_grad_(True)
        # Policy gradient scores the captions the policy sampled: sampling runs without dropout,
        # so the teacher-forced pass that gives their log-probabilities must too.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if cfg.train.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)

    if captioning and cfg.data.max_caption_length - 1 > model.config.decoder.max_positions:
        raise CalmcapError(
            f"data.max_caption_length={cfg.data.max_caption_length} needs decoder.max_positions >= "
            f"{cfg.data.max_caption_length - 1} (the architecture has {model.config.decoder.max_positions})"
        )
    source = VideoSource(feature_cache=cfg.data.feature_cache, frame_cache=cfg.data.frame_cache,
                         backend=cfg.data.backend, max_side=cfg.data.max_side)
    train_set = VideoCaptionDataset(cfg.data.manifest, cfg.data.train_split, model.config.num_frames,
                                    model.config.image_size, mode=cfg.data.mode, train=True, seed=cfg.seed, source=source)
    val_entries = read_manifest(cfg.data.manifest, cfg.data.val_split)[: cfg.eval.max_videos]
    val_set = VideoCaptionDataset(cfg.data.manifest, cfg.data.val_split, model.config.num_frames, model.config.image_size,
                                  mode="videos", source=source, entries=val_entries)
    sampler = EpochSampler(len(train_set), seed=cfg.seed)
    collate = Collator(clip_text_tokenizer(model.config.clip.arch), tokenizer if captioning else None,
                       cfg.data.max_caption_length)
    train_loader = DataLoader(train_set, batch_size=cfg.optim.batch_size, sampler=sampler, drop_last=True,
                              num_workers=cfg.data.num_workers, collate_fn=collate)

    optimizer = torch.optim.AdamW(
        parameter_groups(model, cfg.optim.lr, cfg.optim.clip_lr, cfg.optim.weight_decay,
                         cfg.optim.anchor_offset_decay, cfg.optim.anchor_offset_lr),
        betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
    )
    steps_per_epoch = len(train_loader) // max(1, accelerator.num_processes) // cfg.optim.grad_accum_steps
    if steps_per_epoch == 0:
        raise CalmcapError(f"{len(train_set)} training items make no full batch of {cfg.optim.batch_size} per process")
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.warmup_steps, total_steps, cfg.optim.schedule))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    core: CALMModel = accelerator.unwrap_model(model)
    loss_weights = cfg.loss if captioning else type(cfg.loss)(**{**vars(cfg.loss), "caption": 0.0})
    loss_fn = CALMLoss(loss_weights, variant=core.variant)
    cider = None
    if cfg.scst.enabled:  # CIDEr-D document frequencies from the training captions
        cider = CiderD([entry.captions for entry in train_set.entries])

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    resume_from = resolve_resume(out, args.resume)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_from, state.step, state.epoch, state.batches_in_epoch)
        if accelerator.is_main_process:
            truncate_metrics_log(out / "metrics.jsonl", state.step)
    log = MetricsLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    bad_video_log = out / "bad_videos.txt"
    n_params = sum(p.numel() for p in core.parameters() if p.requires_grad)
    logger.info("training %s (%s, %.2f M trainable) for %d steps (%d per epoch) on %d process(es)",
                core.config.name, core.variant, n_params / 1e6, total_steps, steps_per_epoch, accelerator.num_processes)

    def run_eval() -> dict[str, float]:
        result = evaluate(model, val_set, accelerator=accelerator, batch_size=cfg.eval.batch_size,
                          captioning=captioning, decode=cfg.eval.decode, meteor=cfg.eval.meteor)
        metrics = dict(result.metrics)
        metrics["videos_skipped"] = result.counts["videos_skipped"]
        log.write(state.step, metrics, kind="eval")
        score = metrics.get(cfg.eval.metric)
        if score is None:
            raise CalmcapError(f"eval.metric {cfg.eval.metric!r} is not among the metrics: {', '.join(sorted(metrics))}")
        if score > state.best_metric:
            state.best_metric, state.best_step = score, state.step
            assert_finite(core)
            if accelerator.is_main_process:
                save_pretrained(core, out / "best", generation=generation)
        accelerator.wait_for_everyone()
        logger.info("step %d: %s", state.step, ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if "/" in k))
        return metrics

    stop = GracefulStop()
    progress = None
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True)
    model.train()
    window_start, window_clips = time.time(), 0
    while state.step < total_steps:
        loader = skip_first_batches(train_loader, state.batches_in_epoch) if state.batches_in_epoch else train_loader
        # The prepared loader re-seeds its sampler from its own epoch counter on every pass;
        # set it from ours so a resumed run sees the permutation an uninterrupted one saw.
        loader.set_epoch(state.epoch)
        train_set.set_epoch(state.epoch)
        for batch in loader:
            state.batches_in_epoch += 1
            if batch["bad_videos"] and accelerator.is_main_process:
                with bad_video_log.open("a", encoding="utf-8") as handle:
                    handle.writelines(f"{message}\n" for message in batch["bad_videos"])
            # Dropout and the VAE's samples draw from a seed fixed by (seed, epoch, batch, process):
            # a resumed run repeats them exactly, whatever else consumed random numbers meanwhile.
            torch.manual_seed(hash((cfg.seed, state.epoch, state.batches_in_epoch, accelerator.process_index)) % 2**62)
            if cider is not None:
                references = [train_set.entries[i].captions for i in batch["video_index"].tolist()]
                greedy, sampled = sample_captions(core, batch, cfg.scst.num_samples, cfg.scst.max_length,
                                                  cfg.scst.top_p, cfg.scst.temperature)
                advantage, reward_stats = rewards(cider, tokenizer, greedy, sampled, references)
                caption_ids, caption_mask = teacher_forcing_inputs(sampled)
                batch = {k: batch[k] for k in ("video", "frame_features", "video_mask", "item_index") if k in batch}
                batch.update(caption_ids=caption_ids, caption_mask=caption_mask, bad_videos=[],
                             caption_repeats=cfg.scst.num_samples, sample_latent=False)
            with accelerator.accumulate(model):
                outputs = model(batch)
                if cider is not None:
                    scst = scst_loss(outputs["caption_logits"], outputs["caption_targets"], advantage)
                    terms = {LOSS_TOTAL: scst, **{k: torch.tensor(v) for k, v in reward_stats.items()}}
                else:
                    terms = loss_fn(outputs)
                loss = terms[LOSS_TOTAL]
                # A NaN/inf on any process skips the step everywhere (issue #7).
                finite = accelerator.reduce(torch.isfinite(loss.detach()).float().reshape(1), reduction="sum")
                if finite.item() == accelerator.num_processes:
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
                        finite = finite * torch.isfinite(torch.as_tensor(grad_norm)).float()
                if finite.item() < accelerator.num_processes:
                    optimizer.zero_grad(set_to_none=True)
                    state.bad_steps_in_a_row += 1
                    state.skipped_steps += 1
                    logger.warning("step %d: non-finite loss or gradient (%s); step skipped", state.step,
                                   ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
                    if state.bad_steps_in_a_row >= cfg.train.max_bad_steps:
                        raise CalmcapError(
                            f"{state.bad_steps_in_a_row} non-finite losses in a row at step {state.step}; stopping "
                            f"without saving (lower optim.lr or check the data); last good state: {out / 'checkpoints'}"
                        )
                    continue
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            state.bad_steps_in_a_row = 0
            state.step += 1
            window_clips += batch["video_mask"].shape[0] * accelerator.num_processes * cfg.optim.grad_accum_steps
            if state.step % cfg.log_every_steps == 0 or state.step == total_steps:
                elapsed = max(time.time() - window_start, 1e-9)
                values = {k: accelerator.reduce(v.detach().reshape(1), reduction="mean").item() for k, v in terms.items()}
                values.update(anchor_statistics(outputs))  # this process's batch: a diagnostic
                values.update(anchor_offset_statistics(core))
                values.update(lr=scheduler.get_last_lr()[-1], clips_per_second=window_clips / elapsed,
                              logit_scale=core.retrieval.logit_scale.item(), epoch=state.epoch,
                              items=accelerator.gather(batch["item_index"]).tolist())
                log.write(state.step, values)
                if progress is not None:
                    progress.set_postfix(loss=f"{values[LOSS_TOTAL]:.3f}", clips_s=f"{values['clips_per_second']:.1f}")
                window_start, window_clips = time.time(), 0
            if progress is not None:
                progress.update(1)
            if cfg.eval.every_steps and state.step % cfg.eval.every_steps == 0 and state.step < total_steps:
                run_eval()
                model.train()
            if stop.requested(accelerator):
                assert_finite(core)
                path = save_resume_state(accelerator, out, state.step, cfg.checkpoint.keep)
                logger.warning("stopped by a signal at step %d; resume with --resume latest (state: %s)", state.step, path)
                return 143
            if cfg.checkpoint.every_steps and state.step % cfg.checkpoint.every_steps == 0:
                assert_finite(core)
                save_resume_state(accelerator, out, state.step, cfg.checkpoint.keep)
            if state.step >= total_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    if progress is not None:
        progress.close()

    # ---- final evaluation, export, curves
    if cfg.eval.at_end and len(val_set):
        run_eval()
    if accelerator.is_main_process:
        final = out / "model"
        if (out / "best").is_dir():
            tmp = out / ".model.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(out / "best", tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        else:
            assert_finite(core)
            save_pretrained(core, final, generation=generation)
        best = state.best_metric if math.isfinite(state.best_metric) else None  # None: never evaluated
        summary = {"steps": state.step, "best_step": state.best_step, "best_metric": best,
                   "metric": cfg.eval.metric, "skipped_steps": state.skipped_steps,
                   "model": str(final)}
        if cfg.export.clip_weights:
            exported = CALMModel.from_pretrained(final)
            digest = save_clip_weights(exported.clip, cfg.export.clip_weights, logit_scale=exported.retrieval.logit_scale,
                                       dtype=getattr(torch, cfg.export.clip_dtype))
            summary["clip_weights"] = {"path": cfg.export.clip_weights, "sha256": digest}
            logger.info("exported the CLIP towers of %s to %s (sha256 %s)", final, cfg.export.clip_weights, digest)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        plot_training_curves(out / "metrics.jsonl", out / "curves.png")
        logger.info("done: %s", json.dumps(summary))
    log.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
