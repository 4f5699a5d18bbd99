"""Attribute accuracy: which shape, colour, size and action a generated caption names.

The embedded benchmark (:mod:`calmcap.data.synth`) stores each video's ground truth in its
manifest line (``extra["shape"]``, ``["colour"]``, ``["size"]``, ``["action"]``). A caption is
parsed with the synonym tables of *both* domains (``DOMAIN_A`` and ``DOMAIN_B``), so a model
that learned domain A's words is scored on what it says, whatever the split's wording.

Parsing matches whole words and phrases (a hyphen counts as part of a word: "medium" does not
match inside "medium-sized"), longest phrase first at each position, so that "moving in a
circle" is the action ``orbit`` and not the shape ``circle``. Background phrases are matched
too, so their words are never read as attributes. An attribute is *right* when the caption
names exactly one value of it and that value is the video's: naming two colours is wrong, and
naming none is wrong (issue #12).

Torch-free: the benchmark's tables and a regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from calmcap.data.synth import CAPTION_ATTRIBUTES, DOMAIN_A, DOMAIN_B
from calmcap.metrics import ATTR_ACTION, ATTR_ALL, ATTR_COLOUR, ATTR_SHAPE, ATTR_SIZE

# The attributes scored, with their metric keys; every caption of the benchmark names all four.
SCORED_ATTRIBUTES = ("shape", "colour", "size", "action")
ATTRIBUTE_METRICS = {"shape": ATTR_SHAPE, "colour": ATTR_COLOUR, "size": ATTR_SIZE, "action": ATTR_ACTION}

ATTRIBUTE_PROTOCOL = (
    "share (percent) of generated captions that name the video's shape / colour / size / action "
    "(all: the four together); a caption is parsed with both domains' synonym tables, whole "
    "phrases, longest first; naming two values of an attribute, or none, counts as wrong"
)


@dataclass(frozen=True)
class CaptionAttributes:
    """The values a caption names, per attribute (``shape``, ``colour``, ``size``, ``action``,
    ``background``); an attribute it does not name has an empty set."""

    values: Mapping[str, frozenset[str]]

    def named(self, attribute: str) -> str | None:
        """The one value of ``attribute`` the caption names, or None (none, or several)."""
        found = self.values.get(attribute, frozenset())
        return next(iter(found)) if len(found) == 1 else None


@lru_cache(maxsize=1)
def phrase_table() -> dict[str, tuple[str, str]]:
    """Every phrase of both domains' word tables -> ``(attribute, value)``.

    Action phrases contribute both forms of each (third person, gerund) pair. A phrase that
    meant two different things would make parsing ambiguous; the tables have none (a test
    checks it) and this raises if a later edit adds one.
    """
    table: dict[str, tuple[str, str]] = {}

    def add(phrase: str, attribute: str, value: str) -> None:
        phrase = phrase.lower()
        if table.setdefault(phrase, (attribute, value)) != (attribute, value):
            raise ValueError(f"phrase {phrase!r} names both {table[phrase]} and {(attribute, value)}")

    for domain in (DOMAIN_A, DOMAIN_B):
        for attribute, words in (("shape", domain.shape_words), ("colour", domain.colour_words),
                                 ("size", domain.size_words)):
            for value, phrases in words.items():
                for phrase in phrases:
                    add(phrase, attribute, value)
        for value, pairs in domain.action_words.items():
            for pair in pairs:
                for phrase in pair:
                    add(phrase, "action", value)
        for backgrounds in (domain.background_words, domain.other_background_words):
            for value, phrases in backgrounds.items():
                for phrase in phrases:
                    add(phrase, "background", value)
    return table


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern[str]:
    # Longest first: at a given position the alternation takes the first phrase that matches.
    phrases = sorted(phrase_table(), key=lambda p: (-len(p), p))
    body = "|".join(r"\s+".join(map(re.escape, p.split())) for p in phrases)
    return re.compile(r"(?<![\w-])(?:" + body + r")(?![\w-])")


def parse_caption(caption: str) -> CaptionAttributes:
    """The shape, colour, size, action and background values ``caption`` names (any domain's words)."""
    table = phrase_table()
    found: dict[str, set[str]] = {attribute: set() for attribute in CAPTION_ATTRIBUTES}
    for match in _pattern().finditer(caption.lower()):
        attribute, value = table[" ".join(match.group(0).split())]
        found[attribute].add(value)
    return CaptionAttributes({attribute: frozenset(values) for attribute, values in found.items()})


def has_ground_truth(extra: Mapping[str, object]) -> bool:
    """Whether a manifest line's ``extra`` holds the four scored attributes."""
    return all(isinstance(extra.get(attribute), str) for attribute in SCORED_ATTRIBUTES)


def attribute_accuracy(predictions: Mapping[str, str], truths: Mapping[str, Mapping[str, object]]) -> dict[str, float]:
    """Percent of ``predictions`` (``{video_id: caption}``) naming the right shape, colour, size,
    action, and all four, against ``truths`` (``{video_id: extra}``).

    Only videos with a prediction and a ground truth (:func:`has_ground_truth`) are scored;
    with none, the result is empty. Keys: :data:`calmcap.metrics.ATTR_SHAPE` ... ``ATTR_ALL``.
    """
    scored: Sequence[str] = [k for k in predictions if k in truths and has_ground_truth(truths[k])]
    if not scored:
        return {}
    right = {attribute: 0 for attribute in SCORED_ATTRIBUTES}
    all_right = 0
    for video_id in scored:
        parsed = parse_caption(predictions[video_id])
        hits = [parsed.named(a) == truths[video_id][a] for a in SCORED_ATTRIBUTES]
        for attribute, hit in zip(SCORED_ATTRIBUTES, hits, strict=True):
            right[attribute] += hit
        all_right += all(hits)
    out = {ATTRIBUTE_METRICS[a]: 100.0 * right[a] / len(scored) for a in SCORED_ATTRIBUTES}
    out[ATTR_ALL] = 100.0 * all_right / len(scored)
    return out
