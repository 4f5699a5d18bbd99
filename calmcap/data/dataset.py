"""One dataset class over the manifest format, and the collate that tokenises for both towers.

Items come in three modes:

* ``all_pairs``: every (video, caption) pair is an item (training, "expand all pairs");
* ``one_per_video``: one item per video; its caption is drawn anew each epoch (training);
* ``videos``: one item per video, no caption (evaluation: captioning and the video side of
  retrieval; the captions are scored from the manifest directly).

Randomness (which caption, which frame in each segment, the crop) comes from a generator
seeded by ``(seed, epoch, item)``, so a resumed run sees exactly the data of an uninterrupted
one, whatever the number of DataLoader workers.

A video that cannot be decoded never crashes a worker and never yields NaN. In training
(``skip_bad=True``) the item is replaced by the next good one and the failure is reported in
the batch (``bad_videos``) for the trainer to count and write down. In evaluation the item is
returned with ``valid=False`` (zeros, mask all false) so batches keep their shape across
processes; the evaluator drops it and lists it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from calmcap.constants import FEATURES, FRAMES, MAX_FRAME_SIDE
from calmcap.data.cache import cache_file, load_array
from calmcap.data.manifest import ManifestEntry, read_manifest, resolve_video_path
from calmcap.data.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD, clip_transform
from calmcap.data.video import read_frames, sample_indices
from calmcap.errors import CalmcapError, VideoDecodeError

logger = logging.getLogger(__name__)

ItemMode = Literal["all_pairs", "one_per_video", "videos"]
MAX_SKIPS = 20


@dataclass
class VideoSource:
    """Where a dataset's frames come from (in order of preference: features, frames, decoding)."""

    feature_cache: str | None = None
    frame_cache: str | None = None
    backend: str = "auto"
    # Bound decoder memory on huge videos (issue #7; see calmcap.constants).
    max_side: int | None = MAX_FRAME_SIDE


class VideoCaptionDataset(Dataset):
    """Items of one split of a manifest; see the module docstring for the modes."""

    def __init__(
        self,
        manifest: str | os.PathLike,
        split: str | Sequence[str],
        num_frames: int,
        image_size: int,
        *,
        mode: ItemMode = "videos",
        train: bool = False,
        seed: int = 0,
        source: VideoSource | None = None,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        skip_bad: bool | None = None,
        entries: list[ManifestEntry] | None = None,
    ) -> None:
        self.manifest = Path(manifest)
        self.split = split
        self.entries = entries if entries is not None else read_manifest(self.manifest, split)
        self.num_frames = num_frames
        self.image_size = image_size
        self.mode = mode
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.source = source or VideoSource()
        self.mean, self.std = tuple(mean), tuple(std)
        self.skip_bad = train if skip_bad is None else skip_bad
        if mode == "all_pairs":
            self.items = [(v, c) for v, e in enumerate(self.entries) for c in range(len(e.captions))]
        elif mode in ("one_per_video", "videos"):
            self.items = [(v, -1) for v in range(len(self.entries))]
        else:
            raise ValueError(f"unknown dataset mode {mode!r}")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw a new caption / frame / crop choice per item (deterministically) for ``epoch``."""
        self.epoch = epoch

    # ------------------------------------------------------------------ text side

    def captions(self) -> tuple[list[str], list[int]]:
        """Every caption of the split and the index of its video (the retrieval text side)."""
        texts, owners = [], []
        for v, entry in enumerate(self.entries):
            texts.extend(entry.captions)
            owners.extend([v] * len(entry.captions))
        return texts, owners

    # ------------------------------------------------------------------ video side

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _sample(self, total: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return sample_indices(total, self.num_frames, "random" if self.train else "uniform", rng=rng)

    def load_video(self, video_index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """``video`` [T, 3, S, S] float (or ``frame_features`` [T, D]) and ``video_mask`` [T]."""
        entry = self.entries[video_index]
        src = self.source
        if src.feature_cache:
            path = cache_file(src.feature_cache, FEATURES, entry.video_id)
            if path.is_file():
                features = load_array(path)
                idx, mask = self._sample(len(features), rng)
                return {"frame_features": torch.from_numpy(features[idx].astype(np.float32)),
                        "video_mask": torch.from_numpy(mask)}
        if src.frame_cache:
            path = cache_file(src.frame_cache, FRAMES, entry.video_id)
            if path.is_file():
                frames = load_array(path, mmap=True)
                idx, mask = self._sample(len(frames), rng)
                return {"video": self._transform(np.ascontiguousarray(frames[idx]), rng),
                        "video_mask": torch.from_numpy(mask)}
        frames, mask = read_frames(
            resolve_video_path(self.manifest, entry),
            self.num_frames,
            mode="random" if self.train else "uniform",
            start_seconds=entry.start_seconds,
            end_seconds=entry.end_seconds,
            backend=src.backend,
            max_side=src.max_side,
            rng=rng,
        )
        return {"video": self._transform(frames, rng), "video_mask": torch.from_numpy(mask)}

    def _transform(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62))) if self.train else None
        return clip_transform(frames, self.image_size, self.mean, self.std, train=self.train, generator=generator)

    def _item(self, index: int) -> dict[str, Any]:
        video_index, caption_index = self.items[index]
        entry = self.entries[video_index]
        rng = self._rng(index)
        if caption_index < 0 and self.mode == "one_per_video":
            caption_index = int(rng.integers(len(entry.captions)))
        item = self.load_video(video_index, rng)
        if not torch.isfinite(item.get("video", item.get("frame_features"))).all():
            raise VideoDecodeError(str(resolve_video_path(self.manifest, entry)),
                                   "decoded frames contain NaN or infinite values")
        item.update(
            video_index=video_index,
            item_index=index,
            valid=True,
            caption=entry.captions[caption_index] if caption_index >= 0 else None,
        )
        return item

    def _invalid(self, index: int, error: str) -> dict[str, Any]:
        video_index = self.items[index][0]
        if self.source.feature_cache:
            raise CalmcapError(f"{error} (and no cached features for {self.entries[video_index].video_id})")
        size = self.image_size
        return {
            "video": torch.zeros(self.num_frames, 3, size, size),
            "video_mask": torch.zeros(self.num_frames, dtype=torch.bool),
            "video_index": video_index,
            "item_index": index,
            "valid": False,
            "caption": None,
            "error": error,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        bad: list[str] = []
        for attempt in range(MAX_SKIPS):
            candidate = (index + attempt) % len(self.items)
            try:
                item = self._item(candidate)
                item["bad_videos"] = bad
                return item
            except VideoDecodeError as error:
                logger.warning("skipping unreadable video: %s", error)
                if not self.skip_bad:
                    item = self._invalid(candidate, str(error))
                    item["bad_videos"] = [str(error)]
                    return item
                bad.append(str(error))
        raise CalmcapError(f"{MAX_SKIPS} unreadable videos in a row (last: {bad[-1]}); "
                           "check the manifest with `calmcap check`")


class Collator:
    """Stack items into a batch; tokenise captions for the CLIP text tower and the decoder.

    Batch keys: ``video`` [B, T, 3, S, S] or ``frame_features`` [B, T, D]; ``video_mask``
    [B, T]; ``video_index``, ``item_index``, ``valid`` [B]; ``bad_videos`` (list of messages);
    with captions: ``captions`` (list), ``text_tokens`` [B, L], ``caption_ids`` /
    ``caption_mask`` [B, Lc].
    """

    def __init__(
        self,
        clip_tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        caption_tokenizer: Any | None = None,
        max_caption_length: int = 32,
    ) -> None:
        self.clip_tokenizer = clip_tokenizer
        self.caption_tokenizer = caption_tokenizer
        self.max_caption_length = max_caption_length

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        key = "frame_features" if "frame_features" in items[0] else "video"
        if any(key not in item for item in items):
            raise CalmcapError("a batch mixes cached features and decoded video; cache every video or none")
        batch[key] = torch.stack([item[key] for item in items])
        batch["video_mask"] = torch.stack([item["video_mask"] for item in items])
        for name in ("video_index", "item_index"):
            batch[name] = torch.tensor([item[name] for item in items], dtype=torch.long)
        batch["valid"] = torch.tensor([item["valid"] for item in items], dtype=torch.bool)
        batch["bad_videos"] = [message for item in items for message in item.get("bad_videos", [])]
        captions = [item["caption"] for item in items]
        if all(c is not None for c in captions):
            batch["captions"] = captions
            if self.clip_tokenizer is not None:
                batch["text_tokens"] = self.clip_tokenizer(captions)
            if self.caption_tokenizer is not None:
                batch["caption_ids"], batch["caption_mask"] = self.caption_tokenizer.batch_encode(
                    captions, self.max_caption_length
                )
        return batch
