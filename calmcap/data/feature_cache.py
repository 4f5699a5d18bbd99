"""The features cache: a frozen image tower's features of every clip, so training never runs it.

:func:`cache_features` runs a frozen image tower over the frames of each clip (read from the
frames cache when it has the tower's image size, decoded as :mod:`calmcap.data.frame_cache` would
otherwise) and stores float16 ``[F, D]`` per video (:mod:`calmcap.data.cache` describes the
format). The cache's metadata records the tower (architecture and a fingerprint of its weights,
:func:`tower_fingerprint`) so that :func:`check_feature_cache` can refuse features of another
tower. Resuming skips existing files; bad videos are listed in ``bad_videos.jsonl`` next to it.

**Models for ``calmcap cache --features``** (:func:`load_feature_model`). ``--model`` takes a
checkpoint directory (loaded with :meth:`CALMModel.from_pretrained`) or a registered model name.
For a name, only the CLIP image tower is built
(:class:`calmcap.models.image_tower.ImageTower`): no caption tokenizer is needed. A name whose
tower has no pretrained weights (``clip.pretrained: null``, e.g. ``calmcap-tiny``) is refused: a
randomly initialised tower's features would match no model one could train or load later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from calmcap.constants import BAD_VIDEOS_FILE, FEATURES, FRAMES, MAX_FRAME_SIDE
from calmcap.data.cache import (
    CACHE_FORMAT_VERSION,
    CacheReport,
    cache_file,
    check_cache_meta,
    load_array,
    read_cache_meta,
    save_array,
    write_cache_meta,
)
from calmcap.data.frame_cache import DEFAULT_MAX_FRAMES, decode_for_cache
from calmcap.data.jsonl import write_jsonl
from calmcap.data.manifest import ManifestEntry, read_manifest, resolve_video_path, split_names
from calmcap.data.transforms import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from calmcap.data.video import check_backend
from calmcap.data.worker_pool import progress_bar
from calmcap.errors import CalmcapError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

logger = logging.getLogger(__name__)


def _image_tower(model: nn.Module) -> nn.Module:
    clip = getattr(model, "clip", None)
    visual = getattr(clip, "visual", None)
    return visual if visual is not None else model


def tower_fingerprint(model: nn.Module) -> str:
    """``"sha256:<hex>"`` of the image tower's weights (``model.clip.visual``, else ``model``).

    Names, dtypes, shapes and bytes of every tensor of the state dict enter the hash, so a
    tower with other weights (another checkpoint, another pretrained tag, fine-tuned) gets
    another fingerprint. ~1 s for ViT-B/32 on CPU.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(_image_tower(model).state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _tower_description(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    clip_config = getattr(config, "clip", None)
    return {
        "arch": getattr(clip_config, "arch", type(_image_tower(model)).__name__),
        "pretrained": getattr(clip_config, "pretrained", None),
        "model": getattr(config, "name", None),
        "fingerprint": tower_fingerprint(model),
    }


def check_feature_cache(cache_dir: str | os.PathLike, model: nn.Module) -> dict[str, Any]:
    """Verify that a features cache was made by ``model``'s image tower; returns its metadata.

    Raises:
        CalmcapError: no features cache there, or it was made by another tower (different
            weights), or at another image size.
    """
    meta = read_cache_meta(cache_dir, FEATURES)
    if meta is None:
        raise CalmcapError(f"{Path(cache_dir) / FEATURES}: no features cache (run `calmcap cache --features`)")
    fingerprint = tower_fingerprint(model)
    cached = (meta.get("tower") or {}).get("fingerprint")
    if cached != fingerprint:
        raise CalmcapError(
            f"{Path(cache_dir) / FEATURES}: features were made by another image tower "
            f"({(meta.get('tower') or {}).get('arch')}, {cached}) than this model's ({fingerprint}); "
            f"rebuild the cache with this model"
        )
    image_size = getattr(getattr(model, "config", None), "image_size", None)
    if image_size is not None and meta.get("image_size") != image_size:
        raise CalmcapError(f"{Path(cache_dir) / FEATURES}: features at image_size {meta.get('image_size')}, "
                           f"model wants {image_size}")
    return meta


def _numpy_dtype(dtype: Any) -> np.dtype:
    """numpy dtype of ``np.float16``, ``"float16"`` or ``torch.float16`` alike (floating only)."""
    if type(dtype).__module__ == "torch":  # a torch.dtype: "torch.float16" -> "float16"
        dtype = str(dtype).removeprefix("torch.")
    result = np.dtype(dtype)
    if result.kind != "f":
        raise ValueError(f"features need a floating dtype, got {result}")
    return result


class _ClipFrames:
    """Map-style dataset for cache_features: item i -> (i, uint8 frames [F, S, S, 3] or error)."""

    def __init__(self, manifest: Path, entries: list[ManifestEntry], cache_dir: Path, use_frame_cache: bool,
                 image_size: int, max_frames: int, backend: str, max_side: int | None) -> None:
        self.manifest, self.entries, self.cache_dir = manifest, entries, cache_dir
        self.use_frame_cache, self.image_size, self.max_frames = use_frame_cache, image_size, max_frames
        self.backend, self.max_side = backend, max_side

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None, bool]:
        entry = self.entries[index]
        if self.use_frame_cache:
            path = cache_file(self.cache_dir, FRAMES, entry.video_id)
            if path.is_file():
                try:
                    return index, load_array(path), None, True
                except (OSError, ValueError) as error:
                    logger.warning("%s: unreadable frames cache file (%s); decoding the video", path, error)
        try:
            frames = decode_for_cache(resolve_video_path(self.manifest, entry), self.image_size, self.max_frames,
                                 entry.start_seconds, entry.end_seconds, self.backend, self.max_side)
            return index, frames, None, False
        except CalmcapError as error:
            return index, None, getattr(error, "reason", str(error)), False


def cache_features(
    model: Any,
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    splits: str | Sequence[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    dtype: Any = np.float16,
    max_frames: int | None = None,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    workers: int = 0,
    backend: str = "auto",
    max_side: int | None = MAX_FRAME_SIDE,
    overwrite: bool = False,
) -> CacheReport:
    """Run a frozen image tower over every clip and store its frame features: ``[F, D]`` per video.

    For each video, the frames come from the frames cache in the same ``cache_dir`` when it has
    the model's image size (else the clip is decoded as :func:`cache_frames` would, with
    ``max_frames``, default the frames cache's or 64), are normalised with ``mean`` / ``std``
    and go through ``model.encode_frames`` under ``torch.no_grad`` in batches of ``batch_size``
    frames (frames of several videos share a batch). Features are stored as ``dtype``
    (float16) at ``cache_file(cache_dir, "features", video_id)``.

    Args:
        model: a :class:`CALMModel` (or :class:`~calmcap.models.image_tower.ImageTower`): ``encode_frames``,
            ``config.image_size`` and ``clip.visual`` are used. It runs on the device of its
            parameters, in eval mode (its mode is restored afterwards).
        workers: DataLoader workers that read / decode frames while the tower runs (0: in
            this process).
        overwrite: recompute every file, even those made by another tower.

    The metadata (``<cache_dir>/features/cache.json``) records the tower (``arch``,
    ``pretrained``, ``fingerprint`` from :func:`tower_fingerprint`), ``image_size``, ``mean``,
    ``std``, ``dtype``, ``embed_dim``, ``max_frames`` and ``count``. Resuming skips existing files;
    a cache made by another tower or image size is an error unless ``overwrite``.
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    check_backend(backend)
    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    manifest = Path(manifest)
    entries = read_manifest(manifest, splits)
    image_size = int(model.config.image_size)
    np_dtype = _numpy_dtype(dtype)
    frame_meta = read_cache_meta(cache_dir, FRAMES)
    use_frame_cache = frame_meta is not None and frame_meta.get("image_size") == image_size
    if frame_meta is not None and not use_frame_cache:
        logger.warning("%s holds frames at image_size %s, not the model's %d; decoding videos instead",
                       cache_dir / FRAMES, frame_meta.get("image_size"), image_size)
    if (use_frame_cache and frame_meta is not None and max_frames is not None
            and frame_meta.get("max_frames") != max_frames):
        logger.warning("%s holds up to %s frames per clip, not max_frames=%d; decoding videos instead",
                       cache_dir / FRAMES, frame_meta.get("max_frames"), max_frames)
        use_frame_cache = False
    if max_frames is None:
        max_frames = int(frame_meta["max_frames"]) if use_frame_cache and frame_meta else DEFAULT_MAX_FRAMES

    tower = _tower_description(model)
    settings = {"image_size": image_size, "tower": tower, "mean": [float(m) for m in mean],
                "std": [float(s) for s in std], "dtype": np_dtype.name, "max_frames": int(max_frames),
                "format_version": CACHE_FORMAT_VERSION}
    existing = read_cache_meta(cache_dir, FEATURES)
    if not overwrite and existing is not None:
        if (existing.get("tower") or {}).get("fingerprint") != tower["fingerprint"]:
            raise CalmcapError(
                f"{cache_dir / FEATURES}: the cache holds features of another image tower "
                f"({(existing.get('tower') or {}).get('arch')}, {(existing.get('tower') or {}).get('fingerprint')}); "
                f"use another cache directory or pass overwrite=True (--overwrite) to rebuild it"
            )
        check_cache_meta(existing, {k: v for k, v in settings.items() if k != "tower"}, cache_dir, FEATURES)
    meta: dict[str, Any] = {
        **settings,
        "kind": FEATURES,
        "layout": f"{np_dtype.name} [F, D]: the image tower's features of the frames cache's frames",
        "frames_from": "frames cache" if use_frame_cache else "decoded",
        "manifest": str(manifest.resolve()),
        "splits": split_names(splits),
        "complete": False,
    }
    write_cache_meta(cache_dir, FEATURES, meta)

    todo = [i for i, e in enumerate(entries) if overwrite or not cache_file(cache_dir, FEATURES, e.video_id).is_file()]
    num_skipped = len(entries) - len(todo)
    dataset = _ClipFrames(manifest, [entries[i] for i in todo], cache_dir, use_frame_cache, image_size, max_frames,
                          backend, max_side)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        prefetch_factor=4 if workers > 0 else None)

    parameters = list(model.parameters())
    device = parameters[0].device if parameters else torch.device("cpu")
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    bad: dict[str, dict[str, str]] = {}
    num_written = 0
    embed_dim: int | None = None
    queue: list[tuple[ManifestEntry, np.ndarray]] = []
    queued_frames = 0
    bar = progress_bar(len(todo), "cache features", progress)

    def flush() -> None:
        # One forward for the queued clips: [1, sum F, 3, S, S] -> [sum F, D], split per clip.
        nonlocal queued_frames, num_written, embed_dim
        if not queue:
            return
        frames = torch.from_numpy(np.concatenate([f for _, f in queue])).to(device)  # uint8 [N, S, S, 3]
        video = frames.permute(0, 3, 1, 2).float().div_(255.0).sub_(mean_t).div_(std_t)
        outputs = []
        with torch.no_grad():
            for start in range(0, len(video), batch_size):
                chunk = video[start:start + batch_size]
                outputs.append(model.encode_frames(chunk.unsqueeze(0))[0].float().cpu())
        features = torch.cat(outputs).numpy()
        embed_dim = int(features.shape[-1])
        offset = 0
        for entry, clip in queue:
            save_array(cache_file(cache_dir, FEATURES, entry.video_id),
                       features[offset:offset + len(clip)].astype(np_dtype))
            offset += len(clip)
            num_written += 1
        bar.update(len(queue))
        queue.clear()
        queued_frames = 0

    try:
        for index, frames, reason, _from_cache in loader:
            entry = dataset.entries[index]
            if frames is None:
                bad[entry.video_id] = {"video_id": entry.video_id, "video": entry.video, "reason": reason or "unknown"}
                bar.update(1)
                bar.set_postfix(bad=len(bad), refresh=False)
                continue
            frames = frames.numpy() if isinstance(frames, torch.Tensor) else frames
            queue.append((entry, frames))
            queued_frames += len(frames)
            if queued_frames >= batch_size:
                flush()
        flush()
    finally:
        bar.close()
        model.train(was_training)
    bad_list = [bad[e.video_id] for e in entries if e.video_id in bad]
    write_jsonl(cache_dir / FEATURES / BAD_VIDEOS_FILE, bad_list)
    if embed_dim is None and num_skipped:
        first = next(e.video_id for e in entries if cache_file(cache_dir, FEATURES, e.video_id).is_file())
        embed_dim = int(load_array(cache_file(cache_dir, FEATURES, first), mmap=True).shape[-1])
    meta.update(complete=True, count=num_written + num_skipped, num_bad=len(bad_list), embed_dim=embed_dim)
    write_cache_meta(cache_dir, FEATURES, meta)
    seconds = time.perf_counter() - started
    logger.info("cached features of %d videos (%d new, %d bad) in %.1f s", num_written + num_skipped, num_written,
                len(bad_list), seconds)
    return CacheReport(FEATURES, cache_dir, len(entries), num_written, num_skipped, bad_list, seconds, meta)


def load_feature_model(name_or_checkpoint: str, device: str = "cpu") -> Any:
    """A model for :func:`cache_features` from a checkpoint directory or a registered name.

    A directory loads with :meth:`CALMModel.from_pretrained`. A name builds only its CLIP image
    tower (:class:`~calmcap.models.image_tower.ImageTower`); names whose tower has no pretrained
    weights are refused (see the module docstring).
    """
    path = Path(name_or_checkpoint)
    if path.is_dir():
        from calmcap.models.calm import CALMModel

        return CALMModel.from_pretrained(path, device=device)
    from calmcap.config import get_model_config
    from calmcap.models.image_tower import ImageTower

    config = get_model_config(name_or_checkpoint)
    if config.clip.pretrained is None:
        raise CalmcapError(
            f"model {name_or_checkpoint!r} has a randomly initialised image tower (clip.pretrained: null): its "
            f"features would match no model trained or loaded later. Pass a checkpoint directory, or a model "
            f"whose CLIP weights are pretrained"
        )
    return ImageTower.from_config(config).to(device)
