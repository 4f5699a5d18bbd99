"""calmcap.attributes: which shape, colour, size and action a caption names, and attribute accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from calmcap import attributes
from calmcap.attributes import attribute_accuracy, has_ground_truth, parse_caption
from calmcap.data import synth
from calmcap.metrics import ATTR_ACTION, ATTR_ALL, ATTR_COLOUR, ATTR_SHAPE, ATTR_SIZE

TABLES = ("shape_words", "colour_words", "size_words")
ATTRIBUTE_OF = {"shape_words": "shape", "colour_words": "colour", "size_words": "size"}


def _only(caption: str) -> dict[str, set[str]]:
    """The non-empty attributes a caption names."""
    return {a: set(v) for a, v in parse_caption(caption).values.items() if v}


@pytest.mark.parametrize("domain", [synth.DOMAIN_A, synth.DOMAIN_B], ids=["A", "B"])
def test_every_synonym_maps_to_its_value(domain):
    for table in TABLES:
        for value, phrases in getattr(domain, table).items():
            for phrase in phrases:
                assert _only(phrase) == {ATTRIBUTE_OF[table]: {value}}, phrase
                assert _only(f"we see it: {phrase}, then nothing") == {ATTRIBUTE_OF[table]: {value}}, phrase
    for value, pairs in domain.action_words.items():
        for pair in pairs:
            for phrase in pair:
                assert _only(phrase) == {"action": {value}}, phrase
    for table in ("background_words", "other_background_words"):
        for value, phrases in getattr(domain, table).items():
            for phrase in phrases:
                assert _only(phrase) == {"background": {value}}, phrase


def test_generated_captions_of_every_split_parse_to_the_ground_truth():
    # Scenes and captions only (no rendering): every template, synonym and background phrase.
    for split, (rendering, wording) in synth.SPLIT_DOMAINS.items():
        for index in range(150):
            rng = synth.video_rng(0, split, index)
            scene = synth._sample_scene(rng, synth.DOMAINS[rendering], 96)
            captions, mentions = synth._make_captions(rng, synth.DOMAINS[wording], scene, synth.CAPTIONS_PER_VIDEO)
            for caption, mentioned in zip(captions, mentions, strict=True):
                expected = {a: {scene[a]} for a in mentioned}
                assert _only(caption) == expected, (split, caption)


def test_longest_phrase_wins():
    # "moving in a circle" is the action orbit; the shape is named once, by "disc".
    assert _only("a small red disc moving in a circle") == {
        "shape": {"circle"}, "colour": {"red"}, "size": {"small"}, "action": {"orbit"}}
    assert _only("a tiny blue box circling around") == {
        "shape": {"square"}, "colour": {"blue"}, "size": {"small"}, "action": {"orbit"}}
    # "medium-sized" is one word; "medium" alone is the same size; neither is read twice.
    assert _only("a medium-sized green star") == {"shape": {"star"}, "colour": {"green"}, "size": {"medium"}}
    assert _only("a medium green five-pointed star") == {"shape": {"star"}, "colour": {"green"}, "size": {"medium"}}
    # Whole words only: "bigger" is not "big", "circles" is not "circle", "dotted" is not "dot".
    assert _only("a crimson hoop getting bigger") == {"shape": {"ring"}, "colour": {"red"}, "action": {"grow"}}
    assert _only("a red dot on a dotted backdrop") == {"shape": {"circle"}, "colour": {"red"}, "background": {"dots"}}
    # Case and spacing do not matter.
    assert _only("A  Large   RED circle\tMOVES TO THE LEFT.") == {
        "shape": {"circle"}, "colour": {"red"}, "size": {"large"}, "action": {"move_left"}}


def test_phrases_are_unambiguous():
    table = attributes.phrase_table()
    assert table["circle"] == ("shape", "circle") and table["moving in a circle"] == ("action", "orbit")
    assert table["medium"] == table["medium-sized"] == ("size", "medium")


TRUTH = {"shape": "circle", "colour": "red", "size": "small", "action": "move_left", "background": "plain"}


def test_accuracy_counts_one_right_value_per_attribute():
    predictions = {
        "right": "a small red circle moves to the left",
        "synonyms": "we see a minuscule scarlet orb heading left",  # domain B words are understood
        "two_colours": "a small red and blue circle moves to the left",
        "no_size": "a red circle moves to the left",
        "wrong_action": "a small red circle moves to the right",
        "nothing": "",
    }
    truths = {key: TRUTH for key in predictions}
    metrics = attribute_accuracy(predictions, truths)
    n = len(predictions)
    assert set(metrics) == {ATTR_SHAPE, ATTR_COLOUR, ATTR_SIZE, ATTR_ACTION, ATTR_ALL}
    assert metrics[ATTR_SHAPE] == pytest.approx(100 * 5 / n)
    assert metrics[ATTR_COLOUR] == pytest.approx(100 * 4 / n)  # two colours is wrong, none is wrong
    assert metrics[ATTR_SIZE] == pytest.approx(100 * 4 / n)
    assert metrics[ATTR_ACTION] == pytest.approx(100 * 4 / n)
    assert metrics[ATTR_ALL] == pytest.approx(100 * 2 / n)
    # all <= each attribute, against a brute-force count of the parse
    parsed = {k: parse_caption(v) for k, v in predictions.items()}
    assert metrics[ATTR_ALL] == pytest.approx(100 * np.mean(
        [all(parsed[k].named(a) == TRUTH[a] for a in attributes.SCORED_ATTRIBUTES) for k in predictions]))


def test_no_ground_truth_means_no_metrics():
    assert not has_ground_truth({}) and not has_ground_truth({"shape": "circle", "colour": "red", "size": "small"})
    assert has_ground_truth(TRUTH)
    assert attribute_accuracy({"v": "a small red circle moves to the left"}, {}) == {}
    assert attribute_accuracy({"v": "a small red circle"}, {"v": {"domain": "A"}}) == {}
    # Only videos with ground truth are scored.
    metrics = attribute_accuracy({"v": "a small red circle moves to the left", "w": "a dog"}, {"v": TRUTH, "w": {}})
    assert metrics[ATTR_ALL] == 100.0
