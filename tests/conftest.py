"""Shared fixtures: offline, CPU, tiny random-initialised models."""

import os

# Nothing in the default run may touch the network (open_clip and transformers honour this).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

CAPTIONS = [
    "a red circle moves to the left",
    "a blue square grows bigger",
    "the small green triangle rotates",
    "a yellow star bounces up and down",
    "a purple diamond shrinks slowly",
    "an orange cross blinks on and off",
    "a large red square stays still",
    "a tiny blue circle moves to the right",
]


@pytest.fixture(scope="session")
def tokenizer():
    from calmcap.tokenizer import CaptionTokenizer

    return CaptionTokenizer.train(CAPTIONS * 4, vocab_size=64)


@pytest.fixture(scope="session")
def make_model(tokenizer):
    """Build a tiny model: ``make_model(seed=0, overrides=["alignment.variant=kl"])``.

    Its CLIP towers are random (seeded) unless the overrides name a ``clip.pretrained`` tag, so
    that tests do not depend on the shipped ``synth`` weights and two seeds give two towers.
    """
    import torch

    from calmcap.config import get_model_config
    from calmcap.models.calm import CALMModel

    def build(seed: int = 0, overrides: list[str] | None = None) -> CALMModel:
        config = get_model_config("calmcap-tiny", ["clip.pretrained=null", *(overrides or [])])
        torch.manual_seed(seed)
        return CALMModel.create(config, tokenizer)

    return build


@pytest.fixture
def tiny_batch(tokenizer):
    """A batch of 4 random clips with captions: the keys ``CALMModel.forward`` reads."""
    import torch

    from calmcap.models.encoders import clip_text_tokenizer

    generator = torch.Generator().manual_seed(1)
    captions = CAPTIONS[:4]
    ids, mask = tokenizer.batch_encode(captions, max_length=20)
    video_mask = torch.ones(4, 8, dtype=torch.bool)
    video_mask[3, 5:] = False  # a short video, padded
    return {
        "video": torch.randn(4, 8, 3, 64, 64, generator=generator),
        "video_mask": video_mask,
        "text_tokens": clip_text_tokenizer("calmcap-tiny-clip")(captions),
        "caption_ids": ids,
        "caption_mask": mask,
    }


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A small embedded benchmark (real H.264 files): 40 train, 7 val, 5 test, 5 test_ood videos
    (and none of test_ood_visual, test_ood_text)."""
    from calmcap.data.synth import generate_benchmark

    out = tmp_path_factory.mktemp("synth_small")
    generate_benchmark(out, seed=0, num_train=40, num_val=7, num_test=5, num_test_ood=5,
                       num_test_ood_visual=0, num_test_ood_text=0,
                       num_frames_per_video=12, workers=1, progress=False)
    return out / "manifest.jsonl"
