import json
import logging
import pickle
import re

import pytest
import torch

from calmcap.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config
from calmcap.errors import CheckpointError, ConfigError
from calmcap.models.calm import CALMModel


@pytest.fixture(scope="module")
def saved(make_model, tmp_path_factory):
    model = make_model(seed=5, overrides=["anchors.learn_tau=true"]).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model"
    model.save_pretrained(path)
    return model, path


def _copy(path, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_round_trip_gives_identical_outputs(saved, tiny_batch):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == [
        "anchors.txt", "config.json", "model.safetensors", "tokenizer.model"]
    loaded = CALMModel.from_pretrained(path)
    assert loaded.config == model.config and loaded.labels == model.labels
    assert not loaded.training
    with torch.no_grad():
        a, b = model(tiny_batch), loaded(tiny_batch)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    ga = model.generate(tiny_batch["video"], tiny_batch["video_mask"], num_beams=3, max_length=10)
    gb = loaded.generate(tiny_batch["video"], tiny_batch["video_mask"], num_beams=3, max_length=10)
    assert torch.equal(ga["sequences"], gb["sequences"]) and ga["captions"] == gb["captions"]
    # Tied weights stay one parameter; every tensor was filled.
    assert loaded.decoder.gpt.lm_head.weight is loaded.decoder.gpt.transformer.wte.weight
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    assert torch.equal(loaded.clip.attn_mask, model.clip.attn_mask)


def test_loading_does_not_warn_of_random_weights(saved, caplog):
    # open_clip warns "No pretrained weights loaded ... initialized randomly" for any untagged
    # build; a checkpoint load builds on the meta device and fills every tensor in, so it is false.
    _, path = saved
    with caplog.at_level(logging.WARNING):
        CALMModel.from_pretrained(path)
    assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
    logging.getLogger().warning("No pretrained weights loaded for model 'x'.")  # the filter is gone after
    assert "No pretrained weights loaded" in caplog.records[-1].getMessage()


def test_loading_never_unpickles(saved, monkeypatch):
    _, path = saved

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert CALMModel.from_pretrained(path) is not None


def test_save_overwrites_atomically(saved, tmp_path):
    model, path = saved
    target = _copy(path, tmp_path)
    model.save_pretrained(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temp dirs left behind


@pytest.mark.parametrize("missing", [CONFIG_FILE, WEIGHTS_FILE, "tokenizer.model", "anchors.txt"])
def test_missing_file_is_named(saved, tmp_path, missing):
    target = _copy(saved[1], tmp_path)
    (target / missing).unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        CALMModel.from_pretrained(target)


def test_truncated_weights(saved, tmp_path):
    target = _copy(saved[1], tmp_path)
    data = (target / WEIGHTS_FILE).read_bytes()
    (target / WEIGHTS_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        CALMModel.from_pretrained(target)
    # Even when config.json is edited to agree with the size, safetensors rejects the file.
    meta = json.loads((target / CONFIG_FILE).read_text())
    meta["weights"]["num_bytes"] = len(data) // 3
    (target / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        CALMModel.from_pretrained(target)


def test_config_of_another_architecture(saved, tmp_path):
    target = _copy(saved[1], tmp_path)
    meta = json.loads((target / CONFIG_FILE).read_text())
    meta["model"]["decoder"]["width"] = 128
    (target / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"shape .* architecture"):
        CALMModel.from_pretrained(target)
    meta["model"]["decoder"]["width"] = 256
    meta["model"]["alignment"]["variant"] = "kl"  # no VAE in the architecture, VAE weights in the file
    (target / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unexpected"):
        CALMModel.from_pretrained(target)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=99), "format version 99"),
        (lambda m: m.update(format="something-else"), "not a calmcap checkpoint"),
        (lambda m: m["model"].update(colour="red"), r"model\.colour"),
        (lambda m: m["model"]["decoder"].update(num_layers="two"), r"model\.decoder\.num_layers"),
    ],
)
def test_tampered_config(saved, tmp_path, edit, message):
    target = _copy(saved[1], tmp_path)
    meta = json.loads((target / CONFIG_FILE).read_text())
    edit(meta)
    (target / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint_config(target)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        CALMModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a directory"):
        CALMModel.from_pretrained(tmp_path / "file")


def test_pretrained_tag_offline_says_what_to_do():
    from calmcap.config import ClipConfig
    from calmcap.models.encoders import build_clip

    # HF_HUB_OFFLINE=1 (conftest): the tag exists but its weights are not cached.
    with pytest.raises(ConfigError, match=r"clip\.pretrained=/path/to/weights"):
        build_clip(ClipConfig(arch="ViT-B-32", pretrained="openai"), 224)
    with pytest.raises(ConfigError, match="has no pretrained tag 'openai'"):
        build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained="openai"), 64)
    with pytest.raises(ConfigError, match="not found"):
        build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained="/nowhere/weights.bin"), 64)


def test_local_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    from calmcap.config import ClipConfig
    from calmcap.models.encoders import build_clip

    torch.manual_seed(0)
    reference = build_clip(ClipConfig(arch="calmcap-tiny-clip"), 64)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    loaded = build_clip(ClipConfig(arch="calmcap-tiny-clip", pretrained=str(tmp_path / "w.safetensors")), 64)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("generation, fragment", [
    ({"max_len": 40}, "unknown generation setting 'max_len'"),
    ({"max_length": "40"}, "'max_length' must be int"),
    ({"num_beams": 2.5}, "'num_beams' must be int"),
    ([40], "must be an object"),
    ({"do_sample": 1}, "'do_sample' must be bool"),
    ({"num_beams": 0}, "generation.num_beams must be at least 1, got 0"),
])
def test_bad_generation_settings_are_named(saved, tmp_path, generation, fragment):
    _, path = saved
    copy = _copy(path, tmp_path)
    meta = json.loads((copy / "config.json").read_text())
    meta["generation"] = generation
    (copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        CALMModel.from_pretrained(copy)


def test_generation_settings_round_trip_and_old_checkpoints_still_read(make_model, saved, tmp_path):
    from calmcap.checkpoint import read_generation, save_pretrained
    from calmcap.config import DecodeOptions

    _, path = saved
    assert read_generation(path) == DecodeOptions()  # saved with none: the built-in settings
    assert "generation" not in json.loads((path / CONFIG_FILE).read_text())
    settings = DecodeOptions(num_beams=2, max_length=7, length_penalty=0.5)
    written = save_pretrained(make_model(seed=1), tmp_path / "m", generation=settings)
    assert read_generation(written) == settings
    assert json.loads((written / CONFIG_FILE).read_text())["generation"]["max_length"] == 7
    # A checkpoint written before the sampling settings joined holds the beam settings only.
    meta = json.loads((written / CONFIG_FILE).read_text())
    meta["generation"] = {"num_beams": 4, "max_length": 40, "min_length": 0, "length_penalty": 1,
                          "no_repeat_ngram_size": 0}
    (written / CONFIG_FILE).write_text(json.dumps(meta))
    assert read_generation(written) == DecodeOptions(num_beams=4, max_length=40)
    CALMModel.from_pretrained(written)
    with pytest.raises(ConfigError, match="generation.num_beams"):
        save_pretrained(make_model(seed=1), tmp_path / "bad", generation=DecodeOptions(num_beams=0))
    assert not (tmp_path / "bad").exists()
