"""``calmcap evaluate`` and calmcap.reports: report.json / report.md / predictions / plots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from calmcap.attributes import attribute_accuracy
from calmcap.cli import main
from calmcap.metrics import (
    ATTR_ACTION,
    ATTR_ALL,
    ATTR_COLOUR,
    ATTR_SHAPE,
    ATTR_SIZE,
    BLEU_1,
    BLEU_2,
    BLEU_3,
    BLEU_4,
    CIDER,
    ROUGE_L,
)
from tests.test_pipeline import checkpoint_dirs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RETRIEVAL_KEYS = {f"{d}/{s}" for d in ("t2v", "v2t") for s in ("R@1", "R@5", "R@10", "MdR", "MnR")}
ATTRIBUTE_KEYS = {ATTR_SHAPE, ATTR_COLOUR, ATTR_SIZE, ATTR_ACTION, ATTR_ALL}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, make_model) -> Path:
    return checkpoint_dirs(tmp_path_factory, make_model)["calm"]


@pytest.fixture(scope="module")
def cross_domain(model_dir, synth_small, tmp_path_factory):
    """One evaluate call over test (in-domain) and test_ood (out-of-domain) of the embedded benchmark."""
    out = tmp_path_factory.mktemp("report")
    code = main(["evaluate", "--model", str(model_dir), "--data", str(synth_small.parent),
                 "--split", "test", "--split", "test_ood", "--out", str(out),
                 "--no-java", "--max-length", "6", "--batch-size", "4", "--num-workers", "0", "--no-progress"])
    assert code == 0
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_report_json_keys_and_identities(cross_domain, model_dir, synth_small):
    report = json.loads((cross_domain / "report.json").read_text())
    assert report["format"] == "calmcap-eval-report" and report["format_version"] == 1
    model = report["model"]
    assert model["path"] == str(model_dir.resolve()) and model["name"] == "calmcap-tiny"
    assert model["sha256"] == _sha256(model_dir / "model.safetensors")
    rows = report["evaluations"]
    assert [(r["dataset"], r["split"], r["domain"]) for r in rows] == [
        (synth_small.parent.name, "test", "A"), (synth_small.parent.name, "test_ood", "B")]
    for row in rows:
        assert row["data"]["manifest"] == str(synth_small.resolve())
        assert row["data"]["sha256"] == _sha256(synth_small) and row["data"]["split"] == row["split"]
        # No Java here: METEOR is left out, everything else is there under the fixed keys; the
        # benchmark's manifest holds the attributes, so attribute accuracy is there too.
        assert set(row["metrics"]) == RETRIEVAL_KEYS | {BLEU_1, BLEU_2, BLEU_3, BLEU_4, ROUGE_L, CIDER} | ATTRIBUTE_KEYS
        assert row["counts"] == {"videos": 5, "videos_skipped": 0, "captions": 25}
        # Chance on this gallery: 1/5 both ways (v2t: 5 own captions of 25, not 1/25), and R@5 = 100 % for t2v.
        assert row["chance"]["t2v/R@1"] == pytest.approx(20.0) and row["chance"]["v2t/R@1"] == pytest.approx(20.0)
        assert row["chance"]["t2v/R@5"] == pytest.approx(100.0) and 20.0 < row["chance"]["v2t/R@5"] < 100.0
        assert row["protocol"]["attributes"]["videos"] == 5
        protocol = row["protocol"]
        assert "best-ranked correct caption" in protocol["retrieval"]["v2t"]
        assert protocol["decode"]["max_length"] == 6 and protocol["num_frames"] == 8
        assert protocol["split"] == row["split"]
        assert protocol["caption_metrics"]["meteor"] is False
        assert "not paper-comparable" in protocol["caption_metrics"]["tokenizer"]
        # The stored ranks reproduce the metrics.
        t2v, v2t = np.array(row["ranks"]["t2v"]), np.array(row["ranks"]["v2t"])
        assert len(t2v) == 25 and len(v2t) == 5
        assert row["metrics"]["t2v/R@1"] == pytest.approx(100 * np.mean(t2v <= 1))
        assert row["metrics"]["v2t/MdR"] == pytest.approx(np.median(v2t))
        assert row["predictions_file"] == f"predictions-{synth_small.parent.name}-{row['split']}.json"


def test_predictions_markdown_and_plots(cross_domain, synth_small, capsys):
    entries = [json.loads(line) for line in synth_small.read_text().splitlines()]
    name = synth_small.parent.name
    rows = {r["split"]: r for r in json.loads((cross_domain / "report.json").read_text())["evaluations"]}
    for split in ("test", "test_ood"):
        predictions = json.loads((cross_domain / f"predictions-{name}-{split}.json").read_text())
        expected_ids = sorted(e["video_id"] for e in entries if e["split"] == split)
        assert sorted(p["image_id"] for p in predictions) == expected_ids
        assert all(set(p) == {"image_id", "caption"} and isinstance(p["caption"], str) for p in predictions)
        # The predictions and the manifest's ground truth reproduce the attribute metrics.
        truths = {e["video_id"]: e["extra"] for e in entries if e["split"] == split}
        expected = attribute_accuracy({p["image_id"]: p["caption"] for p in predictions}, truths)
        assert {k: rows[split]["metrics"][k] for k in ATTRIBUTE_KEYS} == pytest.approx(expected)
    markdown = (cross_domain / "report.md").read_text()
    for heading in ("## Summary", "## Captioning (x100)", "## Attribute accuracy (%)", "## Text-to-video retrieval",
                    "## Video-to-text retrieval", "## Protocol", "## Data"):
        assert heading in markdown
    assert f"| {name} | test     | A " in markdown and f"| {name} | test_ood | B " in markdown
    summary = markdown.split("## Summary")[1].split("##")[0]
    assert "attr shape" in summary and "attr all 4" in summary
    # Both retrieval tables state chance R@1 = 1/5 videos = 20 %: for v2t it is 5 own captions
    # among 25 (one of a video's own captions first), not 1/25 = 4 %.
    for title in ("## Text-to-video retrieval", "## Video-to-text retrieval"):
        table = markdown.split(title)[1].split("##")[0]
        header, _, *body = [line for line in table.splitlines() if line.startswith("|")]
        assert header.split("|")[-2].strip() == "chance R@1"
        assert [line.split("|")[-2].strip() for line in body] == ["20.00", "20.00"]
    assert "![Recall@K](recall_at_k.png)" in markdown
    for png in ("recall_at_k.png", "rank_histogram.png"):
        assert (cross_domain / png).read_bytes()[:8] == PNG_MAGIC


def test_single_split_writes_predictions_json_and_prints_table(model_dir, synth_small, tmp_path, capsys):
    code = main(["evaluate", "--model", str(model_dir), "--data", str(synth_small), "--split", "val",
                 "--out", str(tmp_path),
                 "--task", "retrieval", "--no-plots", "--no-progress", "--max-videos", "4", "--num-workers", "0"])
    assert code == 0
    out = capsys.readouterr().out
    assert "t2v R@1" in out and "CIDEr" not in out and "wrote report.json, report.md" in out
    report = json.loads((tmp_path / "report.json").read_text())
    row = report["evaluations"][0]
    assert set(row["metrics"]) == RETRIEVAL_KEYS
    assert row["data"]["num_videos"] == 7 and row["data"]["num_evaluated"] == 4
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("predictions*.json"))

    code = main(["evaluate", "--model", str(model_dir), "--data", str(synth_small), "--split", "val",
                 "--out", str(tmp_path / "c"), "--task", "caption", "--no-java", "--max-length", "4",
                 "--no-progress", "--max-videos", "2", "--num-workers", "0"])
    assert code == 0
    assert [p.name for p in (tmp_path / "c").glob("predictions*.json")] == ["predictions.json"]


def test_no_ground_truth_no_attribute_metrics(model_dir, synth_small, tmp_path):
    # The same videos without the ground truth in ``extra`` (as in any converted benchmark).
    lines = [json.loads(line) for line in synth_small.read_text().splitlines()]
    stripped = [{**{k: v for k, v in e.items() if k != "extra"}, "video": str(synth_small.parent / e["video"])}
                for e in lines if e["split"] == "test"]
    manifest = tmp_path / "plain.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in stripped))
    code = main(["evaluate", "--model", str(model_dir), "--data", str(manifest), "--split", "test",
                 "--out", str(tmp_path / "r"), "--task", "caption", "--no-java", "--max-length", "4",
                 "--no-progress", "--max-videos", "2", "--num-workers", "0"])
    assert code == 0
    (row,) = json.loads((tmp_path / "r" / "report.json").read_text())["evaluations"]
    assert CIDER in row["metrics"] and not set(row["metrics"]) & ATTRIBUTE_KEYS and "attributes" not in row["protocol"]
    assert "Attribute accuracy" not in (tmp_path / "r" / "report.md").read_text()


def test_evaluate_usage_errors(model_dir, synth_small, tmp_path, capsys):
    assert main(["evaluate", "--model", str(model_dir), "--data", str(tmp_path), "--split", "test",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no manifest.jsonl" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model_dir), "--data", str(synth_small), "--split", "nope",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no videos in split" in capsys.readouterr().err


def test_format_table_aligns_numbers_right():
    from calmcap.reports import caption_metrics_table, format_table

    text = format_table(["name", "value"], [["a", "1.0"], ["long name", "12.5"]])
    assert text.splitlines() == ["name       value", "a            1.0", "long name   12.5"]
    markdown = format_table(["name", "value"], [["a", "1.0"]], markdown=True)
    assert markdown.splitlines()[1] == "|------|------:|"
    assert caption_metrics_table({CIDER: 12.345, BLEU_4: 1.0}).splitlines() == [
        "metric  score", "BLEU-4   1.00", "CIDEr   12.35"]
