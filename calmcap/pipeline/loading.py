"""Which model a command uses, and loading it once: :func:`load_model` -> :class:`LoadedModel`.

``model`` arguments of the pipeline are a checkpoint directory, a :class:`LoadedModel`, a
:class:`~calmcap.models.calm.CALMModel` built in memory, or ``None``: then ``$CALMCAP_MODEL``,
else ``runs/synth_tiny/model`` (what the README's main job writes, relative to the working
directory). Checkpoints stay loaded per (path, device) while their weights file is unchanged.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from calmcap.config import DecodeOptions
from calmcap.constants import CHECKPOINT_CONFIG_FILE, CHECKPOINT_WEIGHTS_FILE
from calmcap.errors import CalmcapError
from calmcap.pipeline.stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from calmcap.models.calm import CALMModel

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MODEL_ENV = "CALMCAP_MODEL"
# What the README's main job writes (recipes/configs/synth_tiny.yaml: output_dir + "/model").
DEFAULT_MODEL_DIR = "runs/synth_tiny/model"
TRAIN_COMMAND = ("accelerate launch --num_cpu_threads_per_process 2 recipes/train_caption.py "
                 "--config recipes/configs/synth_tiny.yaml")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for the pipeline, with what its checkpoint says about it.

    ``model`` is in eval mode. ``path`` is the checkpoint directory it was loaded from (None
    for a model built in memory): reports and indexes record it. ``generation`` is the decoding
    its training validated with (config.json's ``generation``; the defaults when it has none),
    which :meth:`calmcap.pipeline.CaptionOptions.resolve` falls back on.
    """

    model: CALMModel
    path: Path | None = None
    generation: DecodeOptions = field(default_factory=DecodeOptions)


ModelLike = Union[LoadedModel, "CALMModel", str, "os.PathLike[str]", None]


def resolve_model_path(model: PathLike | None) -> Path:
    """The checkpoint directory to use: ``model``, else ``$CALMCAP_MODEL``, else ``runs/synth_tiny/model``.

    Raises :class:`CalmcapError` saying how to get a model when none is found.
    """
    if model is not None:
        return Path(model)
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    default = Path(DEFAULT_MODEL_DIR)
    if (default / CHECKPOINT_CONFIG_FILE).is_file():
        return default
    raise CalmcapError(
        f"no model given and none found: pass --model DIR (a checkpoint directory), set {MODEL_ENV}, "
        f"or train the default one into {DEFAULT_MODEL_DIR} with `{TRAIN_COMMAND}`"
    )


def peek_frame_settings(path: Path) -> tuple[int, int] | None:
    """``(num_frames, image_size)`` from a checkpoint's config.json without importing torch.

    Lets decoding start before the model (and torch) is loaded; ``None`` when the file is not
    readable, and then the real load reports the problem.
    """
    try:
        meta = json.loads((path / CHECKPOINT_CONFIG_FILE).read_text(encoding="utf-8"))
        return int(meta["model"]["num_frames"]), int(meta["model"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def frame_settings(model: CALMModel, num_frames: int | None) -> tuple[int, int]:
    """``(num_frames, image_size)`` to decode for ``model``: its own, or fewer frames when asked."""
    limit = int(model.config.num_frames)
    if num_frames is None:
        return limit, int(model.config.image_size)
    if not 1 <= num_frames <= limit:
        raise CalmcapError(f"num_frames must be between 1 and the model's {limit} "
                           f"(its decoder has {limit} frame positions), got {num_frames}")
    return int(num_frames), int(model.config.image_size)


def model_device(model: CALMModel) -> torch.device:
    """The device of the model's parameters (where inputs must go)."""
    return next(model.parameters()).device


_MODEL_CACHE: dict[tuple[str, str], tuple[tuple[int, int], LoadedModel]] = {}
_MODEL_CACHE_SIZE = 2


def _check_device(device: str) -> None:
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise CalmcapError(f"device {device!r} requested but CUDA is not available on this machine")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise CalmcapError(f"device {device!r} requested but MPS is not available on this machine")


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a block (re-enabled after, if it was on).

    Importing torch, open_clip and transformers allocates a few million long-lived objects, and
    the collector's full passes over the growing heap took 0.6-1.2 s of a 3.5-5 s import on 2
    cores (issue #13, BENCHMARKS.md "Cold start"). Nothing an import allocates is garbage, so
    the collection can wait until the imports are done.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_model(model: ModelLike = None, device: str = "cpu", stats: PipelineStats | None = None) -> LoadedModel:
    """A model in eval mode with its checkpoint's path and decoding: ``model`` itself when already
    loaded, else the checkpoint it names (see the module docstring).

    Checkpoints are cached per (path, device) while their weights file is unchanged, so calling
    :func:`calmcap.pipeline.caption_video` in a loop loads once.
    """
    start = time.perf_counter()
    try:
        # torch, open_clip and transformers: the slow part of any command (timed as "imports").
        with collector_paused():
            import open_clip  # noqa: F401
            from transformers import GPT2LMHeadModel  # noqa: F401

            from calmcap.checkpoint import read_generation
            from calmcap.models.calm import CALMModel
    except ImportError as error:  # pragma: no cover - broken installs
        raise CalmcapError(f"cannot import the model code ({error}); reinstall calmcap") from None
    imported = time.perf_counter()
    if stats is not None:
        stats.import_seconds += imported - start
    if isinstance(model, LoadedModel):
        model.model.eval()
        return model
    if isinstance(model, CALMModel):
        model.eval()
        return LoadedModel(model)
    path = resolve_model_path(model)
    _check_device(device)
    weights = path / CHECKPOINT_WEIGHTS_FILE
    key = (str(path.resolve()), str(device))
    signature = (weights.stat().st_size, weights.stat().st_mtime_ns) if weights.is_file() else (-1, -1)
    cached = _MODEL_CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    network = CALMModel.from_pretrained(path, device=device)
    network.eval()
    loaded = LoadedModel(network, path, read_generation(path))
    if len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
        _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    _MODEL_CACHE[key] = (signature, loaded)
    if stats is not None:
        stats.load_seconds += time.perf_counter() - imported
    logger.debug("loaded %s in %.2f s", path, time.perf_counter() - imported)
    return loaded
