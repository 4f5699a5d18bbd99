"""Bad annotations, configs, anchor files and checkpoints: errors that name file, line and field (issue #7)."""

import json
import shutil

import pytest

from calmcap.checkpoint import read_checkpoint_config
from calmcap.config import get_model_config
from calmcap.data.manifest import read_manifest
from calmcap.errors import CheckpointError, ConfigError, ManifestError
from calmcap.labels import load_labels
from calmcap.train_config import load_train_config

GOOD = {"video_id": "v1", "video": "v1.mp4", "captions": ["a cat"], "split": "train"}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"video_id": "v2", "video": "v2.mp4", "captions": ["x"], "split": "train"', r"m.jsonl:2: malformed JSON"),
        (json.dumps({"video": "v2.mp4", "captions": ["x"], "split": "train"}), r"m.jsonl:2: missing field 'video_id'"),
        (json.dumps({**GOOD, "video_id": "v2", "captions": []}),
         r"m.jsonl:2: field 'captions' must be a non-empty list"),
        (json.dumps({**GOOD, "video_id": "v2", "captions": ["ok", "  "]}),
         r"m.jsonl:2: field 'captions\[1\]' must be a non-empty string"),
        (json.dumps({**GOOD, "video_id": "v2", "split": 3}),
         r"m.jsonl:2: field 'split' must be a non-empty string"),
        (json.dumps({**GOOD, "video_id": "v2", "start_seconds": 5, "end_seconds": 2}),
         r"m.jsonl:2: 'end_seconds' \(2.0\) must be after"),
        (json.dumps({**GOOD, "video_id": "v2", "colour": "red"}), r"m.jsonl:2: unknown field 'colour'"),
        (json.dumps(GOOD), r"m.jsonl:2: duplicate video_id 'v1' \(first on line 1\)"),
        ("[1, 2]", r"m.jsonl:2: expected a JSON object"),
    ],
)
def test_bad_manifest_lines(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_missing_manifest_and_empty_split(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    with pytest.raises(ManifestError, match=r"no videos in split\(s\) \['val'\]"):
        read_manifest(path, "val")


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("optim:\n  lr: 1.0e-3\n  lerning_rate: 2\n", [], r"unknown config key 'optim.lerning_rate'"),
        ("optim:\n  batch_size: many\n", [], r"optim.batch_size: expected an integer"),
        ("data:\n  mode: every\n", [], r"data.mode: 'every' is not one of"),
        ("seed: 0\n", ["eval.decode.num_beam=3"], r"unknown config key 'eval.decode.num_beam'"),
        ("eval:\n  decode:\n    num_beams: 0\n", [], r"eval\.decode\.num_beams must be at least 1, got 0"),
        ("seed: 0\n", ["eval.decode.min_length=30"],
         r"eval\.decode\.min_length must be between 0 and eval\.decode\.max_length"),
        ("seed: 0\n", ["eval.decode.do_sample=true"], r"eval\.decode: evaluation decodes deterministically"),
        ("seed: 0\n", ["train.freeze_image_tower=maybe"], r"train.freeze_image_tower: expected true/false"),
        ("optim: [1, 2\n", [], r"malformed YAML"),
        ("- a\n- b\n", [], r"expected a mapping at the top level"),
    ],
)
def test_bad_run_configs_name_the_key(tmp_path, yaml_text, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_train_config(path, overrides)


def test_shipped_recipe_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "recipes" / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# accelerate launch ")
        assert first.endswith("recipes/train_caption.py --config " + str(path.relative_to(path.parents[2])))
        config = load_train_config(path)
        get_model_config(config.model.name, config.model.overrides)


def test_bad_anchor_files(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("run\n\njump\n")
    with pytest.raises(ConfigError, match=r"labels.txt:2: blank line"):
        load_labels(str(path))
    path.write_text("run\njump\nRun\n")
    with pytest.raises(ConfigError, match=r"labels.txt:3: duplicate anchor label 'Run'"):
        load_labels(str(path))
    path.write_text("\n\n")
    with pytest.raises(ConfigError, match="empty"):
        load_labels(str(path))


def test_checkpoint_from_another_version(make_model, tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["format_version"] = 0
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 0 is not supported"):
        read_checkpoint_config(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_checkpoint_config(tmp_path / "m")
    shutil.rmtree(tmp_path / "m")


def test_a_directory_stands_for_its_manifest(tmp_path):
    from calmcap.data.manifest import resolve_video_path

    (tmp_path / "manifest.jsonl").write_text(json.dumps(GOOD) + "\n")
    (entry,) = read_manifest(tmp_path)
    assert resolve_video_path(tmp_path, entry) == (tmp_path / "v1.mp4").resolve()
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "sub")
