"""CLIP preprocessing: the eval path against open_clip's own transform, the train crop, Resize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calmcap.data import transforms as T
from calmcap.data.transforms import ClipTransform, Resize, center_crop, clip_transform, denormalize

# One uint8 step is 1/255/std ~= 0.0146 in normalised units (0.0150 on the blue channel).
# Measured: downscaling, PIL and torch's uint8 kernels agree to within one step (about 0.5% of
# values differ at all); upscaling, about 1 value in 100,000 differs by two steps (0.030).
ONE_STEP = 1 / 255 / min(T.OPENAI_DATASET_STD)
MAX_ABS_DIFF = 0.02


def _smooth_random_clip(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Natural-ish frames: random low-resolution noise upsampled bilinearly, plus fine noise."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_frames, 3, max(2, height // 16), max(2, width // 16), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    fine = torch.rand(num_frames, 3, height, width, generator=gen) * 0.15
    clip = ((smooth * 0.85 + fine) * 255).round().clamp(0, 255).to(torch.uint8)
    return clip.permute(0, 2, 3, 1).contiguous().numpy()


@pytest.fixture(scope="module")
def open_clip_module():
    return pytest.importorskip("open_clip")


def test_constants_match_open_clip(open_clip_module):
    constants = open_clip_module.constants
    assert T.OPENAI_DATASET_MEAN == constants.OPENAI_DATASET_MEAN
    assert T.OPENAI_DATASET_STD == constants.OPENAI_DATASET_STD
    assert T.IMAGENET_MEAN == constants.IMAGENET_MEAN and T.IMAGENET_STD == constants.IMAGENET_STD
    assert T.INCEPTION_MEAN == constants.INCEPTION_MEAN and T.INCEPTION_STD == constants.INCEPTION_STD


@pytest.mark.parametrize(
    "height, width, image_size, max_diff",
    [
        (360, 640, 224, MAX_ABS_DIFF),  # landscape downscale
        (640, 360, 224, MAX_ABS_DIFF),  # portrait
        (257, 255, 224, MAX_ABS_DIFF),  # odd sizes, nearly square: crop offsets round
        (240, 320, 64, MAX_ABS_DIFF),  # the small towers of the tests and the embedded benchmark
        (48, 64, 224, 2 * ONE_STEP + 1e-4),  # upscale (tiny video): rare two-step differences
    ],
)
def test_eval_path_matches_open_clip_frame_by_frame(open_clip_module, height, width, image_size, max_diff, capsys):
    from PIL import Image

    clip = _smooth_random_clip(4, height, width, seed=height + width)
    reference_transform = open_clip_module.image_transform(image_size, is_train=False)
    reference = torch.stack([reference_transform(Image.fromarray(frame)) for frame in clip])
    ours = clip_transform(clip, image_size, T.OPENAI_DATASET_MEAN, T.OPENAI_DATASET_STD)
    assert ours.shape == reference.shape == (4, 3, image_size, image_size)
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    diff = (ours - reference).abs()
    with capsys.disabled():
        print(f"\n  {height}x{width} -> {image_size}: max |ours - open_clip| = {diff.max():.4f}, "
              f"mean = {diff.mean():.2e}")
    assert diff.max().item() <= max_diff
    assert (diff > ONE_STEP / 2).float().mean().item() < 0.01  # over 99% of values are identical


def test_eval_path_with_other_normalisation_and_torch_input(open_clip_module):
    from PIL import Image

    clip = _smooth_random_clip(2, 100, 150, seed=5)
    reference = torch.stack(
        [
            open_clip_module.image_transform(32, is_train=False, mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD)(
                Image.fromarray(frame)
            )
            for frame in clip
        ]
    )
    ours = ClipTransform(32, T.IMAGENET_MEAN, T.IMAGENET_STD)(torch.from_numpy(clip))
    assert (ours - reference).abs().max().item() <= MAX_ABS_DIFF


def test_bilinear_option_matches_open_clip(open_clip_module):
    from PIL import Image

    clip = _smooth_random_clip(2, 120, 200, seed=9)
    reference_transform = open_clip_module.image_transform(48, is_train=False, interpolation="bilinear")
    reference = torch.stack([reference_transform(Image.fromarray(frame)) for frame in clip])
    ours = clip_transform(clip, 48, interpolation="bilinear")
    assert (ours - reference).abs().max().item() <= MAX_ABS_DIFF


def test_train_crop_is_seeded_shared_across_frames_and_bounded():
    clip = np.repeat(_smooth_random_clip(1, 90, 160, seed=1), 3, axis=0)  # three identical frames
    a = clip_transform(clip, 32, train=True, generator=torch.Generator().manual_seed(0))
    b = clip_transform(clip, 32, train=True, generator=torch.Generator().manual_seed(0))
    c = clip_transform(clip, 32, train=True, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    # the same box for every frame: identical frames stay identical
    torch.testing.assert_close(a[0], a[2], rtol=0, atol=0)
    for seed in range(20):
        top, left, side = T.random_square_crop_box(90, 160, generator=torch.Generator().manual_seed(seed))
        assert round(90 * 0.9**0.5) <= side <= 90
        assert 0 <= top and top + side <= 90 and 0 <= left and left + side <= 160


def test_train_crop_of_the_whole_square_equals_the_eval_path():
    clip = _smooth_random_clip(2, 80, 80, seed=3)
    train = clip_transform(clip, 40, train=True, train_scale=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(train, clip_transform(clip, 40), rtol=0, atol=0)


def test_resize_shortest_side_size_rule_and_dtype():
    video = torch.zeros(2, 3, 720, 1280, dtype=torch.uint8)
    out = Resize(224)(video)
    assert out.shape == (2, 3, 224, 398) and out.dtype == torch.uint8  # int(224 * 1280 / 720)
    assert Resize(224)(torch.zeros(1, 3, 1280, 720)).shape == (1, 3, 398, 224)
    assert Resize(32, mode="squash")(video).shape == (2, 3, 32, 32)
    assert Resize((20, 30), mode="squash")(video.float()).dtype == torch.float32
    with pytest.raises(ValueError):
        Resize((20, 30), mode="shortest")


def test_resize_uint8_and_float_paths_agree():
    clip = torch.from_numpy(_smooth_random_clip(3, 120, 160, seed=4)).permute(0, 3, 1, 2)
    as_uint8 = Resize(60)(clip).float()
    as_float = Resize(60)(clip.float())
    # float keeps the fraction uint8 rounds off, and may overshoot [0, 255] slightly
    assert (as_uint8 - as_float.clamp(0, 255)).abs().max().item() <= 1.0


def test_center_crop_offsets():
    video = torch.arange(7 * 9).view(1, 1, 7, 9)
    out = center_crop(video, 4)
    assert out.shape == (1, 1, 4, 4)
    assert out[0, 0, 0, 0].item() == 2 * 9 + 2  # top = round(1.5) = 2, left = round(2.5) = 2
    with pytest.raises(ValueError):
        center_crop(video, 8)


def test_normalisation_round_trips():
    clip = _smooth_random_clip(2, 32, 32, seed=6)
    normalised = clip_transform(clip, 32)  # no resize, no crop
    assert torch.equal(denormalize(normalised), torch.from_numpy(clip).permute(0, 3, 1, 2))
    per_channel = normalised.mean(dim=(0, 2, 3))
    raw_mean = torch.from_numpy(clip).float().mean(dim=(0, 1, 2)) / 255
    expected = (raw_mean - torch.tensor(T.OPENAI_DATASET_MEAN)) / torch.tensor(T.OPENAI_DATASET_STD)
    torch.testing.assert_close(per_channel, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "frames, error",
    [
        (np.zeros((2, 32, 32, 3), np.float32), TypeError),
        (np.zeros((32, 32, 3), np.uint8), ValueError),
        (np.zeros((2, 32, 32, 4), np.uint8), ValueError),
        (np.zeros((0, 32, 32, 3), np.uint8), ValueError),
        ([[1, 2, 3]], TypeError),
    ],
)
def test_bad_input_is_rejected(frames, error):
    with pytest.raises(error):
        clip_transform(frames, 16)


def test_clip_transform_pickles_for_dataloader_workers():
    import pickle

    transform = ClipTransform(16, train=True)
    clone = pickle.loads(pickle.dumps(transform))
    clip = _smooth_random_clip(2, 20, 30)
    torch.testing.assert_close(
        transform(clip, torch.Generator().manual_seed(2)), clone(clip, torch.Generator().manual_seed(2))
    )
