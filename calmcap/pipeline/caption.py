"""Captioning videos: :class:`CaptionOptions`, :func:`iter_captions` and its list / single-video forms.

For a checkpoint path, decoding of the first videos starts before torch is even imported
(the model's frame settings are read from its config.json), so it hides behind start-up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Union

from calmcap.config import DecodeOptions
from calmcap.constants import MAX_FRAME_SIDE
from calmcap.errors import CalmcapError, VideoDecodeError
from calmcap.pipeline.features import encode_clips
from calmcap.pipeline.loading import (
    LoadedModel,
    ModelLike,
    frame_settings,
    load_model,
    peek_frame_settings,
    resolve_model_path,
)
from calmcap.pipeline.prefetch import ClipPrefetcher, DecodedClip, clip_batches
from calmcap.pipeline.stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.models.calm import CALMModel

PathLike = Union[str, "os.PathLike[str]"]

# The built-in decoding settings as a mapping (a view of DecodeOptions' defaults, not a copy of them).
DECODE_DEFAULTS: dict[str, Any] = asdict(DecodeOptions())


@dataclass
class CaptionOptions:
    """Overrides of a model's decoding settings (:class:`~calmcap.config.DecodeOptions` explains each).

    A setting left at ``None`` takes the checkpoint's own, what its training validated with
    (``generation`` in its config.json; the embedded benchmark's model decodes up to 40
    pieces), else the :class:`~calmcap.config.DecodeOptions` default: see :meth:`resolve`.
    """

    num_beams: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    do_sample: bool | None = None
    top_p: float | None = None
    temperature: float | None = None
    num_return_sequences: int | None = None

    def given(self) -> dict[str, Any]:
        """The settings this object sets (not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def validate(self) -> CaptionOptions:
        """Raise :class:`~calmcap.errors.ConfigError` (one line, naming the option) for impossible settings.

        Checks what is set; a check between settings waits until all of them are (see :meth:`resolve`).
        """
        DecodeOptions.check_values(self.given())
        return self

    def resolve(self, defaults: DecodeOptions | None = None) -> DecodeOptions:
        """The complete, checked settings: these overrides on ``defaults`` (a checkpoint's
        :attr:`LoadedModel.generation`; the built-in defaults when None)."""
        return replace(defaults or DecodeOptions(), **self.given()).check()


@dataclass
class CaptionResult:
    """One video's caption (or the reason it has none).

    ``score`` is the length-penalised log-probability of the caption under beam search, the
    mean token log-probability when sampling. ``beams`` holds all ``num_return_sequences``
    candidates as ``(caption, score)``, best first.
    """

    video: str
    caption: str | None = None
    score: float | None = None
    beams: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self, beams: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"video": self.video, "caption": self.caption, "score": self.score}
        if beams:
            out["beams"] = [{"caption": c, "score": s} for c, s in self.beams]
        return out


def _load_while_decoding(
    videos: Sequence[PathLike],
    model: ModelLike,
    num_frames: int | None,
    device: str,
    overlap: bool,
    stats: PipelineStats,
    max_side: int | None,
    backend: str,
    depth: int,
) -> tuple[LoadedModel, ClipPrefetcher]:
    """Start decoding (before the model loads when its config can be read cheaply), then load it."""
    prefetcher = None
    if model is None or isinstance(model, (str, os.PathLike)):
        path = resolve_model_path(model)
        peeked = peek_frame_settings(path)
        if peeked is not None and overlap:
            frames = num_frames if num_frames is not None and 1 <= num_frames <= peeked[0] else peeked[0]
            prefetcher = ClipPrefetcher(videos, frames, peeked[1], overlap=True, depth=depth,
                                        max_side=max_side, backend=backend, stats=stats)
        model = path
    try:
        loaded = load_model(model, device, stats)
        wanted = frame_settings(loaded.model, num_frames)
    except BaseException:
        if prefetcher is not None:
            prefetcher.close()
        raise
    if prefetcher is not None and (prefetcher.num_frames, prefetcher.image_size) != wanted:
        prefetcher.close()  # config.json disagreed with the loaded model: decode again
        prefetcher = None
    if prefetcher is None:
        prefetcher = ClipPrefetcher(videos, wanted[0], wanted[1], overlap=overlap, depth=depth,
                                    max_side=max_side, backend=backend, stats=stats)
    return loaded, prefetcher


def iter_captions(
    videos: Sequence[PathLike],
    model: ModelLike = None,
    *,
    options: CaptionOptions | None = None,
    num_frames: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    overlap: bool = True,
    stats: PipelineStats | None = None,
    max_side: int | None = MAX_FRAME_SIDE,
    backend: str = "auto",
    seed: int | None = None,
) -> Iterator[CaptionResult]:
    """Caption videos in batches, yielding one :class:`CaptionResult` per input, in input order.

    Bad videos (missing, unreadable, ...) yield a result with ``error`` set; the others are
    captioned. ``stats`` (optional) receives the time breakdown. ``seed`` seeds torch once the
    model is loaded (for reproducible sampling).
    """
    options = (options or CaptionOptions()).validate()
    if batch_size < 1:
        raise CalmcapError(f"batch_size must be at least 1, got {batch_size}")
    stats = stats if stats is not None else PipelineStats()
    stats.overlap = overlap
    start = time.perf_counter()
    loaded, prefetcher = _load_while_decoding(videos, model, num_frames, device, overlap, stats, max_side, backend,
                                              depth=2 * batch_size)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    try:
        decode = options.resolve(loaded.generation)
        for group in clip_batches(prefetcher, batch_size):
            good = [c for c in group if c.error is None]
            captions: dict[int, CaptionResult] = {}
            if good:
                for clip, result in zip(good, caption_clips(loaded.model, good, decode, stats), strict=True):
                    captions[clip.index] = result
            for clip in group:
                result = captions.get(clip.index) or CaptionResult(video=clip.path, error=clip.error)
                if result.ok:
                    stats.videos += 1
                else:
                    stats.failed += 1
                stats.wall_seconds = time.perf_counter() - start
                yield result
    finally:
        prefetcher.close()
        stats.wall_seconds = time.perf_counter() - start


class _torch_threads:
    """Run a block with ``n`` intra-op threads (None: unchanged), restoring the setting after."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        if self.n is not None and self.n != self.before:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)


# Beam search runs a few hundred tiny ops per caption ([beams, width] x [width, 4 * width]);
# splitting them over threads costs more in fork/join than it saves, and when the cores are
# shared (the decode thread, other processes) waiting threads collapse it: measured on the
# 2-core machine under load, ViT-B/32 + 3 beams x 20 tokens took 0.3 s with 1 thread and
# 3-5 s with 2. One thread also leaves the other core to the decode thread (issue #5).
DECODER_THREADS: int | None = 1


def caption_clips(
    model: CALMModel, clips: list[DecodedClip], decode: DecodeOptions, stats: PipelineStats
) -> list[CaptionResult]:
    """Caption already-decoded clips in one batch: the step both batch captioning and
    ``calmcap serve``'s micro-batcher run (one result per clip, its beams best first)."""
    frames, mask = encode_clips(model, clips, stats)
    start = time.perf_counter()
    device_is_cpu = frames.device.type == "cpu"
    with _torch_threads(DECODER_THREADS if device_is_cpu else None):
        out = model.generate(frame_features=frames, video_mask=mask, options=decode)
    stats.decoder_seconds += time.perf_counter() - start
    per_video = decode.num_return_sequences
    scores = out["scores"].float().cpu().tolist()
    results = []
    for i, clip in enumerate(clips):
        rows = slice(i * per_video, (i + 1) * per_video)
        beams = list(zip(out["captions"][rows], scores[rows], strict=True))
        beams.sort(key=lambda b: -b[1])  # beam search returns them sorted; samples are not
        results.append(CaptionResult(video=clip.path, caption=beams[0][0], score=float(beams[0][1]),
                                     beams=[(c, float(s)) for c, s in beams]))
    return results


def caption_videos(videos: Sequence[PathLike], model: ModelLike = None, **kwargs: Any) -> list[CaptionResult]:
    """:func:`iter_captions` as a list (same arguments)."""
    return list(iter_captions(videos, model, **kwargs))


def caption_video(video: PathLike, model: ModelLike = None, **kwargs: Any) -> str:
    """The caption of one video. Raises :class:`VideoDecodeError` when it cannot be decoded."""
    (result,) = caption_videos([video], model, **kwargs)
    if not result.ok:
        raise VideoDecodeError(str(video), result.error or "unknown error")
    return result.caption or ""
