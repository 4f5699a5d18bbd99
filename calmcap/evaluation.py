"""Evaluate a model on one split: captions for every video, every caption ranked against every video.

Works on one process or under Accelerate. Distributed evaluation returns exactly the numbers
of a single process: each process encodes its shard, ``gather_for_metrics`` drops the samples
that even batching duplicated, and results are put back in dataset order by item index
before anything is scored (docs/DESIGN.md section 5). Metrics are computed once, on the main
process, and shared with the others.

Videos that cannot be decoded are counted and listed in the result (``bad_videos``) and the
evaluation completes. They are not captioned (caption metrics cover the decoded videos), but
they stay in the retrieval gallery as misses: ranked last for every caption, so their own
captions miss in t2v and the video itself misses as a v2t query (:func:`calmcap.metrics.rank_last`;
dropping them would shrink the gallery and raise R@K, issue #12).

Where the manifest holds each video's attributes (the embedded benchmark), the captions are
also scored for naming them (:mod:`calmcap.attributes`, ``attr/*`` metrics).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from calmcap.attributes import ATTRIBUTE_PROTOCOL, attribute_accuracy, has_ground_truth
from calmcap.config import DecodeOptions
from calmcap.data.dataset import Collator, VideoCaptionDataset
from calmcap.errors import CalmcapError
from calmcap.metrics import (
    RETRIEVAL_PROTOCOL,
    caption_metrics,
    chance_recall,
    rank_last,
    retrieval_metrics,
    t2v_ranks,
    v2t_ranks,
)
from calmcap.tokenizer import PAD_ID

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Metrics plus what a report needs to show its work."""

    metrics: dict[str, float]
    predictions: dict[str, str] = field(default_factory=dict)  # video_id -> caption
    references: dict[str, list[str]] = field(default_factory=dict)
    bad_videos: list[str] = field(default_factory=list)
    t2v_ranks: list[int] = field(default_factory=list)
    v2t_ranks: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    # A random ranker's R@K on the same gallery (percent, keys like ``t2v/R@1``).
    chance: dict[str, float] = field(default_factory=dict)


class _Texts(Dataset):
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[int, str]:
        return index, self.texts[index]


def _collate_texts(items: list[tuple[int, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.tensor([i for i, _ in items]), [t for _, t in items]


def _gather(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    return tensor if accelerator is None else accelerator.gather_for_metrics(tensor)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: VideoCaptionDataset,
    *,
    accelerator: Any = None,
    batch_size: int = 32,
    num_workers: int = 0,
    captioning: bool = True,
    retrieval: bool = True,
    decode: DecodeOptions | None = None,
    use_java: bool | None = None,
    meteor: bool = True,
    progress: bool = False,
) -> EvalResult:
    """Caption and/or retrieve over ``dataset`` (mode ``videos``); see the module docstring."""
    decode = (decode or DecodeOptions()).check("decode")
    if captioning and (decode.do_sample or decode.num_return_sequences != 1):
        raise CalmcapError("evaluation decodes deterministically with one caption per video (no sampling)")
    core = accelerator.unwrap_model(model) if accelerator is not None else model
    was_training = core.training
    core.eval()
    device = next(core.parameters()).device
    main = accelerator is None or accelerator.is_main_process

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=Collator())
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
    seq_len = decode.max_length
    indices, valid, video_embeds, sequences, bad = [], [], [], [], []
    iterator = loader
    if progress and main:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc="evaluate videos", unit="batch", dynamic_ncols=True)
    for batch in iterator:
        mask = batch["video_mask"].to(device)
        if "frame_features" in batch:
            frames = batch["frame_features"].to(device)
        else:
            frames = core.encode_frames(batch["video"].to(device))
        # A bad video has an all-false mask; give it one frame so nothing divides by zero.
        first_frame = torch.arange(mask.shape[1], device=device) == 0
        mask = mask | ((~batch["valid"].to(device))[:, None] & first_frame)
        embeds = core.fuse(frames, mask)
        indices.append(_gather(accelerator, batch["item_index"].to(device)))
        valid.append(_gather(accelerator, batch["valid"].to(device)))
        video_embeds.append(_gather(accelerator, embeds.float()))
        if captioning:
            # Beam search is a chain of small ops: one thread is as fast on an idle CPU and
            # several times faster on a busy one (OpenMP workers spin-wait for each other).
            with _single_thread_on_cpu(device):
                out = core.generate(frame_features=frames, video_mask=mask, options=decode)
            seqs = torch.full((frames.shape[0], seq_len), PAD_ID, dtype=torch.long, device=device)
            length = min(seq_len, out["sequences"].shape[1])
            seqs[:, :length] = out["sequences"][:, :length]
            sequences.append(_gather(accelerator, seqs))
        bad.extend(batch["bad_videos"])

    order = torch.cat(indices).cpu().numpy()
    position = np.argsort(order, kind="stable")
    if not np.array_equal(order[position], np.arange(len(dataset))):
        raise RuntimeError(f"evaluation gathered {len(order)} items for a dataset of {len(dataset)}")
    is_valid = torch.cat(valid).cpu().numpy()[position]
    all_video_embeds = torch.cat(video_embeds)[torch.from_numpy(position).to(device)]

    texts, owners = dataset.captions()
    text_embeds = None
    if retrieval:
        text_loader = DataLoader(_Texts(texts), batch_size=max(batch_size, 64), shuffle=False,
                                 collate_fn=_collate_texts)
        if accelerator is not None:
            text_loader = accelerator.prepare_data_loader(text_loader, device_placement=False)
        t_index, t_embeds = [], []
        for index, batch_texts in text_loader:
            t_index.append(_gather(accelerator, index.to(device)))
            t_embeds.append(_gather(accelerator, core.encode_text(batch_texts).float()))
        t_order = torch.cat(t_index).cpu().numpy()
        text_embeds = torch.cat(t_embeds)[torch.from_numpy(np.argsort(t_order, kind="stable")).to(device)]

    all_bad = _gather_objects(accelerator, bad)
    result = None
    if main:
        result = _score(
            dataset, is_valid, all_video_embeds, text_embeds, owners, texts,
            torch.cat(sequences)[torch.from_numpy(position).to(device)] if captioning else None,
            core.tokenizer, all_bad, use_java, meteor,
        )
        result.protocol.update({"decode": asdict(decode), "num_frames": dataset.num_frames, "split": dataset.split})
    core.train(was_training)
    if accelerator is not None:
        from accelerate.utils import broadcast_object_list

        result = broadcast_object_list([result])[0]
    return result


class _single_thread_on_cpu:
    def __init__(self, device: torch.device) -> None:
        self.active = device.type == "cpu"

    def __enter__(self) -> None:
        if self.active:
            self.previous = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.set_num_threads(self.previous)


def _gather_objects(accelerator: Any, items: list) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return list(dict.fromkeys(gather_object(items)))


def _score(
    dataset: VideoCaptionDataset,
    is_valid: np.ndarray,
    video_embeds: torch.Tensor,
    text_embeds: torch.Tensor | None,
    owners: list[int],
    texts: list[str],
    sequences: torch.Tensor | None,
    tokenizer: Any,
    bad_videos: list[str],
    use_java: bool | None,
    meteor: bool,
) -> EvalResult:
    is_valid = np.asarray(is_valid, dtype=bool)
    keep = np.flatnonzero(is_valid)
    undecodable = np.flatnonzero(~is_valid)
    result = EvalResult(metrics={}, bad_videos=sorted(bad_videos))
    # ``videos`` and ``captions`` are the retrieval gallery (every video of the split); the
    # ``videos_skipped`` undecodable ones are in it as misses and are not captioned.
    result.counts = {"videos": len(is_valid), "videos_skipped": len(undecodable), "captions": len(owners)}
    if len(keep) == 0:
        first = bad_videos[0] if bad_videos else "no readable video"
        raise CalmcapError(f"none of the {len(is_valid)} videos of the split could be decoded (first: {first})")
    if text_embeds is not None:
        similarity = rank_last((text_embeds @ video_embeds.t()).cpu().numpy(), undecodable)
        result.metrics.update(retrieval_metrics(similarity, owners))
        result.t2v_ranks = t2v_ranks(similarity, owners).tolist()
        result.v2t_ranks = v2t_ranks(similarity, owners).tolist()
        result.protocol["retrieval"] = dict(RETRIEVAL_PROTOCOL)
        captions_per_video = np.bincount(np.asarray(owners, dtype=np.int64), minlength=len(is_valid))
        for k in (1, 5, 10):
            t2v, v2t = chance_recall(captions_per_video.tolist(), k)
            result.chance[f"t2v/R@{k}"], result.chance[f"v2t/R@{k}"] = 100.0 * t2v, 100.0 * v2t
    if sequences is not None:
        if tokenizer is None:
            raise ValueError("captioning needs the model's caption tokenizer")
        truths = {}
        for v in keep:
            entry = dataset.entries[int(v)]
            result.predictions[entry.video_id] = tokenizer.decode(sequences[int(v)].tolist())
            result.references[entry.video_id] = list(entry.captions)
            if has_ground_truth(entry.extra):
                truths[entry.video_id] = entry.extra
        result.metrics.update(caption_metrics(result.predictions, result.references, use_java=use_java, meteor=meteor))
        if truths:
            result.metrics.update(attribute_accuracy(result.predictions, truths))
            result.protocol["attributes"] = {"videos": len(truths), "rule": ATTRIBUTE_PROTOCOL}
    return result
