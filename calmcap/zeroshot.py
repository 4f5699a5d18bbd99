"""CLIP-style zero-shot figures of a pair of towers on the embedded benchmark (issue #11).

A video is the mean of its frames' normalised image-tower features (CLIP's usual video
zero-shot: no temporal module, nothing trained on the benchmark); a class is the mean of the
normalised text features of its prompts. Each test video is assigned the class of highest
cosine, for five attributes of its main object and scene, read from the manifest's ground
truth (``extra``): shape (8 classes), colour (6), size (3), action (12) and background (the
10 kinds of both benchmark domains). Prompts ensemble every synonym of both domains' caption
vocabularies, so that neither domain's wording is favoured; they never see the videos.

Zero-shot text-to-video and video-to-text retrieval over the split's own captions is reported
beside, with the same video features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ATTRIBUTES = ("shape", "colour", "size", "action", "background")


def class_prompts() -> dict[str, dict[str, list[str]]]:
    """``{attribute: {class: [prompt, ...]}}`` from both benchmark domains' vocabularies."""
    from calmcap.data.pretrain_corpus import BACKGROUND_NAMES
    from calmcap.data.synth import DOMAIN_A, DOMAIN_B

    def words(table_a: dict, table_b: dict, key: str) -> list:
        return list(dict.fromkeys(list(table_a[key]) + list(table_b[key])))

    prompts: dict[str, dict[str, list[str]]] = {name: {} for name in ATTRIBUTES}
    for shape in DOMAIN_A.shape_words:
        prompts["shape"][shape] = [f"a {w}" for w in words(DOMAIN_A.shape_words, DOMAIN_B.shape_words, shape)]
    for colour in DOMAIN_A.colour_words:
        colour_words = words(DOMAIN_A.colour_words, DOMAIN_B.colour_words, colour)
        prompts["colour"][colour] = [f"a {w} object" for w in colour_words]
    for size in DOMAIN_A.size_words:
        prompts["size"][size] = [f"a {w} object" for w in words(DOMAIN_A.size_words, DOMAIN_B.size_words, size)]
    for action in DOMAIN_A.action_words:
        phrases = words(DOMAIN_A.action_words, DOMAIN_B.action_words, action)
        prompts["action"][action] = [f"something {gerund}" for _, gerund in phrases]
    for domain in (DOMAIN_A, DOMAIN_B):
        for kind, phrases in domain.background_words.items():
            prompts["background"][kind] = [f"a shape {p}" for p in phrases] + [BACKGROUND_NAMES[kind]]
    return prompts


@dataclass
class ZeroShotResult:
    """Accuracies (percent) per attribute and of all attributes at once (``all_correct``),
    chance per attribute, retrieval metrics, counts, confusion matrices [truth][predicted]."""

    accuracy: dict[str, float]
    chance: dict[str, float]
    retrieval: dict[str, float]
    num_videos: int
    all_correct: float
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)
    classes: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "all_correct": self.all_correct, "chance": self.chance,
                "retrieval": self.retrieval, "num_videos": self.num_videos, "classes": self.classes,
                "confusion": self.confusion}


@torch.no_grad()
def encode_class_prompts(clip: torch.nn.Module, tokenize, prompts: dict[str, list[str]]) -> torch.Tensor:
    """One normalised text feature per class: [C, D] (mean of its prompts' normalised features)."""
    rows = []
    for texts in prompts.values():
        features = F.normalize(clip.encode_text(tokenize(texts)).float(), dim=-1)
        rows.append(F.normalize(features.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def encode_videos(clip: torch.nn.Module, dataset, batch_size: int = 64) -> torch.Tensor:
    """Mean of normalised frame features per video of ``dataset`` (mode ``videos``): [N, D]."""
    from torch.utils.data import DataLoader

    from calmcap.data.dataset import Collator

    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=Collator()):
        video, mask = batch["video"], batch["video_mask"].float()
        images = video.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        frames = F.normalize(clip.encode_image(images).float(), dim=-1).view(*video.shape[:2], -1)
        pooled = (frames * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        out.append(F.normalize(pooled, dim=-1))
    return torch.cat(out)


@torch.no_grad()
def zero_shot(clip: torch.nn.Module, tokenize, dataset, attributes: Sequence[str] = ATTRIBUTES,
              retrieval: bool = True, batch_size: int = 64) -> ZeroShotResult:
    """Zero-shot classification (and retrieval) of ``dataset``'s videos by ``clip``'s towers.

    ``clip``: an open_clip ``CLIP`` model (``encode_image``, ``encode_text``); ``tokenize``: its
    tokenizer (texts -> tokens); ``dataset``: a :class:`~calmcap.data.dataset.VideoCaptionDataset`
    in mode ``videos`` whose entries carry the benchmark's ground truth in ``extra``.
    """
    from calmcap.metrics import retrieval_metrics

    was_training = clip.training
    clip.eval()
    try:
        videos = encode_videos(clip, dataset, batch_size)
        prompts = class_prompts()
        accuracy, chance, confusion, classes = {}, {}, {}, {}
        every = np.ones(len(dataset), dtype=bool)
        for attribute in attributes:
            names = list(prompts[attribute])
            text = encode_class_prompts(clip, tokenize, prompts[attribute])
            predicted = (videos @ text.t()).argmax(-1).numpy()
            truth = np.asarray([names.index(entry.extra[attribute]) for entry in dataset.entries])
            accuracy[attribute] = float(100.0 * (predicted == truth).mean())
            every &= predicted == truth
            chance[attribute] = 100.0 / len(names)
            matrix = np.zeros((len(names), len(names)), dtype=int)
            np.add.at(matrix, (truth, predicted), 1)
            confusion[attribute], classes[attribute] = matrix.tolist(), names
        metrics: dict[str, float] = {}
        if retrieval:
            texts, owners = dataset.captions()
            features = torch.cat([F.normalize(clip.encode_text(tokenize(texts[i:i + 256])).float(), dim=-1)
                                  for i in range(0, len(texts), 256)])
            metrics = retrieval_metrics((features @ videos.t()).numpy(), owners)
    finally:
        clip.train(was_training)
    return ZeroShotResult(accuracy=accuracy, chance=chance, retrieval=metrics, num_videos=len(dataset),
                          all_correct=float(100.0 * every.mean()), confusion=confusion, classes=classes)
