"""The Python API behind the ``calmcap`` command line: caption, evaluate, score, index, retrieve, explain.

Every CLI subcommand is a thin wrapper over one function here, so what the command does can
be done from Python with the same defaults::

    import calmcap
    calmcap.caption_video("clip.mp4", model="runs/synth_tiny/model")          # -> str
    calmcap.caption_videos(["a.mp4", "b.mp4"], model=model)                   # -> [CaptionResult]
    calmcap.evaluate_checkpoint("runs/m", [("data/synth", ["test", "test_ood"])], out="reports/m")
    calmcap.score_captions("predictions.json", "annotations.json")
    calmcap.build_index(videos, "index/", model="runs/m"); calmcap.search_index("index/", "a red circle", model="runs/m")
    calmcap.explain_video("clip.mp4", model="runs/m")

``model`` is a checkpoint directory, a loaded :class:`~calmcap.models.calm.CALMModel`, or
``None``: then ``$CALMCAP_MODEL``, else ``runs/synth_tiny/model`` (what the README's main job
writes, relative to the working directory).

Decoding overlaps the model (issue #5): a background thread decodes and preprocesses the next
videos while the model encodes and captions the current batch. decord and PyAV release the
GIL while they decode and torch releases it in its kernels, so both cores stay busy. For a
single video the decode starts before torch is even imported, so it hides behind start-up.

Importing this module is cheap (no torch); heavy imports happen inside the functions.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from glob import glob, has_magic
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

from calmcap.config import DecodeOptions
from calmcap.errors import CalmcapError, VideoDecodeError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from calmcap.models.calm import CALMModel
    from calmcap.reports import BenchmarkReport
    from calmcap.video_index import IndexBuildReport, SearchHit

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ModelLike = Union["CALMModel", str, "os.PathLike[str]", None]

MODEL_ENV = "CALMCAP_MODEL"
# What the README's main job writes (recipes/configs/synth_tiny.yaml: output_dir + "/model").
DEFAULT_MODEL_DIR = "runs/synth_tiny/model"
TRAIN_COMMAND = "accelerate launch --num_cpu_threads_per_process 2 recipes/train_caption.py --config recipes/configs/synth_tiny.yaml"
# The same bound as calmcap.data.dataset.VideoSource.max_side (issue #7): frames larger than
# this are downscaled inside the decoder; CLIP resizes far below it anyway. Not imported from
# there because that module imports torch.
DEFAULT_MAX_SIDE = 1280
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts", ".3gp", ".ogv"}
)


# ============================================================================ options and results


# Beam-search settings that a checkpoint can carry (``generation`` in its config.json: what
# its training validated with) and the built-in values used when neither it nor the caller sets them.
DECODE_DEFAULTS: dict[str, Any] = asdict(DecodeOptions())


@dataclass
class CaptionOptions:
    """Caption decoding settings (see :meth:`calmcap.models.decoder.CaptionDecoder.generate`).

    ``max_length`` / ``min_length`` count generated tokens. ``do_sample`` switches from beam
    search to nucleus sampling (``top_p``, ``temperature``); ``num_return_sequences`` keeps
    that many beams (or samples) per video, best first. A beam setting left at ``None`` takes
    the checkpoint's own (:meth:`resolve`; the embedded benchmark's model decodes up to 40
    pieces), else :data:`DECODE_DEFAULTS`.
    """

    num_beams: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    do_sample: bool = False
    top_p: float = 1.0
    temperature: float = 1.0
    num_return_sequences: int = 1

    def resolve(self, model: Any = None) -> "CaptionOptions":
        """Every unset beam setting filled from ``model.generation_defaults``, else the built-ins."""
        defaults = {**DECODE_DEFAULTS, **(getattr(model, "generation_defaults", None) or {})}
        return replace(self, **{k: defaults[k] for k in DECODE_DEFAULTS if getattr(self, k) is None}).validate()

    def validate(self) -> "CaptionOptions":
        """Raise :class:`CalmcapError` (one line, naming the option) for impossible settings.

        Checks what is set; a check between two settings waits until both are (see :meth:`resolve`).
        """
        def given(*names: str) -> bool:
            return all(getattr(self, n) is not None for n in names)

        checks = [
            (not given("num_beams") or self.num_beams >= 1, f"num_beams must be at least 1, got {self.num_beams}"),
            (not given("max_length") or self.max_length >= 1, f"max_length must be at least 1, got {self.max_length}"),
            (not given("min_length") or self.min_length >= 0, f"min_length must be >= 0, got {self.min_length}"),
            (not given("min_length", "max_length") or self.min_length <= self.max_length,
             f"min_length must be between 0 and max_length ({self.max_length}), got {self.min_length}"),
            (not given("no_repeat_ngram_size") or self.no_repeat_ngram_size >= 0,
             f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.temperature > 0.0, f"temperature must be positive, got {self.temperature}"),
            (self.num_return_sequences >= 1, f"num_return_sequences must be at least 1, got {self.num_return_sequences}"),
            (self.do_sample or not given("num_beams") or self.num_return_sequences <= self.num_beams,
             f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams}) "
             "with beam search; raise num_beams or sample"),
        ]
        for ok, message in checks:
            if not ok:
                raise CalmcapError(message)
        return self

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`CALMModel.generate` (resolve against the model first)."""
        unset = [k for k in DECODE_DEFAULTS if getattr(self, k) is None]
        if unset:
            raise ValueError(f"unresolved decoding settings {unset}: call resolve(model) first")
        return asdict(self)


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


@dataclass
class PipelineStats:
    """Where the time of a captioning / indexing run went (seconds, wall clock).

    ``decode_seconds`` is the time spent decoding and preprocessing, wherever it ran (with
    overlap, in the background thread); ``decode_wait_seconds`` is the part of it the main
    thread actually waited for. ``import_seconds`` counts torch / open_clip / transformers.
    """

    videos: int = 0
    failed: int = 0
    import_seconds: float = 0.0
    load_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_wait_seconds: float = 0.0
    tower_seconds: float = 0.0
    decoder_seconds: float = 0.0
    wall_seconds: float = 0.0
    overlap: bool = True

    @property
    def videos_per_second(self) -> float:
        """Throughput over the whole run (start-up and model load included)."""
        return self.videos / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def processing_seconds(self) -> float:
        """Wall time after the model was ready (what a long batch converges to)."""
        return max(0.0, self.wall_seconds - self.import_seconds - self.load_seconds)

    @property
    def steady_videos_per_second(self) -> float:
        """Throughput once the model is loaded."""
        return self.videos / self.processing_seconds if self.processing_seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for humans: throughput and the per-stage breakdown."""
        return (
            f"{self.videos} video(s) in {self.wall_seconds:.2f} s ({self.videos_per_second:.2f} videos/s"
            f"{', ' + str(self.failed) + ' failed' if self.failed else ''}); "
            f"imports {self.import_seconds:.2f} s, load {self.load_seconds:.2f} s, "
            f"decode {self.decode_seconds:.2f} s ({'overlapped, waited ' + format(self.decode_wait_seconds, '.2f') + ' s' if self.overlap else 'inline'}), "
            f"image tower {self.tower_seconds:.2f} s, decoder {self.decoder_seconds:.2f} s"
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["videos_per_second"] = self.videos_per_second
        out["steady_videos_per_second"] = self.steady_videos_per_second
        return out


# ============================================================================ model resolution


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
    if (default / "config.json").is_file():
        return default
    raise CalmcapError(
        f"no model given and none found: pass --model DIR (a checkpoint directory), set {MODEL_ENV}, "
        f"or train the default one into {DEFAULT_MODEL_DIR} with `{TRAIN_COMMAND}`"
    )


def _peek_frame_settings(path: Path) -> tuple[int, int] | None:
    """``(num_frames, image_size)`` from a checkpoint's config.json without importing torch.

    Lets decoding start before the model (and torch) is loaded; ``None`` when the file is not
    readable, and then the real load reports the problem.
    """
    try:
        meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return int(meta["model"]["num_frames"]), int(meta["model"]["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "No pretrained weights loaded ... initialized randomly" on the root logger
    whenever a tower is built without a pretrained tag, including the meta-device build that a
    checkpoint then fills in; for a checkpoint load that warning is false, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


class _quiet_open_clip:
    def __enter__(self) -> None:
        self._filter = _DropRandomInitWarning()
        logging.getLogger().addFilter(self._filter)

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeFilter(self._filter)


_MODEL_CACHE: dict[tuple[str, str], tuple[tuple[int, int], "CALMModel"]] = {}
_MODEL_CACHE_SIZE = 2


def _check_device(device: str) -> None:
    import torch

    kind = torch.device(device).type
    if kind == "cuda" and not torch.cuda.is_available():
        raise CalmcapError(f"device {device!r} requested but CUDA is not available on this machine")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise CalmcapError(f"device {device!r} requested but MPS is not available on this machine")


def load_model(model: ModelLike = None, device: str = "cpu", stats: PipelineStats | None = None) -> "CALMModel":
    """A model in eval mode: ``model`` itself when already loaded, else the checkpoint it names.

    Checkpoints are cached per (path, device) while their weights file is unchanged, so calling
    :func:`caption_video` in a loop loads once.
    """
    start = time.perf_counter()
    try:
        # torch, open_clip and transformers: the slow part of any command (timed as "imports").
        import open_clip  # noqa: F401
        from transformers import GPT2LMHeadModel  # noqa: F401

        from calmcap.models.calm import CALMModel
    except ImportError as error:  # pragma: no cover - broken installs
        raise CalmcapError(f"cannot import the model code ({error}); reinstall calmcap") from None
    imported = time.perf_counter()
    if stats is not None:
        stats.import_seconds += imported - start
    if isinstance(model, CALMModel):
        model.eval()
        return model
    path = resolve_model_path(model)
    _check_device(device)
    weights = path / "model.safetensors"
    key = (str(path.resolve()), str(device))
    signature = (weights.stat().st_size, weights.stat().st_mtime_ns) if weights.is_file() else (-1, -1)
    cached = _MODEL_CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    with _quiet_open_clip():
        loaded = CALMModel.from_pretrained(path, device=device)
    loaded.eval()
    loaded.checkpoint_path = path  # type: ignore[attr-defined]  # for reports and index identity
    if len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
        _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    _MODEL_CACHE[key] = (signature, loaded)
    if stats is not None:
        stats.load_seconds += time.perf_counter() - imported
    logger.debug("loaded %s in %.2f s", path, time.perf_counter() - imported)
    return loaded


def _model_device(model: "CALMModel") -> "torch.device":
    return next(model.parameters()).device


def _frame_settings(model: "CALMModel", num_frames: int | None) -> tuple[int, int]:
    limit = int(model.config.num_frames)
    if num_frames is None:
        return limit, int(model.config.image_size)
    if not 1 <= num_frames <= limit:
        raise CalmcapError(f"num_frames must be between 1 and the model's {limit} (its decoder has {limit} frame positions), got {num_frames}")
    return int(num_frames), int(model.config.image_size)


# ============================================================================ video inputs


def expand_video_inputs(inputs: Iterable[PathLike]) -> tuple[list[str], list[tuple[str, str]]]:
    """Files, directories (recursive, video extensions) and glob patterns -> video paths.

    Returns ``(videos, problems)``: the paths in argument order (directories and globs sorted,
    duplicates dropped) and ``(input, reason)`` for inputs that name nothing. A file named
    explicitly is kept whatever its extension (decoding will say if it is not a video).
    """
    videos: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.normpath(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            videos.append(path)

    def is_video(path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if is_video(p))
            if not found:
                problems.append((text, f"directory holds no video files ({', '.join(sorted(VIDEO_EXTENSIONS)[:6])}, ...)"))
            for f in found:
                add(f)
        elif path.exists() or os.path.lexists(text):
            add(text)
        elif has_magic(text):
            matches = sorted(glob(text, recursive=True))
            found = []
            for match in matches:
                p = Path(match)
                if p.is_dir():
                    found.extend(sorted(str(q) for q in p.rglob("*") if is_video(q)))
                elif is_video(p):
                    found.append(match)
            if not found:
                problems.append((text, "pattern matches no video file" if not matches else f"pattern matches {len(matches)} path(s) but no video file"))
            for f in found:
                add(f)
        else:
            problems.append((text, "no such file or directory"))
    return videos, problems


# ============================================================================ decoding with overlap


@dataclass
class DecodedClip:
    """One preprocessed video: ``video`` float [T, 3, S, S], ``mask`` bool [T]; or an ``error``."""

    index: int
    path: str
    video: "torch.Tensor | None" = None
    mask: "torch.Tensor | None" = None
    error: str | None = None
    seconds: float = 0.0


def decode_clip(
    path: PathLike,
    num_frames: int,
    image_size: int,
    *,
    index: int = 0,
    max_side: int | None = DEFAULT_MAX_SIDE,
    backend: str = "auto",
) -> DecodedClip:
    """Decode ``num_frames`` uniformly sampled frames (segment middles) and apply CLIP preprocessing.

    The same steps as an evaluation dataset item (``read_frames`` + ``clip_transform``), so a
    caption here equals the one ``calmcap evaluate`` produces. Never raises for a bad video:
    the reason is in ``error`` (``"<path>: <reason>"`` messages lose the path prefix).
    """
    start = time.perf_counter()
    clip = DecodedClip(index=index, path=str(path))
    try:
        from calmcap.data.video import read_frames

        frames, mask = read_frames(path, num_frames, mode="uniform", max_side=max_side, backend=backend)  # type: ignore[arg-type]
        import torch

        from calmcap.data.transforms import clip_transform

        clip.video = clip_transform(frames, image_size)
        clip.mask = torch.from_numpy(mask)
    except VideoDecodeError as error:
        clip.error = error.reason
    except Exception as error:  # noqa: BLE001 - one odd file must not stop a batch of thousands
        logger.debug("decoding %s failed", path, exc_info=True)
        clip.error = f"{type(error).__name__}: {error}".splitlines()[0]
    clip.seconds = time.perf_counter() - start
    return clip


class ClipPrefetcher:
    """Iterate :class:`DecodedClip` in input order, decoding ahead in a background thread.

    With ``overlap=False`` each clip is decoded when asked for (the sequential baseline).
    ``depth`` bounds how many decoded clips wait in memory (each ~7 MB at 12 x 224 px).
    Use as a context manager or call :meth:`close` to stop the thread early.
    """

    _DONE = object()

    def __init__(
        self,
        paths: Sequence[PathLike],
        num_frames: int,
        image_size: int,
        *,
        overlap: bool = True,
        depth: int = 8,
        max_side: int | None = DEFAULT_MAX_SIDE,
        backend: str = "auto",
        stats: PipelineStats | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.num_frames = num_frames
        self.image_size = image_size
        self.overlap = overlap
        self.max_side = max_side
        self.backend = backend
        self.stats = stats
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if overlap and self.paths:
            self._thread = threading.Thread(target=self._work, name="calmcap-decode", daemon=True)
            self._thread.start()

    def _decode(self, index: int) -> DecodedClip:
        clip = decode_clip(self.paths[index], self.num_frames, self.image_size, index=index,
                           max_side=self.max_side, backend=self.backend)
        if self.stats is not None:
            self.stats.decode_seconds += clip.seconds
        return clip

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for index in range(len(self.paths)):
                if self._stop.is_set() or not self._put(self._decode(index)):
                    return
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            self._put(error)
            return
        self._put(self._DONE)

    def __iter__(self) -> Iterator[DecodedClip]:
        if self._thread is None:
            for index in range(len(self.paths)):
                if self._stop.is_set():
                    return
                clip = self._decode(index)
                if self.stats is not None:
                    self.stats.decode_wait_seconds += clip.seconds
                yield clip
            return
        while True:
            start = time.perf_counter()
            item = self._queue.get()
            if self.stats is not None:
                self.stats.decode_wait_seconds += time.perf_counter() - start
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop the decoding thread (it finishes the clip it is decoding)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> "ClipPrefetcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _batches(clips: Iterable[DecodedClip], batch_size: int) -> Iterator[list[DecodedClip]]:
    """Group clips in order; bad clips ride along with the decodable ones.

    The first groups hold 1, 2, 4, ... decodable clips up to ``batch_size``: the model starts
    on the first video as soon as it is decoded instead of waiting for a whole batch, and the
    decode thread stays ahead from then on. The schedule depends only on the inputs, so the
    captions are the same with and without overlap.
    """
    pending: list[DecodedClip] = []
    good, size = 0, 1
    for clip in clips:
        pending.append(clip)
        if clip.error is None:
            good += 1
        if good >= min(size, batch_size):
            yield pending
            pending, good, size = [], 0, size * 2
    if pending:
        yield pending


def _encode_video(model: "CALMModel", video: PathLike, num_frames: int | None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Frame features [1, T, D] and mask [1, T] of one video file; VideoDecodeError if unreadable."""
    frames, image_size = _frame_settings(model, num_frames)
    clip = decode_clip(video, frames, image_size)
    if clip.error is not None:
        raise VideoDecodeError(str(video), clip.error)
    return _encode_frames(model, [clip], None)


def _encode_frames(model: "CALMModel", clips: list[DecodedClip], stats: PipelineStats | None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Frame features [B, T, D] and mask [B, T] of decodable clips (image tower)."""
    import torch

    device = _model_device(model)
    start = time.perf_counter()
    video = torch.stack([c.video for c in clips]).to(device)  # type: ignore[misc]
    mask = torch.stack([c.mask for c in clips]).to(device)  # type: ignore[misc]
    with torch.inference_mode():
        frames = model.encode_frames(video)
    if stats is not None:
        stats.tower_seconds += time.perf_counter() - start
    return frames, mask.bool()


def _prepare(
    videos: Sequence[PathLike],
    model: ModelLike,
    num_frames: int | None,
    device: str,
    overlap: bool,
    stats: PipelineStats,
    max_side: int | None,
    backend: str,
    depth: int,
) -> tuple["CALMModel", ClipPrefetcher]:
    """Start decoding (before the model loads when its config can be read cheaply), then load it."""
    prefetcher = None
    if model is None or isinstance(model, (str, os.PathLike)):
        path = resolve_model_path(model)
        peeked = _peek_frame_settings(path)
        if peeked is not None and overlap:
            frames = num_frames if num_frames is not None and 1 <= num_frames <= peeked[0] else peeked[0]
            prefetcher = ClipPrefetcher(videos, frames, peeked[1], overlap=True, depth=depth,
                                        max_side=max_side, backend=backend, stats=stats)
        model = path
    try:
        loaded = load_model(model, device, stats)
        wanted = _frame_settings(loaded, num_frames)
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


# ============================================================================ captioning


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
    max_side: int | None = DEFAULT_MAX_SIDE,
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
    loaded, prefetcher = _prepare(videos, model, num_frames, device, overlap, stats, max_side, backend, depth=2 * batch_size)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    try:
        for group in _batches(prefetcher, batch_size):
            good = [c for c in group if c.error is None]
            captions: dict[int, CaptionResult] = {}
            if good:
                for clip, result in zip(good, _caption_batch(loaded, good, options.resolve(loaded), stats)):
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


def _caption_batch(model: "CALMModel", clips: list[DecodedClip], options: CaptionOptions, stats: PipelineStats) -> list[CaptionResult]:
    frames, mask = _encode_frames(model, clips, stats)
    start = time.perf_counter()
    device_is_cpu = frames.device.type == "cpu"
    with _torch_threads(DECODER_THREADS if device_is_cpu else None):
        out = model.generate(frame_features=frames, video_mask=mask, **options.generate_kwargs())
    stats.decoder_seconds += time.perf_counter() - start
    per_video = options.num_return_sequences
    scores = out["scores"].float().cpu().tolist()
    results = []
    for i, clip in enumerate(clips):
        beams = list(zip(out["captions"][i * per_video : (i + 1) * per_video], scores[i * per_video : (i + 1) * per_video]))
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


# ============================================================================ evaluation


DataSpec = Union[tuple[PathLike, Sequence[str]], tuple[PathLike, Sequence[str], str]]


def resolve_manifest(data: PathLike) -> Path:
    """A manifest file, or ``DIR/manifest.jsonl`` for a directory; one-line error when missing."""
    path = Path(data)
    if path.is_dir():
        path = path / "manifest.jsonl"
        if not path.is_file():
            raise CalmcapError(f"{data}: directory has no manifest.jsonl (pass the manifest file, or make one with `calmcap prepare` / `calmcap synth`)")
    elif not path.is_file():
        raise CalmcapError(f"{data}: no such manifest file or directory")
    return path


def evaluate_checkpoint(
    model: ModelLike,
    data: PathLike | Sequence[DataSpec],
    splits: Sequence[str] | None = None,
    *,
    out: PathLike | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    num_frames: int | None = None,
    decode: CaptionOptions | None = None,
    captioning: bool = True,
    retrieval: bool = True,
    use_java: bool | None = None,
    meteor: bool = True,
    max_videos: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    plots: bool = True,
) -> "BenchmarkReport":
    """Evaluate one checkpoint on one or several manifests/splits; optionally write the reports.

    ``data`` is a manifest (file or directory) with ``splits``, or a list of
    ``(manifest, [split, ...])`` or ``(manifest, [split, ...], name)`` (the name shown in the
    tables; default: the manifest's folder name). Every (manifest, split) becomes one row of the cross-domain
    table. With ``out`` the report files are written there (``report.json``, ``report.md``,
    predictions, plots; see :mod:`calmcap.reports`).
    """
    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.data.manifest import read_manifest
    from calmcap.evaluation import evaluate
    from calmcap.reports import BenchmarkReport, EvalRow, data_identity, model_identity

    if isinstance(data, (str, os.PathLike)):
        if not splits:
            raise CalmcapError(f"name at least one split of {data} to evaluate")
        specs: list[DataSpec] = [(data, list(splits))]
    else:
        if splits:
            raise CalmcapError("pass splits inside the (manifest, splits) pairs when data is a list")
        specs = list(data)
    if not specs:
        raise CalmcapError("nothing to evaluate: no data given")
    if not (captioning or retrieval):
        raise CalmcapError("nothing to evaluate: both captioning and retrieval are off")
    decode = (decode or CaptionOptions()).validate()
    if decode.do_sample or decode.num_return_sequences != 1:
        raise CalmcapError("evaluation decodes deterministically with one caption per video (no sampling)")
    loaded = load_model(model, device)
    decode = decode.resolve(loaded)
    frames, image_size = _frame_settings(loaded, num_frames)
    identity = model_identity(loaded)
    report = BenchmarkReport(model=identity, settings={
        "batch_size": batch_size, "num_frames": frames, "image_size": image_size, "device": str(device),
        "captioning": captioning, "retrieval": retrieval, "max_videos": max_videos,
        "decode": {k: getattr(decode, k) for k in DECODE_DEFAULTS} if captioning else None,
    })
    for spec in specs:
        manifest_arg, split_names, *named = spec
        manifest = resolve_manifest(manifest_arg)
        if not split_names:
            raise CalmcapError(f"{manifest_arg}: no split given to evaluate")
        for split in split_names:
            entries = read_manifest(manifest, split)
            total = len(entries)
            if max_videos is not None:
                entries = entries[:max_videos]
            dataset = VideoCaptionDataset(manifest, split, frames, image_size, mode="videos", entries=entries)
            start = time.perf_counter()
            logger.info("evaluating %s split %s (%d videos)", manifest, split, len(entries))
            try:
                result = evaluate(
                    loaded, dataset, batch_size=batch_size, num_workers=num_workers, captioning=captioning,
                    retrieval=retrieval, use_java=use_java, meteor=meteor, progress=progress,
                    decode=DecodeOptions(**{k: getattr(decode, k) for k in DECODE_DEFAULTS}),
                )
            except CalmcapError as error:  # name the manifest and split the one-line error is about
                raise CalmcapError(f"{manifest} split {split}: {error}") from None
            data_id = data_identity(manifest, split, total, len(entries))
            if named and named[0]:
                data_id["name"] = str(named[0])
            row = EvalRow.from_result(result, manifest=manifest, split=split, entries=entries, identity=data_id,
                                      seconds=time.perf_counter() - start)
            row.protocol["caption_metrics"] = _caption_metric_protocol(use_java, meteor) if captioning else None
            report.add(row)
    if out is not None:
        report.write(out, plots=plots)
    return report


def _caption_metric_protocol(use_java: bool | None, meteor: bool) -> dict[str, Any]:
    from calmcap.metrics import java_available

    java = java_available() if use_java is None else use_java
    return {
        "scorer": "pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr), x100",
        "tokenizer": "PTB (Java)" if java else "Python stand-in for PTB (no Java; not paper-comparable)",
        "meteor": bool(java and meteor),
        "spice": False,
    }


# ============================================================================ scoring any system's captions


@dataclass
class ScoreResult:
    """Caption metrics of a prediction file against references."""

    metrics: dict[str, float]
    num_videos: int
    num_references: int
    protocol: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load_json(path: PathLike, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalmcapError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise CalmcapError(f"{path}: is a directory, expected a {what} JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CalmcapError(f"{path}: not valid JSON ({error})") from None


def load_predictions(source: PathLike | Sequence[dict[str, Any]] | dict[str, str]) -> dict[str, str]:
    """Predictions ``{id: caption}`` from COCO-style ``[{"image_id", "caption"}]`` or ``{id: caption}``.

    ``source`` is a JSON file or the loaded object. Ids become strings; duplicates are errors.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<predictions>"
    obj = _load_json(source, "predictions") if isinstance(source, (str, os.PathLike)) else source
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(value, str):
                raise CalmcapError(f"{name}: prediction for id {key!r} must be a caption string, got {type(value).__name__}")
            out[str(key)] = value
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
                raise CalmcapError(f"{name}: item {i} must be {{\"image_id\": ..., \"caption\": \"...\"}}, got {str(item)[:80]}")
            key = str(item["image_id"])
            if key in out:
                raise CalmcapError(f"{name}: image_id {key!r} has more than one prediction (item {i})")
            out[key] = item["caption"]
    else:
        raise CalmcapError(f"{name}: expected a COCO-style list of {{image_id, caption}} or an {{id: caption}} object")
    if not out:
        raise CalmcapError(f"{name}: no predictions")
    return out


def load_references(source: PathLike | dict[str, Any], split: str | Sequence[str] | None = None) -> dict[str, list[str]]:
    """References ``{id: [caption, ...]}``.

    Accepted: a calmcap manifest (``.jsonl`` file or a directory holding ``manifest.jsonl``;
    ``split`` picks splits), COCO-style annotations ``{"annotations": [{"image_id",
    "caption"}]}``, a list of such items, or ``{id: [caption, ...]}``.
    """
    if isinstance(source, (str, os.PathLike)) and (Path(source).is_dir() or str(source).endswith(".jsonl")):
        from calmcap.data.manifest import read_manifest

        entries = read_manifest(resolve_manifest(source), split)
        return {e.video_id: list(e.captions) for e in entries}
    if split:
        raise CalmcapError("--split applies to manifest references (.jsonl or a directory); these are COCO-style annotations")
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<references>"
    obj = _load_json(source, "references") if isinstance(source, (str, os.PathLike)) else source
    items = obj.get("annotations") if isinstance(obj, dict) and "annotations" in obj else obj
    out: dict[str, list[str]] = {}
    if isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
                raise CalmcapError(f"{name}: annotation {i} must be {{\"image_id\": ..., \"caption\": \"...\"}}, got {str(item)[:80]}")
            out.setdefault(str(item["image_id"]), []).append(item["caption"])
    elif isinstance(items, dict):
        for key, value in items.items():
            refs = [value] if isinstance(value, str) else value
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise CalmcapError(f"{name}: references of id {key!r} must be a list of strings")
            out[str(key)] = list(refs)
    else:
        raise CalmcapError(f"{name}: expected COCO-style annotations, a manifest, or an {{id: [captions]}} object")
    if not out:
        raise CalmcapError(f"{name}: no references")
    return out


def score_captions(
    predictions: PathLike | Sequence[dict[str, Any]] | dict[str, str],
    references: PathLike | dict[str, Any],
    *,
    split: str | Sequence[str] | None = None,
    use_java: bool | None = None,
    meteor: bool = True,
) -> ScoreResult:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (x100) of any system's captions (:func:`calmcap.metrics.caption_metrics`).

    The prediction ids must equal the reference ids (after ``split`` selection); otherwise a
    one-line error names how many and which differ.
    """
    from calmcap.metrics import caption_metrics

    preds = load_predictions(predictions)
    refs = load_references(references, split)
    if set(preds) != set(refs):
        missing = sorted(set(refs) - set(preds))
        extra = sorted(set(preds) - set(refs))
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference id(s) without a prediction (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} predicted id(s) without references (e.g. {', '.join(extra[:3])})")
        raise CalmcapError(f"prediction and reference ids differ: {'; '.join(parts)}")
    for key, value in refs.items():
        if not value:
            raise CalmcapError(f"id {key!r} has no reference captions")
    metrics = caption_metrics(preds, refs, use_java=use_java, meteor=meteor)
    return ScoreResult(metrics=metrics, num_videos=len(preds), num_references=sum(len(v) for v in refs.values()),
                       protocol=_caption_metric_protocol(use_java, meteor))


# ============================================================================ index and retrieval


def build_index(
    videos: Sequence[PathLike],
    index: PathLike,
    model: ModelLike = None,
    *,
    batch_size: int = 8,
    num_frames: int | None = None,
    device: str = "cpu",
    overlap: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    flush_every: int = 256,
    stats: PipelineStats | None = None,
) -> "IndexBuildReport":
    """Embed videos into an on-disk index (:mod:`calmcap.video_index`); resumable.

    Videos already in the index are skipped; the others are decoded (overlapped with the
    model), encoded to normalised ``V`` and appended in float16. Bad videos are listed in the
    report and skipped (a re-run tries them again).
    """
    import torch

    from calmcap.reports import model_identity
    from calmcap.video_index import IndexBuildReport, IndexWriter

    stats = stats if stats is not None else PipelineStats()
    stats.overlap = overlap
    start = time.perf_counter()
    loaded = load_model(model, device, stats)
    frames, image_size = _frame_settings(loaded, num_frames)
    identity = model_identity(loaded)
    keys = [str(Path(v).resolve()) for v in videos]
    writer = IndexWriter(index, model=identity, embed_dim=loaded.embed_dim, num_frames=frames, overwrite=overwrite)
    todo = [(k, str(v)) for k, v in zip(keys, videos) if k not in writer.done]
    todo = list({k: v for k, v in todo}.items())
    report = IndexBuildReport(path=Path(index), skipped=len(keys) - len(todo))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="index", unit="video", dynamic_ncols=True)
    by_display = {display: key for key, display in todo}
    prefetcher = ClipPrefetcher([d for _, d in todo], frames, image_size, overlap=overlap, depth=2 * batch_size, stats=stats)
    try:
        for group in _batches(prefetcher, batch_size):
            good = [c for c in group if c.error is None]
            for clip in group:
                if clip.error is not None:
                    report.bad.append((clip.path, clip.error))
                    stats.failed += 1
            if good:
                features, mask = _encode_frames(loaded, good, stats)
                with torch.inference_mode():
                    embeds = loaded.fuse(features, mask).float().cpu().numpy()
                writer.add([by_display[c.path] for c in good], embeds)
                report.added += len(good)
                stats.videos += len(good)
                if writer.pending >= flush_every:
                    writer.flush()
            if bar is not None:
                bar.update(len(group))
        writer.finalize(bad=report.bad)
    finally:
        prefetcher.close()
        writer.flush()
        if bar is not None:
            bar.close()
        stats.wall_seconds = time.perf_counter() - start
    report.total = writer.count
    report.seconds = stats.wall_seconds
    return report


def _check_index_model(idx: Any, loaded: "CALMModel") -> None:
    from calmcap.reports import same_model

    if idx.embed_dim != loaded.embed_dim:
        raise CalmcapError(f"{idx.path}: index holds {idx.embed_dim}-d embeddings but the model makes {loaded.embed_dim}-d ones; use the model that built it ({idx.model.get('path')})")
    if not same_model(idx.model, loaded):
        raise CalmcapError(f"{idx.path}: built with another model ({idx.model.get('path')}, sha256 {str(idx.model.get('sha256'))[:12]}); "
                           "query it with that model or rebuild the index with `calmcap index --overwrite`")


def search_index(
    index: PathLike | Any,
    query: str | Sequence[str],
    model: ModelLike = None,
    *,
    top_k: int = 10,
    device: str = "cpu",
) -> "list[SearchHit] | list[list[SearchHit]]":
    """Text-to-video search: the ``top_k`` indexed videos by cosine similarity to the query text.

    One query string gives a list of hits; a list of queries gives one list per query.
    """
    import torch

    from calmcap.video_index import VideoIndex

    idx = index if isinstance(index, VideoIndex) else VideoIndex.open(index)
    loaded = load_model(model, device)
    _check_index_model(idx, loaded)
    queries = [query] if isinstance(query, str) else list(query)
    if not queries or any(not q.strip() for q in queries):
        raise CalmcapError("empty query text")
    with torch.inference_mode():
        text = loaded.encode_text(queries).float().cpu().numpy()
    hits = idx.search(text, top_k)
    return hits[0] if isinstance(query, str) else hits


def rank_sentences(
    video: PathLike,
    sentences: Sequence[str],
    model: ModelLike = None,
    *,
    top_k: int | None = None,
    num_frames: int | None = None,
    device: str = "cpu",
) -> list[tuple[str, float]]:
    """Video-to-text: ``sentences`` sorted by cosine similarity to the video, ``(sentence, score)``."""
    import torch

    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise CalmcapError("no sentences to rank")
    loaded = load_model(model, device)
    features, mask = _encode_video(loaded, video, num_frames)
    with torch.inference_mode():
        v = loaded.fuse(features, mask).float()
        texts = torch.cat([loaded.encode_text(sentences[i : i + 256]).float() for i in range(0, len(sentences), 256)])
    scores = (texts @ v[0]).cpu().tolist()
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    return [(sentences[i], float(scores[i])) for i in order]


# ============================================================================ explain


@dataclass
class AnchorExplanation:
    """The video's anchor distribution and its caption's (the paper's qualitative figure).

    ``video`` is ``V_p`` (video vs anchors); ``predicted`` is ``S_p_hat``, the text
    distribution the VAE generates from ``V_p`` (None for the direct-alignment variants);
    ``caption`` is ``S_p`` of ``caption_text``. Each is a list of ``(label, probability)``,
    highest first, ``top_k`` long.
    """

    video_path: str
    caption_text: str
    caption_source: str  # "given" or "generated"
    num_anchors: int
    video: list[tuple[str, float]]
    predicted: list[tuple[str, float]] | None
    caption: list[tuple[str, float]]
    overlap: list[str]

    def to_json(self) -> dict[str, Any]:
        def pairs(values: list[tuple[str, float]] | None) -> list[dict[str, Any]] | None:
            return None if values is None else [{"label": label, "probability": p} for label, p in values]

        return {
            "video": self.video_path, "caption": self.caption_text, "caption_source": self.caption_source,
            "num_anchors": self.num_anchors, "video_anchors": pairs(self.video),
            "predicted_caption_anchors": pairs(self.predicted), "caption_anchors": pairs(self.caption),
            "overlap": self.overlap,
        }


def explain_video(
    video: PathLike,
    model: ModelLike = None,
    *,
    caption: str | None = None,
    top_k: int = 10,
    out_png: PathLike | None = None,
    options: CaptionOptions | None = None,
    num_frames: int | None = None,
    device: str = "cpu",
) -> AnchorExplanation:
    """Top anchors of a video's anchor distribution and of its caption's (given, else generated).

    Raises :class:`CalmcapError` for a baseline model without the anchor branch. With
    ``out_png`` a bar chart is written there (:func:`calmcap.reports.plot_anchor_explanation`).
    """
    import torch

    loaded = load_model(model, device)
    if loaded.anchor_bank is None:
        raise CalmcapError(
            f"this model has no anchor branch (alignment.variant={loaded.config.alignment.variant!r}, "
            f"{len(loaded.labels)} anchors): a baseline has no anchor distribution to explain"
        )
    if top_k < 1:
        raise CalmcapError(f"top_k must be at least 1, got {top_k}")
    if out_png is not None and Path(out_png).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise CalmcapError(f"{out_png}: the chart is written as .png, .pdf, .svg or .jpg; name the file accordingly")
    features, mask = _encode_video(loaded, video, num_frames)
    with torch.inference_mode():
        video_dist = loaded.video_distribution(features, mask)[0].float()
        predicted = None
        if loaded.vae is not None:
            predicted = loaded.vae(video_dist[None], sample=False)["text_logprob_hat"][0].exp().float()
        source = "given"
        if caption is None or not caption.strip():
            out = loaded.generate(frame_features=features, video_mask=mask, **(options or CaptionOptions()).resolve(loaded).generate_kwargs())
            caption, source = out["captions"][0], "generated"
        text_dist = loaded.text_distribution(loaded.encode_text_raw(loaded.tokenize_text([caption])))[0].float()
    labels = loaded.labels
    k = min(top_k, len(labels))

    def top(dist: "torch.Tensor") -> list[tuple[str, float]]:
        values, indices = dist.topk(k)
        return [(labels[int(i)], float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    explanation = AnchorExplanation(
        video_path=str(video), caption_text=caption, caption_source=source, num_anchors=len(labels),
        video=top(video_dist), predicted=top(predicted) if predicted is not None else None, caption=top(text_dist),
        overlap=[],
    )
    caption_labels = {label for label, _ in explanation.caption}
    explanation.overlap = [label for label, _ in explanation.video if label in caption_labels]
    if out_png is not None:
        from calmcap.reports import plot_anchor_explanation

        plot_anchor_explanation(explanation, out_png)
    return explanation


__all__ = [
    "AnchorExplanation",
    "CaptionOptions",
    "CaptionResult",
    "ClipPrefetcher",
    "DecodedClip",
    "PipelineStats",
    "ScoreResult",
    "build_index",
    "caption_video",
    "caption_videos",
    "decode_clip",
    "evaluate_checkpoint",
    "expand_video_inputs",
    "explain_video",
    "iter_captions",
    "load_model",
    "load_predictions",
    "load_references",
    "rank_sentences",
    "resolve_manifest",
    "resolve_model_path",
    "score_captions",
    "search_index",
]
