"""CLIP preprocessing for whole clips, in torch.

The evaluation path reproduces open_clip's ``image_transform(image_size, is_train=False)``
(resize the shorter side to ``image_size`` with antialiased bicubic, center crop, scale to
[0, 1], normalise with the tower's mean/std) applied frame by frame to PIL images, but does it
for all T frames of a clip in one batched ``torch.nn.functional.interpolate`` call.

Why resize in uint8: torch's antialiased bicubic kernel for uint8 channels-last tensors follows
Pillow's resampling (a = -0.5, same support, rounding to uint8 like PIL does), so the result
matches open_clip's PIL pipeline to within one uint8 step (~0.015 in normalised units, almost
always exactly), and it is about 10x faster on CPU than resizing float tensors (see
tests/data/test_transforms.py for the measured difference).

torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

# Copied from open_clip.constants (open_clip 3.x) so that importing calmcap does not import
# open_clip (~3 s: it pulls torchvision and torch._dynamo); a test checks they still agree.
OPENAI_DATASET_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INCEPTION_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
INCEPTION_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

Interpolation = Literal["bicubic", "bilinear"]
ResizeMode = Literal["shortest", "squash"]

# Default training crop: a square covering 90-100% of the area of the largest square that fits
# in the frame, as open_clip's default RandomResizedCrop scale (0.9, 1.0).
DEFAULT_TRAIN_SCALE: tuple[float, float] = (0.9, 1.0)


def to_video_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` (numpy or torch) -> uint8 ``[T, 3, H, W]`` in channels-last memory.

    Channels-last is a view of the input's memory (no copy), and it is the layout torch's fast
    uint8 resize kernels want.
    """
    import torch

    video = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if video.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {video.dtype}")
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {tuple(video.shape)}")
    if video.shape[0] == 0 or video.shape[1] == 0 or video.shape[2] == 0:
        raise ValueError(f"frames must be non-empty, got shape {tuple(video.shape)}")
    return video.permute(0, 3, 1, 2)


def _shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    # torchvision's rule for Resize(int): the short side becomes `size`, the long side is
    # int(size * long / short) (truncated, not rounded), keeping open_clip's exact output size.
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


class Resize:
    """Resize a whole clip ``[T, 3, H, W]`` in one batched torch call.

    ``mode="shortest"``: the shorter side becomes ``size`` (aspect kept, torchvision's
    ``Resize(int)`` size rule); ``"squash"``: the output is ``size x size`` (or ``(h, w)``).
    uint8 input is resized in uint8 (Pillow-compatible antialiased kernels, channels-last,
    fast); float input is resized in float. The output has the input's dtype.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        mode: ResizeMode = "shortest",
        interpolation: Interpolation = "bicubic",
        antialias: bool = True,
    ) -> None:
        if mode not in ("shortest", "squash"):
            raise ValueError(f"mode must be 'shortest' or 'squash', got {mode!r}")
        if interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
        if mode == "shortest" and not isinstance(size, int):
            raise ValueError("mode='shortest' needs an int size")
        self.size = size
        self.mode = mode
        self.interpolation = interpolation
        self.antialias = antialias

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the output for an input of the given size."""
        if self.mode == "shortest":
            assert isinstance(self.size, int)
            return _shortest_side_size(height, width, self.size)
        return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)  # type: ignore[return-value]

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """``video``: ``[T, 3, H, W]`` uint8 or float -> ``[T, 3, h, w]``, same dtype."""
        return _resize(video, self.output_size(*video.shape[-2:]), self.interpolation, self.antialias)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, mode={self.mode!r}, "
            f"interpolation={self.interpolation!r}, antialias={self.antialias})"
        )


def _resize(video: torch.Tensor, size: tuple[int, int], interpolation: str, antialias: bool) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    if tuple(video.shape[-2:]) == tuple(size):
        return video
    if video.dtype == torch.uint8 and antialias:
        video = video.contiguous(memory_format=torch.channels_last)
        return F.interpolate(video, size=size, mode=interpolation, antialias=True, align_corners=False)
    dtype = video.dtype
    out = F.interpolate(video.float(), size=size, mode=interpolation, antialias=antialias, align_corners=False)
    if dtype == torch.uint8:  # non-antialiased uint8: resized in float, rounded back like PIL
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(dtype)


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """Center ``size x size`` crop of ``[T, 3, H, W]`` (torchvision's offsets:
    ``round((H - size) / 2)``). The frame must be at least ``size`` on both sides."""
    height, width = video.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cannot center-crop {size}x{size} from {height}x{width}")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return video[..., top : top + size, left : left + size]


def random_square_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float] = DEFAULT_TRAIN_SCALE,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int]:
    """Draw ``(top, left, side)`` of a square crop for training.

    ``side = round(min(H, W) * sqrt(u))`` with ``u ~ U[scale[0], scale[1]]`` (so the crop holds
    that fraction of the area of the largest square that fits), placed uniformly at random in
    the frame. One box is drawn per clip so every frame gets the same crop.
    """
    import torch

    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    u = lo + (hi - lo) * torch.rand((), generator=generator).item()
    side = max(1, min(min(height, width), int(round(min(height, width) * math.sqrt(u)))))
    top = int(torch.randint(0, height - side + 1, (), generator=generator).item())
    left = int(torch.randint(0, width - side + 1, (), generator=generator).item())
    return top, left, side


def _normalize(video_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    import torch

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    # (x / 255 - mean) / std in one fused-ish pass, in a fresh contiguous NCHW tensor.
    out = video_uint8.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    return out.div_(255.0).sub_(mean_t).div_(std_t)


def clip_transform(
    frames: np.ndarray | torch.Tensor,
    image_size: int,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
    train: bool = False,
    generator: torch.Generator | None = None,
    interpolation: Interpolation = "bicubic",
    train_scale: tuple[float, float] = DEFAULT_TRAIN_SCALE,
) -> torch.Tensor:
    """CLIP preprocessing of a clip: uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, S, S]``.

    ``train=False`` (evaluation) reproduces open_clip's ``image_transform(S, is_train=False)``
    frame by frame: shorter side to ``S`` (antialiased bicubic), center ``S x S`` crop, /255,
    ``(x - mean) / std``.

    ``train=True`` replaces resize + center crop by one random square crop per clip (the same
    box for every frame, so motion is not jittered): the square covers a fraction drawn from
    ``train_scale`` (default 0.9-1.0, open_clip's default RandomResizedCrop scale) of the area
    of the largest square in the frame, at a random position, resized to ``S x S``. Unlike
    RandomResizedCrop it never changes the aspect ratio, and there is deliberately no
    horizontal flip: captions say "left" and "right". Randomness comes from ``generator``.

    Args:
        frames: uint8 RGB ``[T, H, W, 3]`` (numpy or torch).
        image_size: S, the tower's input size.
        mean, std: per-channel normalisation of the tower (OPENAI_DATASET_* for OpenAI CLIP).
        train: use the training crop.
        generator: torch Generator for the training crop.
        interpolation: "bicubic" (open_clip's default) or "bilinear".
        train_scale: area range of the training crop.

    Returns:
        float32 ``[T, 3, S, S]``, contiguous.
    """
    video = to_video_tensor(frames)
    height, width = int(video.shape[-2]), int(video.shape[-1])
    if train:
        top, left, side = random_square_crop_box(height, width, train_scale, generator)
        video = video[..., top : top + side, left : left + side]
        video = _resize(video, (image_size, image_size), interpolation, antialias=True)
    else:
        video = Resize(image_size, "shortest", interpolation)(video)
        video = center_crop(video, image_size)
    return _normalize(video, mean, std)


class ClipTransform:
    """:func:`clip_transform` with its settings bound; picklable, for dataset workers.

    ``__call__(frames: uint8 [T, H, W, 3], generator=None) -> float32 [T, 3, S, S]``.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = OPENAI_DATASET_MEAN,
        std: Sequence[float] = OPENAI_DATASET_STD,
        train: bool = False,
        interpolation: Interpolation = "bicubic",
        train_scale: tuple[float, float] = DEFAULT_TRAIN_SCALE,
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.train = train
        self.interpolation = interpolation
        self.train_scale = train_scale

    def __call__(self, frames: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return clip_transform(
            frames, self.image_size, self.mean, self.std, self.train, generator, self.interpolation, self.train_scale
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, train={self.train}, "
            f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std})"
        )


def denormalize(
    video: torch.Tensor, mean: Sequence[float] = OPENAI_DATASET_MEAN, std: Sequence[float] = OPENAI_DATASET_STD
) -> torch.Tensor:
    """Invert the normalisation: float ``[T, 3, S, S]`` -> uint8 ``[T, 3, S, S]`` (for looking at
    what the model sees)."""
    import torch

    mean_t = torch.tensor(mean, dtype=video.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=video.dtype).view(1, 3, 1, 1)
    return (video * std_t + mean_t).mul(255.0).round().clamp(0, 255).to(torch.uint8)


__all__ = [
    "OPENAI_DATASET_MEAN",
    "OPENAI_DATASET_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INCEPTION_MEAN",
    "INCEPTION_STD",
    "Resize",
    "ClipTransform",
    "center_crop",
    "clip_transform",
    "denormalize",
    "random_square_crop_box",
    "to_video_tensor",
]
