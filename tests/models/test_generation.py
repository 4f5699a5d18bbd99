import torch

from calmcap.tokenizer import EOS_ID, PAD_ID


def _overfit(make_model, tokenizer, caption, steps=60):
    """Teach a tiny model one caption for one clip; its decoder should then say it and stop."""
    from calmcap.losses import CALMLoss, LossWeights

    model = make_model(seed=0, overrides=["decoder.dropout=0.0"])
    torch.manual_seed(0)
    video = torch.randn(1, 8, 3, 64, 64)
    ids, mask = tokenizer.batch_encode([caption], max_length=30)
    batch = {"video": video, "caption_ids": ids, "caption_mask": mask}
    loss_fn = CALMLoss(LossWeights(retrieval=0.0, align=0.0), variant=model.variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = loss_fn(model(batch))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), video


def test_generation_says_the_learned_caption_and_stops_at_eos(make_model, tokenizer):
    caption = "a red circle moves to the left"
    model, video = _overfit(make_model, tokenizer, caption)
    for num_beams in (1, 3):
        out = model.generate(video, num_beams=num_beams, max_length=25)
        assert out["captions"] == [caption]
        sequence = out["sequences"][0].tolist()
        eos_at = sequence.index(EOS_ID)
        # Everything after eos is padding, and nothing was generated past it.
        assert all(t == PAD_ID for t in sequence[eos_at + 1 :])
        assert eos_at == len(tokenizer.encode(caption)) - 2
    # min_length forbids the early eos.
    long = model.generate(video, num_beams=3, max_length=25, min_length=eos_at + 3)["sequences"][0].tolist()
    assert EOS_ID not in long[: eos_at + 3]


def test_max_length_is_respected(make_model, tiny_batch):
    model = make_model().eval()
    for kwargs in ({"num_beams": 3}, {"num_beams": 1}, {"do_sample": True, "top_p": 0.9, "num_beams": 1}):
        out = model.generate(tiny_batch["video"], tiny_batch["video_mask"], max_length=5, **kwargs)
        assert out["sequences"].shape[0] == 4 and out["sequences"].shape[1] <= 5
        assert len(out["captions"]) == 4 and out["scores"].shape == (4,)


def test_beam_search_same_with_and_without_kv_cache(make_model, tiny_batch):
    model = make_model(seed=1).eval()
    cached = model.generate(tiny_batch["video"], tiny_batch["video_mask"], num_beams=3, max_length=12, use_cache=True)
    plain = model.generate(tiny_batch["video"], tiny_batch["video_mask"], num_beams=3, max_length=12, use_cache=False)
    assert torch.equal(cached["sequences"], plain["sequences"])
    assert torch.allclose(cached["scores"], plain["scores"], atol=1e-4)


def test_num_return_sequences_groups_by_video(make_model, tiny_batch):
    model = make_model().eval()
    out = model.generate(tiny_batch["video"][:2], num_beams=4, num_return_sequences=3, max_length=8)
    assert out["sequences"].shape[0] == 6 and len(out["captions"]) == 6
    # Beams of one video come sorted best first.
    assert out["scores"][0] >= out["scores"][1] >= out["scores"][2]


def test_generation_from_cached_frame_features_matches_video(make_model, tiny_batch):
    model = make_model().eval()
    with torch.no_grad():
        features = model.encode_frames(tiny_batch["video"])
    a = model.generate(tiny_batch["video"], tiny_batch["video_mask"], max_length=8)
    b = model.generate(frame_features=features, video_mask=tiny_batch["video_mask"], max_length=8)
    assert torch.equal(a["sequences"], b["sequences"])


def test_decoder_settings_come_from_decode_options(make_model, tiny_batch):
    import dataclasses
    import inspect

    import pytest

    from calmcap.config import DecodeOptions
    from calmcap.errors import ConfigError
    from calmcap.models.decoder import CaptionDecoder

    # The decoder has no defaults of its own: every setting is DecodeOptions', given whole or by name.
    parameters = inspect.signature(CaptionDecoder.generate).parameters
    assert not {f.name for f in dataclasses.fields(DecodeOptions)} & set(parameters)
    model = make_model(seed=2).eval()
    video, mask = tiny_batch["video"], tiny_batch["video_mask"]
    options = DecodeOptions(num_beams=2, max_length=6)
    by_options = model.generate(video, mask, options=options)
    by_name = model.generate(video, mask, num_beams=2, max_length=6)
    overridden = model.generate(video, mask, options=DecodeOptions(num_beams=2, max_length=9), max_length=6)
    assert torch.equal(by_options["sequences"], by_name["sequences"])
    assert torch.equal(by_options["sequences"], overridden["sequences"])
    defaults = model.generate(video, mask)
    assert torch.equal(defaults["sequences"], model.generate(video, mask, options=DecodeOptions())["sequences"])
    with pytest.raises(ConfigError, match="num_beams"):
        model.generate(video, mask, num_beams=0)
    with pytest.raises(TypeError, match="max_len"):
        model.generate(video, mask, max_len=5)
