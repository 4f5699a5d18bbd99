"""Tests of the pretraining corpus of the embedded world (calmcap.data.pretrain_corpus, issue #11)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from calmcap.data import pretrain_corpus as corpus, synth
from calmcap.data.manifest import read_manifest, resolve_video_path
from calmcap.errors import CalmcapError
from calmcap.labels import load_labels

TINY = dict(num_videos=6, num_val=2, num_frames_per_video=8, fps=8.0, size=64, progress=False)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pretrain_corpus")
    return out, corpus.generate_pretrain_corpus(out, seed=0, workers=0, **TINY)


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    """Many sampled scenes (no rendering) with their captions."""
    rows = []
    for index in range(600):
        rng = corpus.corpus_rng(0, "pretrain", index)
        scene, _ = corpus.sample_scene(rng, 96)
        captions, kinds, _ = corpus.make_captions(rng, scene, corpus.CAPTIONS_PER_VIDEO)
        rows.append({**scene, "captions": captions, "kinds": kinds})
    return rows


def _has(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text) is not None


def test_manifest_splits_and_videos(generated):
    out, summary = generated
    entries = read_manifest(out / "manifest.jsonl")
    assert Counter(e.split for e in entries) == {"pretrain": 6, "pretrain_val": 2}
    assert summary["num_videos"] == {"pretrain": 6, "pretrain_val": 2}
    for entry in entries:
        assert resolve_video_path(out / "manifest.jsonl", entry).stat().st_size > 0
        assert len(set(entry.captions)) == len(entry.captions) == corpus.CAPTIONS_PER_VIDEO
        assert set(entry.extra["caption_kinds"]) <= set(corpus.CAPTION_KIND_WEIGHTS)
        assert entry.extra["labels"] == corpus.true_labels(entry.extra)
    assert (out / "labels.txt").read_text() == corpus.world_labels_path().read_text()
    assert (out / "corpus.json").is_file()
    with pytest.raises(CalmcapError, match="--overwrite"):
        corpus.generate_pretrain_corpus(out, seed=0, workers=0, **TINY)


def test_videos_are_disjoint_from_every_benchmark_split():
    # Same seed and index, other split code (and the corpus version): other random streams.
    draws = {tuple(corpus.corpus_rng(0, split, 3).integers(0, 2**31, 4)) for split in corpus.SPLITS}
    draws |= {tuple(synth.video_rng(0, split, 3).integers(0, 2**31, 4)) for split in synth.SPLITS}
    assert len(draws) == len(corpus.SPLITS) + len(synth.SPLITS)


def test_visuals_cover_both_domains_and_more(scenes):
    assert {s["background"] for s in scenes} == set(corpus.ALL_BACKGROUNDS)
    assert set(synth.DOMAIN_A.backgrounds) | set(synth.DOMAIN_B.backgrounds) < set(corpus.ALL_BACKGROUNDS)
    assert {s["palette_family"] for s in scenes} == {s["size_family"] for s in scenes} == {"A", "B", "C"}
    assert {len(s["distractors"]) for s in scenes} == set(range(corpus.MAX_DISTRACTORS + 1))
    # The radius follows the chosen family's table (with the renderer's +-6 % jitter).
    for s in scenes[:50]:
        nominal = corpus.VISUAL_FAMILIES[s["size_family"]].size_radius[s["size"]]
        assert abs(s["radius_fraction"] / nominal - 1) <= 0.061


def test_wording_mixes_both_domains_synonyms(scenes):
    text = "\n".join(c for s in scenes for c in s["captions"])
    # Domain B's reserved words (test_ood's vocabulary) occur, and domain A's.
    for word in ("scarlet", "orb", "lozenge", "minuscule", "dwindles", "twinkling", "crimson", "hoop", "azure"):
        assert _has(text, word), word
    for marker in synth.DOMAIN_B_MARKERS:
        assert marker in text
    kinds = Counter(k for s in scenes for k in s["kinds"])
    assert set(kinds) == set(corpus.CAPTION_KIND_WEIGHTS)
    # Short alt-text captions name single concepts ("a scarlet orb", "polka dots").
    alt = [c for s in scenes for c, k in zip(s["captions"], s["kinds"], strict=True) if k == "alt_text"]
    assert min(len(c.split()) for c in alt) == 1
    assert np.mean([len(c.split()) for c in alt]) < 5


def test_captions_are_true_of_their_scene(scenes):
    for s in scenes[:200]:
        for caption, kind in zip(s["captions"], s["kinds"], strict=True):
            if kind == "label":
                assert caption in corpus.true_labels(s)
                continue
            # Action and background phrases may contain shape words ("moving in a circle").
            for phrase in sorted({p for pair in corpus.ACTION_WORDS[s["action"]] for p in pair}
                                 | set(corpus.BACKGROUND_WORDS[s["background"]]), key=len, reverse=True):
                caption = caption.replace(phrase, " ")
            colour_words = [w for c, ws in corpus.COLOUR_WORDS.items() for w in ws if _has(caption, w)]
            assert all(w in corpus.COLOUR_WORDS[s["colour"]] for w in colour_words), (caption, s["colour"])
            shape_words = [w for c, ws in corpus.SHAPE_WORDS.items() for w in ws if _has(caption, w)]
            assert all(w in corpus.SHAPE_WORDS[s["shape"]] for w in shape_words), (caption, s["shape"])


def test_world_labels_are_the_shipped_label_set():
    assert load_labels("synth_world") == list(corpus.WORLD_LABELS)
    # Related to the benchmark's caption attributes, not the same list (issue #11): none of the
    # benchmark's one-label-per-attribute-value concepts ("a circle", "a red object", "something
    # rotating": the first 29 of synth_concepts), and mostly other labels than synth_concepts.
    concepts = load_labels("synth_concepts")
    assert not set(corpus.WORLD_LABELS) & set(concepts[:29])
    assert len(set(corpus.WORLD_LABELS) & set(concepts)) < len(corpus.WORLD_LABELS) / 4
    scene = {"shape": "ring", "colour": "orange", "size": "small", "action": "blink", "background": "dots",
             "radius_fraction": 0.07, "distractors": [{"shape": "ring", "colour": "blue", "action": "stay"}]}
    labels = corpus.true_labels(scene)
    for expected in ("a round shape", "a hollow shape", "a warm colour", "the colour of fire", "a tiny object",
                     "something flickering", "polka dots", "a patterned backdrop", "two objects of the same shape"):
        assert expected in labels
    for wrong in ("a cool colour", "a single object", "a crowded scene", "two objects of the same colour"):
        assert wrong not in labels


def test_cli_renders_the_corpus(tmp_path, capsys):
    from calmcap.cli import main

    assert main(["synth", str(tmp_path / "c"), "--corpus", "pretrain", "--num-videos", "2", "--num-val", "1",
                 "--num-frames", "4", "--size", "32", "--workers", "0", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pretraining corpus of 3 videos" in printed
    assert Counter(e.split for e in read_manifest(tmp_path / "c")) == {"pretrain": 2, "pretrain_val": 1}
