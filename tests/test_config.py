import json

import pytest

from calmcap.config import ModelConfig, apply_overrides, from_dict, get_model_config, list_models, to_dict
from calmcap.errors import ConfigError
from calmcap.labels import load_labels, parse_labels


def test_registry_lists_shipped_models():
    assert {"calmcap-tiny", "calmcap-vitb32", "calmcap-vitb16"} <= set(list_models())
    config = get_model_config("calmcap-vitb32")
    assert config.clip.arch == "ViT-B-32" and config.num_frames == 12 and config.image_size == 224
    assert config.alignment.variant == "vae" and config.alignment.latent_dim == 256


def test_round_trip_through_dict():
    config = get_model_config("calmcap-tiny")
    assert from_dict(ModelConfig, json.loads(json.dumps(to_dict(config)))) == config


def test_unknown_key_is_named():
    data = to_dict(get_model_config("calmcap-tiny"))
    data["decoder"]["widht"] = 3
    with pytest.raises(ConfigError, match=r"decoder\.widht"):
        from_dict(ModelConfig, data)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("num_frames", "8", r"num_frames: expected an integer"),
        ("fusion.type", "max", r"fusion.type: 'max' is not one of"),
        ("alignment.detach_text_dist", 1, r"alignment.detach_text_dist: expected true/false"),
        ("anchors.tau", -1.0, r"tau must be positive"),
        ("decoder.num_heads", 3, r"divisible"),
    ],
)
def test_wrong_types_and_values_are_named(key, value, message):
    data = apply_overrides(to_dict(get_model_config("calmcap-tiny")), [f"{key}={json.dumps(value)}"])
    with pytest.raises(ConfigError, match=message):
        from_dict(ModelConfig, data)


def test_overrides_parse_yaml_values():
    config = get_model_config("calmcap-tiny",
                              ["alignment.variant=kl", "anchors.num_anchors=50", "anchors.learn_tau=true"])
    assert config.alignment.variant == "kl" and config.anchors.num_anchors == 50 and config.anchors.learn_tau is True
    assert get_model_config("calmcap-tiny", ["anchors.num_anchors=0"]).use_anchors is False
    assert get_model_config("calmcap-tiny", ["alignment.variant=none"]).use_anchors is False


def test_unknown_model_lists_known_ones():
    with pytest.raises(ConfigError, match="calmcap-tiny"):
        get_model_config("calmcap-huge")


def test_label_files():
    assert len(load_labels("charades_157")) == 157
    assert len(load_labels("coco_80")) == 80
    assert load_labels("coco_80", 3) == ["person", "bicycle", "car"]
    assert load_labels("charades_157", 0) == []
    with pytest.raises(ConfigError, match="only 80"):
        load_labels("coco_80", 81)


def test_label_file_errors_name_the_line(tmp_path):
    assert parse_labels("a\nb\n\n\n") == ["a", "b"]
    with pytest.raises(ConfigError, match=r"f.txt:2: blank line"):
        parse_labels("a\n\nb\n", "f.txt")
    with pytest.raises(ConfigError, match=r"f.txt:3: duplicate anchor label 'A' \(first on line 1\)"):
        parse_labels("a\nb\nA\n", "f.txt")
    path = tmp_path / "mine.txt"
    path.write_text("jumping\nrunning\n")
    assert load_labels(str(path)) == ["jumping", "running"]
    with pytest.raises(ConfigError, match="neither a shipped set"):
        load_labels(str(tmp_path / "missing.txt"))


def test_yaml_float_spelling_without_a_dot():
    assert get_model_config("calmcap-tiny", ["anchors.tau=1e2"]).anchors.tau == 100.0
    with pytest.raises(ConfigError, match="expected a number"):
        get_model_config("calmcap-tiny", ["anchors.tau=fast"])


@pytest.mark.parametrize("settings, message", [
    ({"num_beams": 0}, r"^num_beams must be at least 1, got 0"),
    ({"max_length": 0}, r"^max_length must be at least 1"),
    ({"min_length": -1}, r"^min_length must be >= 0"),
    ({"min_length": 21}, r"^min_length must be between 0 and max_length \(20\), got 21"),
    ({"length_penalty": float("nan")}, r"^length_penalty must be a finite number"),
    ({"length_penalty": float("inf")}, r"^length_penalty must be a finite number"),
    ({"no_repeat_ngram_size": -1}, r"^no_repeat_ngram_size must be >= 0"),
    ({"top_p": 0.0}, r"^top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"^top_p must be in \(0, 1\]"),
    ({"temperature": 0.0}, r"^temperature must be positive"),
    ({"num_return_sequences": 0}, r"^num_return_sequences must be at least 1"),
    ({"num_return_sequences": 4}, r"^num_return_sequences \(4\) cannot exceed num_beams \(3\) with beam search"),
])
def test_decode_options_reject_impossible_settings(settings, message):
    from dataclasses import replace

    from calmcap.config import DecodeOptions

    with pytest.raises(ConfigError, match=message):
        replace(DecodeOptions(), **settings).check()
    # The message names the setting where it sits (a recipe's eval.decode, a checkpoint's generation).
    key = message.lstrip("^").split(" ")[0]
    with pytest.raises(ConfigError, match=r"^eval\.decode\." + key):
        replace(DecodeOptions(), **settings).check("eval.decode")


def test_decode_options_accept_their_limits():
    from calmcap.config import DecodeOptions

    assert DecodeOptions().check() == DecodeOptions()
    DecodeOptions(num_beams=1, max_length=1, min_length=1, length_penalty=-2.0, top_p=1.0).check()
    DecodeOptions(do_sample=True, num_beams=1, num_return_sequences=5, top_p=0.01, temperature=0.1).check()
    DecodeOptions(num_beams=4, num_return_sequences=4).check()


def test_decode_options_check_a_partial_set_as_far_as_it_goes():
    from calmcap.config import DecodeOptions

    DecodeOptions.check_values({"min_length": 30})  # no max_length yet: nothing to compare with
    DecodeOptions.check_values({"num_return_sequences": 4, "num_beams": 3})  # sampling or not is unknown
    DecodeOptions.check_values({"num_return_sequences": 4, "num_beams": 3, "do_sample": True})
    with pytest.raises(ConfigError, match="cannot exceed"):
        DecodeOptions.check_values({"num_return_sequences": 4, "num_beams": 3, "do_sample": False})
    with pytest.raises(ConfigError, match="num_beams"):
        DecodeOptions.check_values({"num_beams": 0, "top_p": None})


def test_trackers_are_accelerates_names():
    from typing import get_args

    from accelerate.utils import LoggerType

    from calmcap.train_config import Tracker

    # "all" is left out: it would log to whatever happens to be installed.
    assert set(get_args(Tracker)) == {str(t) for t in LoggerType} - {"all"}


def test_trackers_are_checked_by_name(tmp_path):
    from calmcap.train_config import load_train_config

    path = tmp_path / "run.yaml"
    path.write_text("output_dir: runs/x\n")
    assert load_train_config(path).trackers == []  # none by default: metrics.jsonl alone
    assert load_train_config(path, ["trackers=[tensorboard, wandb]"]).trackers == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"^.*run.yaml: trackers\[1\]: 'tensorbord' is not one of 'aim', "):
        load_train_config(path, ["trackers=[wandb, tensorbord]"])
    with pytest.raises(ConfigError, match=r"trackers: expected a list"):
        load_train_config(path, ["trackers=tensorboard"])


def test_tracker_config_is_flat_scalars_and_strings():
    from calmcap.train_config import TrainConfig

    cfg = TrainConfig()
    cfg.model.overrides = ["alignment.variant=kl"]
    cfg.trackers = ["tensorboard"]
    flat = cfg.tracker_config()
    assert all(type(value) in (bool, int, float, str) for value in flat.values())
    assert flat["optim.lr"] == 1e-4 and flat["eval.decode.num_beams"] == cfg.eval.decode.num_beams
    assert flat["data.synth.enabled"] is False and flat["model.init_from"] == "null"
    assert flat["model.overrides"] == '["alignment.variant=kl"]' and flat["trackers"] == '["tensorboard"]'
    assert flat["optim.betas"] == "[0.9, 0.98]"
    assert "optim" not in flat and "eval.decode" not in flat  # sections are flattened, not kept as mappings
