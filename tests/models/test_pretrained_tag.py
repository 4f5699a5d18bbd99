"""The shipped pretrained tag ``synth`` of calmcap-tiny-clip (issue #11): offline, one load path."""

from __future__ import annotations

import hashlib

import pytest
import torch

from calmcap.config import PRETRAINED_DIR, ClipConfig, get_model_config
from calmcap.models.encoders import build_clip, save_clip_weights, shipped_tags

MAX_BYTES = 25 * 1024 * 1024


def _entry() -> dict:
    return shipped_tags()["calmcap-tiny-clip"]["synth"]


def test_the_tag_is_shipped_small_and_matches_its_recorded_sha256():
    entry = _entry()
    path = PRETRAINED_DIR / entry["file"]
    assert path.stat().st_size <= MAX_BYTES
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


def test_the_tag_loads_through_open_clips_own_tag_path():
    import open_clip

    from calmcap.models.encoders import _open_clip

    _open_clip()  # registers calmcap's architectures and tags
    assert "synth" in open_clip.list_pretrained_tags_by_model("calmcap-tiny-clip")
    ours = build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained="synth"), 64)
    direct = open_clip.create_model("calmcap-tiny-clip", pretrained="synth")
    random = build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained=None), 64)
    state, direct_state, random_state = ours.state_dict(), direct.state_dict(), random.state_dict()
    assert all(torch.equal(state[k], direct_state[k]) for k in state)
    assert not torch.equal(state["text_projection"], random_state["text_projection"])
    # calmcap-tiny starts from it.
    assert get_model_config("calmcap-tiny").clip.pretrained == "synth"


def test_exported_weights_round_trip_through_a_local_file(tmp_path):
    clip = build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained="synth"), 64)
    path = tmp_path / "towers.safetensors"
    digest = save_clip_weights(clip, path, logit_scale=50.0, dtype=torch.float32)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    again = build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained=str(path)), 64)
    for name, tensor in clip.state_dict().items():
        if name != "logit_scale":
            assert torch.equal(tensor, again.state_dict()[name]), name
    assert abs(float(again.logit_scale.exp()) - 50.0) < 1e-3


@pytest.fixture(scope="module")
def check_set(tmp_path_factory):
    """The tag's recorded zero-shot check set: the first videos of benchmark splits at a seed."""
    from calmcap.data.synth import generate_benchmark

    check = _entry()["zero_shot_check"]
    out = tmp_path_factory.mktemp("zero_shot_check")
    generate_benchmark(out, seed=check["seed"], num_train=0, num_val=0, num_test=check["num_videos"],
                       num_test_ood=check["num_videos"], num_test_ood_visual=0, num_test_ood_text=0, workers=2,
                       progress=False)
    return out / "manifest.jsonl", check


def test_the_tag_reproduces_its_recorded_zero_shot_accuracy(check_set):
    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.models.encoders import clip_text_tokenizer
    from calmcap.zeroshot import zero_shot

    manifest, check = check_set
    clip = build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained="synth"), 64)
    for split, recorded in check["accuracy"].items():
        dataset = VideoCaptionDataset(manifest, split, check["num_frames"], 64, mode="videos")
        result = zero_shot(clip, clip_text_tokenizer("calmcap-tiny-clip"), dataset, retrieval=False)
        for attribute, value in recorded.items():
            # Tolerance: decoders (decord, ffmpeg builds) may differ by a pixel level here and there.
            assert abs(result.accuracy[attribute] - value) <= check["tolerance"], (split, attribute)
            if value > result.chance[attribute] + 2 * check["tolerance"]:  # well above chance when recorded
                assert result.accuracy[attribute] > result.chance[attribute] + check["tolerance"], (split, attribute)
