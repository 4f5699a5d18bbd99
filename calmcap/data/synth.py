"""The embedded benchmark: procedurally rendered shapes-and-actions videos with paraphrased captions.

``calmcap synth OUT_DIR`` (:func:`generate_benchmark`) renders a video-caption dataset with no
download (docs/DESIGN.md section 4, "Embedded benchmark"). Each video shows one *main object* (a shape
with a colour, a size and an action) plus faded *distractor* objects doing their own things on a
textured *background*. The captions describe the main object only and rarely the background, so
a video holds more than its captions say: the information imbalance CALM is about.

Splits ``train``, ``val`` and ``test`` come from domain A; ``test_ood`` comes from domain B,
which shifts the rendering (other background kinds and tones, other shades of the same colour
names, other radii for the same size words, more distractors) and the caption wording
(templates and synonyms reserved for domain B). ``test_ood_visual`` shifts the rendering alone
(domain B pictures, domain A words) and ``test_ood_text`` the wording alone (domain A pictures,
domain B words), so the two halves of the shift can be measured apart (issue #12).

Output layout (all paths relative to ``OUT_DIR``)::

    manifest.jsonl              one line per video, all splits (calmcap.data.manifest format)
    videos/<split>/<id>.mp4     H.264 (libx264, yuv420p), ``size`` x ``size`` pixels
    concepts.txt                the benchmark's concept labels (copy of anchors/synth_concepts.txt)
    benchmark.json              seed, sizes, generator version, chance levels and R@K ceilings

Every video's randomness derives from ``(seed, split, index)`` alone, so the output does not
depend on the number of worker processes, and the same seed gives byte-identical manifests.
See ``docs/BENCHMARK_SYNTH.md`` for the attribute spaces and the measured ceilings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from calmcap.constants import MANIFEST_FILE
from calmcap.data.manifest import ManifestEntry, write_manifest
from calmcap.errors import CalmcapError, ConfigError
from calmcap.metrics import chance_recall, hit_probability

logger = logging.getLogger(__name__)

# Bump whenever a change alters the rendered pixels, captions or manifest for a given seed.
# Version 2 (issue #12): the splits test_ood_visual and test_ood_text, and ``wording_domain`` in
# every manifest line.
GENERATOR_VERSION = 2

SPLITS = ("train", "val", "test", "test_ood", "test_ood_visual", "test_ood_text")
# Each split's (rendering domain, wording domain). The rendering domain draws the scene and its
# pixels (backgrounds, palette, object radii, distractors); the wording domain writes the
# captions (templates and synonyms).
SPLIT_DOMAINS: dict[str, tuple[str, str]] = {
    "train": ("A", "A"),
    "val": ("A", "A"),
    "test": ("A", "A"),
    "test_ood": ("B", "B"),
    "test_ood_visual": ("B", "A"),
    "test_ood_text": ("A", "B"),
}
# The rendering domain alone: ``extra["domain"]`` and the report's ``domain`` column.
SPLIT_DOMAIN = {split: rendering for split, (rendering, _) in SPLIT_DOMAINS.items()}
# Stable integer codes that enter each video's seed; never reorder (it would change every video).
# The pretraining corpus (calmcap.data.pretrain_corpus) has codes of its own, so its videos are
# disjoint from every benchmark split for any seed; a new split or corpus takes a new code.
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "test_ood": 3, "pretrain": 4, "pretrain_val": 5,
               "test_ood_visual": 6, "test_ood_text": 7}

DEFAULT_NUM_TRAIN = 3000
DEFAULT_NUM_VAL = 250
DEFAULT_NUM_TEST = 500
DEFAULT_NUM_TEST_OOD = 500
DEFAULT_NUM_TEST_OOD_VISUAL = 500
DEFAULT_NUM_TEST_OOD_TEXT = 500
# 24 frames at 10 fps = 2.4 s per clip; the tiny model samples 8 of them (one per 3 frames).
DEFAULT_NUM_FRAMES = 24
DEFAULT_FPS = 10.0
# Stored at 96 px so models at 64 px (the tiny calibration model) resize down and larger towers
# have some real detail; 64 px would make yuv420p chroma (32 x 32) blur the smallest shapes.
DEFAULT_SIZE = 96
CAPTIONS_PER_VIDEO = 5

# The attributes a caption can mention; ``extra["caption_mentions"]`` lists, per caption, the
# ones it does mention (always the first four; the background only sometimes).
CAPTION_ATTRIBUTES = ("shape", "colour", "size", "action", "background")

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "ring")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "medium", "large")
ACTIONS = (
    "move_left", "move_right", "move_up", "move_down", "rotate", "grow",
    "shrink", "bounce", "blink", "stay", "orbit", "shake",
)
# A rotating disc or ring looks exactly like a still one, so that pairing is never generated.
_ROTATION_INVARIANT = ("circle", "ring")

_SUPERSAMPLE = 3  # sub-pixel samples per axis for anti-aliased shape edges
_DISTRACTOR_OPACITY = 0.55  # distractors are faded so the main object is well defined
_OBJECT_EXTENT = 1.2  # every shape fits in a disc of this many radii (bounding boxes)


@dataclass(frozen=True)
class DomainSpec:
    """Everything that differs between domain A (train/val/test) and domain B (test_ood).

    The word tables and templates are the domain's *wording*; the rest is its *rendering*
    (:data:`SPLIT_DOMAINS` says which domain plays which part in a split).
    """

    name: str
    shape_words: dict[str, tuple[str, ...]]
    colour_words: dict[str, tuple[str, ...]]
    size_words: dict[str, tuple[str, ...]]
    # (third person singular, gerund) pairs, so templates can say "moves" or "moving".
    action_words: dict[str, tuple[tuple[str, str], ...]]
    background_words: dict[str, tuple[str, ...]]
    # How this domain's wording names the *other* domain's backgrounds, for the splits whose
    # rendering and wording domains differ (test_ood_visual, test_ood_text). Kept apart from
    # ``background_words``, which the pretraining corpus reads as the domain's own vocabulary.
    other_background_words: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]
    palette: dict[str, tuple[int, int, int]]
    size_radius: dict[str, float]  # radius as a fraction of the frame side
    backgrounds: tuple[str, ...]
    background_tones: tuple[tuple[int, int, int], ...]
    distractor_counts: tuple[int, ...]
    distractor_weights: tuple[float, ...]
    background_mention_prob: float

    def background_phrases(self, background: str) -> tuple[str, ...]:
        """The phrases this domain's wording uses for a background of either domain."""
        return self.background_words.get(background) or self.other_background_words[background]


# Templates: {np} = article + size + colour + shape, {the_np} the same with "the", {vp} a third
# person verb phrase, {ing} its gerund, {bg} an optional " on a striped background".
_TEMPLATES_A = (
    "{np} {vp}{bg}",
    "the {size} {colour} {shape} {vp}{bg}",
    "{np} {ing}{bg}",
    "{np} that {vp}{bg}",
    "a video of {np} {ing}{bg}",
)
# Every domain-B template carries one of these phrases and no domain-A template does.
DOMAIN_B_MARKERS = ("there is", "in this clip", "we see", "you can see")
_TEMPLATES_B = (
    "there is {np} that {vp}{bg}",
    "in this clip, the {size} {colour} {shape} {vp}{bg}",
    "we see {np} {ing}{bg}",
    "you can see {np} as it {vp}{bg}",
)

DOMAIN_A = DomainSpec(
    name="A",
    shape_words={
        "circle": ("circle", "disc", "dot"),
        "square": ("square", "box", "block"),
        "triangle": ("triangle", "three-sided shape"),
        "star": ("star", "five-pointed star"),
        "diamond": ("diamond", "rhombus"),
        "cross": ("cross", "plus sign"),
        "hexagon": ("hexagon", "six-sided shape"),
        "ring": ("ring", "hoop"),
    },
    colour_words={
        "red": ("red", "crimson"),
        "green": ("green", "emerald"),
        "blue": ("blue", "azure"),
        "yellow": ("yellow", "golden"),
        "purple": ("purple", "violet"),
        "orange": ("orange", "amber"),
    },
    size_words={
        "small": ("small", "tiny", "little"),
        "medium": ("medium-sized", "mid-sized", "medium"),
        "large": ("large", "big", "huge"),
    },
    action_words={
        "move_left": (("moves to the left", "moving to the left"), ("slides leftwards", "sliding leftwards"),
                      ("travels left", "travelling left")),
        "move_right": (("moves to the right", "moving to the right"), ("slides rightwards", "sliding rightwards"),
                       ("travels right", "travelling right")),
        "move_up": (("moves up", "moving up"), ("rises", "rising"), ("travels upwards", "travelling upwards")),
        "move_down": (("moves down", "moving down"), ("falls", "falling"),
                      ("travels downwards", "travelling downwards")),
        "rotate": (("rotates", "rotating"), ("spins", "spinning"), ("turns around", "turning around")),
        "grow": (("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding")),
        "shrink": (("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting")),
        "bounce": (("bounces", "bouncing"), ("bounces up and down", "bouncing up and down"), ("hops", "hopping")),
        "blink": (("blinks", "blinking"), ("flashes on and off", "flashing on and off"),
                  ("flickers", "flickering")),
        "stay": (("stays still", "staying still"), ("does not move", "not moving"),
                 ("stays in place", "staying in place")),
        "orbit": (("moves in a circle", "moving in a circle"), ("circles around", "circling around"),
                  ("goes round in a loop", "going round in a loop")),
        "shake": (("shakes", "shaking"), ("wiggles", "wiggling"),
                  ("jitters from side to side", "jittering from side to side")),
    },
    background_words={
        "plain": ("on a plain background", "against a plain backdrop"),
        "gradient": ("on a gradient background", "over a shaded backdrop"),
        "stripes": ("on a striped background", "in front of stripes"),
        "noise": ("on a noisy background", "over a grainy backdrop"),
        "checker": ("on a checkered background", "over a checkerboard"),
    },
    other_background_words={
        "radial": ("on a radial background", "over a radiant backdrop"),
        "diagonal": ("on a diagonally striped background", "in front of diagonal stripes"),
        "dots": ("on a spotted background", "over a spotty backdrop"),
        "waves": ("on a wavy background", "over a rippled backdrop"),
        "blotches": ("on a mottled background", "over a smudged backdrop"),
    },
    templates=_TEMPLATES_A,
    palette={
        "red": (220, 40, 40),
        "green": (40, 185, 60),
        "blue": (50, 95, 235),
        "yellow": (235, 215, 40),
        "purple": (150, 60, 205),
        "orange": (245, 140, 30),
    },
    size_radius={"small": 0.085, "medium": 0.13, "large": 0.185},
    backgrounds=("plain", "gradient", "stripes", "noise", "checker"),
    background_tones=((40, 40, 45), (60, 70, 80), (90, 85, 80), (25, 28, 32), (110, 110, 110), (100, 90, 70)),
    distractor_counts=(0, 1, 2),
    distractor_weights=(0.3, 0.4, 0.3),
    background_mention_prob=0.15,
)

DOMAIN_B = DomainSpec(
    name="B",
    # Domain B keeps the plain word and adds a synonym never used in domain A.
    shape_words={
        "circle": ("circle", "orb"),
        "square": ("square", "tile"),
        "triangle": ("triangle", "trigon"),
        "star": ("star", "pentagram"),
        "diamond": ("diamond", "lozenge"),
        "cross": ("cross", "cruciform shape"),
        "hexagon": ("hexagon", "honeycomb cell"),
        "ring": ("ring", "donut"),
    },
    colour_words={
        "red": ("red", "scarlet"),
        "green": ("green", "jade"),
        "blue": ("blue", "cobalt"),
        "yellow": ("yellow", "lemon"),
        "purple": ("purple", "plum"),
        "orange": ("orange", "tangerine"),
    },
    size_words={
        "small": ("small", "minuscule"),
        "medium": ("medium", "moderately sized"),
        "large": ("large", "giant"),
    },
    action_words={
        "move_left": (("drifts toward the left edge", "drifting toward the left edge"), ("heads left", "heading left")),
        "move_right": (("drifts toward the right edge", "drifting toward the right edge"),
                       ("heads right", "heading right")),
        "move_up": (("drifts toward the top", "drifting toward the top"), ("ascends", "ascending")),
        "move_down": (("drifts toward the bottom", "drifting toward the bottom"), ("descends", "descending")),
        "rotate": (("revolves in place", "revolving in place"), ("twirls", "twirling")),
        "grow": (("swells", "swelling"), ("enlarges", "enlarging")),
        "shrink": (("dwindles", "dwindling"), ("diminishes", "diminishing")),
        "bounce": (("rebounds", "rebounding"), ("leaps repeatedly", "leaping repeatedly")),
        "blink": (("twinkles", "twinkling"), ("appears and disappears", "appearing and disappearing")),
        "stay": (("remains motionless", "remaining motionless"), ("sits idle", "sitting idle")),
        "orbit": (("orbits", "orbiting"), ("traces a circular path", "tracing a circular path")),
        "shake": (("trembles", "trembling"), ("vibrates", "vibrating")),
    },
    background_words={
        "radial": ("against a glowing backdrop",),
        "diagonal": ("over slanted stripes",),
        "dots": ("on a dotted backdrop",),
        "waves": ("over a wavy pattern",),
        "blotches": ("on a blotchy backdrop",),
    },
    other_background_words={
        "plain": ("against an empty backdrop",),
        "gradient": ("over a fading backdrop",),
        "stripes": ("over parallel bands",),
        "noise": ("on a static-like backdrop",),
        "checker": ("over a chessboard pattern",),
    },
    templates=_TEMPLATES_B,
    # The same colour names in other shades: darker, shifted hues.
    palette={
        "red": (185, 30, 75),
        "green": (110, 205, 80),
        "blue": (40, 150, 215),
        "yellow": (215, 230, 90),
        "purple": (120, 40, 150),
        "orange": (230, 105, 45),
    },
    # The same size words at other radii: smaller smalls, larger larges.
    size_radius={"small": 0.07, "medium": 0.145, "large": 0.215},
    backgrounds=("radial", "diagonal", "dots", "waves", "blotches"),
    background_tones=((20, 60, 60), (70, 30, 45), (70, 70, 30), (150, 140, 110), (170, 170, 175), (45, 45, 85)),
    distractor_counts=(1, 2, 3),
    distractor_weights=(0.3, 0.4, 0.3),
    background_mention_prob=0.15,
)

DOMAINS = {"A": DOMAIN_A, "B": DOMAIN_B}


def concepts_path() -> Path:
    """The shipped concept label file of this benchmark (``calmcap/anchors/synth_concepts.txt``)."""
    return Path(__file__).resolve().parent.parent / "anchors" / "synth_concepts.txt"


# --------------------------------------------------------------------------------------------
# Rendering: numpy masks on a supersampled grid, one bounding box per object and frame.


def _regular_polygon(num_vertices: int, radius: float, start_degrees: float) -> np.ndarray:
    angles = np.deg2rad(start_degrees + 360.0 * np.arange(num_vertices) / num_vertices)
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star_polygon() -> np.ndarray:
    angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
    radii = np.where(np.arange(10) % 2 == 0, 1.15, 0.5)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


# Vertices in units of the object's radius, image coordinates (y points down, so -90 deg is up).
_POLYGONS = {
    "triangle": _regular_polygon(3, 1.15, -90.0),
    "hexagon": _regular_polygon(6, 1.0, 0.0),
    "star": _star_polygon(),
    # A tall rhombus, so that a square turned by 45 degrees is not a diamond.
    "diamond": np.array([[0.0, -1.15], [0.72, 0.0], [0.0, 1.15], [-0.72, 0.0]]),
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points (concave polygons work)."""
    inside = np.zeros(u.shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(vertices)):
            x1, y1 = vertices[i]
            x2, y2 = vertices[i - 1]
            crosses = (y1 > v) != (y2 > v)
            x_at = (x2 - x1) * (v - y1) / (y2 - y1) + x1
            inside ^= crosses & (u < x_at)
    return inside


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Which points (u, v), in units of the radius around the centre, lie inside ``shape``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.05) & (av <= 0.35)) | ((av <= 1.05) & (au <= 0.35))
    return _inside_polygon(u, v, _POLYGONS[shape])


def _coverage(
    shape: str, cx: float, cy: float, radius: float, angle: float, size: int
) -> tuple[slice, slice, np.ndarray] | None:
    """Anti-aliased coverage in [0, 1] of one shape, restricted to its bounding box.

    Returns ``(rows, cols, alpha)`` with ``alpha: [h, w] float32`` for ``image[rows, cols]``, or
    None when the shape is outside the frame or has vanished.
    """
    if radius <= 0.05:
        return None
    reach = radius * _OBJECT_EXTENT + 1.0
    x0, x1 = max(0, int(math.floor(cx - reach))), min(size, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(math.floor(cy - reach))), min(size, int(math.ceil(cy + reach)) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    sub = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1)  # sample x positions
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1)
    dx = xs[None, :] - cx
    dy = ys[:, None] - cy
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    # Rotate the sample points by -angle, i.e. the shape by +angle.
    u = (cos_a * dx + sin_a * dy) / radius
    v = (-sin_a * dx + cos_a * dy) / radius
    mask = _shape_mask(shape, u, v).astype(np.float32)
    h, w = y1 - y0, x1 - x0
    alpha = mask.reshape(h, _SUPERSAMPLE, w, _SUPERSAMPLE).mean(axis=(1, 3))
    return slice(y0, y1), slice(x0, x1), alpha


@dataclass
class _Motion:
    """Per-frame state of one object: centre, scale of the base radius, angle, visibility."""

    cx: np.ndarray
    cy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    visible: np.ndarray


def _plan_motion(action: str, rng: np.random.Generator, radius: float, size: int, num_frames: int) -> _Motion:
    """Trajectory of an object of base ``radius`` pixels doing ``action``, kept inside the frame."""
    t = np.linspace(0.0, 1.0, num_frames)
    ones = np.ones(num_frames)
    reach = radius * _OBJECT_EXTENT + 1.0  # half the extent of the object at scale 1

    def position(extra_x: float = 0.0, extra_y: float = 0.0, scale_max: float = 1.0) -> tuple[float, float]:
        m = reach * scale_max
        lo_x, hi_x = m + extra_x, size - m - extra_x
        lo_y, hi_y = m + extra_y, size - m - extra_y
        x = rng.uniform(lo_x, hi_x) if hi_x > lo_x else size / 2
        y = rng.uniform(lo_y, hi_y) if hi_y > lo_y else size / 2
        return float(x), float(y)

    scale = ones.copy()
    visible = ones.copy()
    # A small fixed tilt, so shapes are not always axis-aligned; rotate overrides it.
    angle = ones * rng.uniform(-0.3, 0.3)
    if action in ("move_left", "move_right", "move_up", "move_down"):
        distance = min(rng.uniform(0.3, 0.45) * size, size - 2 * reach - 2)
        x, y = position()
        along = rng.uniform(reach + distance, size - reach)  # start coordinate along the motion
        if action == "move_left":
            cx, cy = along - distance * t, ones * y
        elif action == "move_right":
            cx, cy = (size - along) + distance * t, ones * y
        elif action == "move_up":
            cx, cy = ones * x, along - distance * t
        else:
            cx, cy = ones * x, (size - along) + distance * t
    elif action == "rotate":
        x, y = position()
        cx, cy = ones * x, ones * y
        # Under one turn per clip: fast enough to see in 8 sampled frames, slow enough that a
        # shape's symmetry does not alias the motion away.
        direction = rng.choice([-1.0, 1.0])
        angle = rng.uniform(0, 2 * np.pi) + direction * 2 * np.pi * rng.uniform(0.5, 0.9) * t
    elif action in ("grow", "shrink"):
        x, y = position(scale_max=1.7 if action == "grow" else 1.0)
        cx, cy = ones * x, ones * y
        scale = 1.0 + 0.7 * t if action == "grow" else 1.0 - 0.5 * t
    elif action == "bounce":
        height = rng.uniform(0.2, 0.3) * size
        x, _ = position()
        floor_y = rng.uniform(reach + height, size - reach)
        bounces = int(rng.integers(2, 4))
        cx, cy = ones * x, floor_y - height * np.abs(np.sin(np.pi * bounces * t))
    elif action == "blink":
        x, y = position()
        cx, cy = ones * x, ones * y
        half_period = int(rng.integers(2, 4))  # frames on, then as many off
        phase = int(rng.integers(0, 2 * half_period))
        visible = (((np.arange(num_frames) + phase) // half_period) % 2 == 0).astype(np.float64)
    elif action == "stay":
        x, y = position()
        cx, cy = ones * x, ones * y
    elif action == "orbit":
        orbit_radius = rng.uniform(0.12, 0.18) * size
        x, y = position(extra_x=orbit_radius, extra_y=orbit_radius)
        direction = rng.choice([-1.0, 1.0])
        phi = rng.uniform(0, 2 * np.pi) + direction * 2 * np.pi * rng.uniform(0.8, 1.0) * t
        cx, cy = x + orbit_radius * np.cos(phi), y + orbit_radius * np.sin(phi)
    elif action == "shake":
        amplitude = rng.uniform(0.05, 0.08) * size
        x, y = position(extra_x=amplitude)
        cycles = rng.uniform(4.0, 6.0)
        cx, cy = x + amplitude * np.sin(2 * np.pi * cycles * t), ones * y
    else:  # pragma: no cover - ACTIONS is closed
        raise ValueError(f"unknown action {action!r}")
    return _Motion(cx=np.asarray(cx, float), cy=np.asarray(cy, float), scale=np.asarray(scale, float),
                   angle=np.asarray(angle, float), visible=np.asarray(visible, float))


def _render_background(kind: str, rng: np.random.Generator, domain: DomainSpec, size: int) -> np.ndarray:
    """A static background ``[size, size, 3] float32`` in 0..255 of the given pattern kind."""
    tones = np.asarray(domain.background_tones, dtype=np.float32)
    i, j = rng.choice(len(tones), size=2, replace=False)
    c1, c2 = tones[i], tones[j]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5

    def mix(weight: np.ndarray) -> np.ndarray:
        return c1[None, None, :] * (1 - weight[..., None]) + c2[None, None, :] * weight[..., None]

    if kind == "plain":
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    if kind == "gradient":
        theta = rng.uniform(0, 2 * np.pi)
        proj = (xx - size / 2) * math.cos(theta) + (yy - size / 2) * math.sin(theta)
        return mix((proj - proj.min()) / (proj.max() - proj.min()))
    if kind == "stripes":
        width = int(rng.integers(5, 13))
        coord = xx if rng.random() < 0.5 else yy
        return mix(((coord // width) % 2).astype(np.float32))
    if kind == "noise":
        noise = rng.normal(0.0, 14.0, size=(size, size, 3)).astype(np.float32)
        return np.broadcast_to(c1, (size, size, 3)) + noise
    if kind == "checker":
        cell = int(rng.integers(8, 17))
        return mix((((xx // cell) + (yy // cell)) % 2).astype(np.float32))
    if kind == "radial":
        cx, cy = rng.uniform(0.2, 0.8, size=2) * size
        dist = np.hypot(xx - cx, yy - cy)
        return mix(np.clip(dist / (0.8 * size), 0, 1))
    if kind == "diagonal":
        width = rng.uniform(5, 12)
        sign = rng.choice([-1.0, 1.0])
        return mix((((xx + sign * yy) / (width * math.sqrt(2))) // 1 % 2).astype(np.float32))
    if kind == "dots":
        spacing = int(rng.integers(10, 17))
        dot_radius = spacing * rng.uniform(0.2, 0.35)
        du = (xx % spacing) - spacing / 2
        dv = (yy % spacing) - spacing / 2
        return mix((du * du + dv * dv <= dot_radius**2).astype(np.float32))
    if kind == "waves":
        kx, ky = rng.uniform(-0.35, 0.35, size=2)
        wobble = rng.uniform(0.05, 0.15)
        return mix(0.5 + 0.5 * np.sin(kx * xx + ky * yy + 3 * np.sin(wobble * yy)))
    if kind == "blotches":
        grid = rng.random((6, 6)).astype(np.float32)
        # Bilinear upsampling of a coarse random grid: smooth low-frequency blobs.
        pos = np.linspace(0, 5, size, dtype=np.float32)
        i0 = np.minimum(pos.astype(int), 4)
        f = pos - i0
        rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
        field = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
        return mix(field)
    # The kinds below belong to neither benchmark domain: only the pretraining corpus
    # (calmcap.data.pretrain_corpus) draws them.
    if kind == "grid":
        spacing = int(rng.integers(9, 17))
        line = int(rng.integers(1, 3))
        return mix((((xx % spacing) < line) | ((yy % spacing) < line)).astype(np.float32))
    if kind == "speckle":
        return mix((rng.random((size, size)) < rng.uniform(0.04, 0.1)).astype(np.float32))
    if kind == "vignette":
        dist = np.hypot(xx - size / 2, yy - size / 2) / (size / math.sqrt(2))
        return mix(np.clip(dist, 0, 1) ** 2)
    if kind == "plaid":
        width = int(rng.integers(6, 13))
        return mix(0.5 * ((xx // width) % 2) + 0.5 * ((yy // width) % 2))
    if kind == "rings":
        cx, cy = rng.uniform(0.3, 0.7, size=2) * size
        width = rng.uniform(4, 8)
        return mix(((np.hypot(xx - cx, yy - cy) // width) % 2).astype(np.float32))
    raise ValueError(f"unknown background {kind!r}")  # pragma: no cover


def _render_frames(scene: dict[str, Any], rng: np.random.Generator, domain: DomainSpec, size: int,
                   num_frames: int) -> np.ndarray:
    """Render a scene: ``[num_frames, size, size, 3] uint8`` RGB."""
    background = _render_background(scene["background"], rng, domain, size)
    # Distractors first (behind), the main object last (in front, fully opaque).
    objects = [(obj, _DISTRACTOR_OPACITY) for obj in scene["distractors"]] + [(scene, 1.0)]
    motions = []
    for obj, opacity in objects:
        motion = _plan_motion(obj["action"], rng, obj["radius_px"], size, num_frames)
        motions.append((obj, opacity, motion))
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for f in range(num_frames):
        image = background.copy()
        for obj, opacity, motion in motions:
            if motion.visible[f] <= 0:
                continue
            cov = _coverage(obj["shape"], motion.cx[f], motion.cy[f], obj["radius_px"] * motion.scale[f],
                            motion.angle[f], size)
            if cov is None:
                continue
            rows, cols, alpha = cov
            a = (alpha * opacity)[..., None]
            colour = np.asarray(domain.palette[obj["colour"]], dtype=np.float32)
            image[rows, cols] = image[rows, cols] * (1 - a) + colour * a
        frames[f] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


# --------------------------------------------------------------------------------------------
# Encoding: calmcap.data.video.encode_video with settings that make the bytes reproducible.


def _fps_arg(fps: float) -> str:
    frac = Fraction(fps).limit_denominator(1001)
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


# One encoder thread, no B-frames, and the bitexact flags (no version strings, no creation
# time): with a fixed GOP and scene-cut detection off, the same frames give the same bytes with
# the same ffmpeg binary, whatever the machine's core count.
_BITEXACT_ARGS = ("-filter_threads", "1", "-bf", "0", "-map_metadata", "-1", "-fflags", "+bitexact",
                  "-flags:v", "+bitexact", "-movflags", "+faststart", "-f", "mp4")


def encode_bitexact_mp4(frames: np.ndarray, path: Path, fps: float, gop: int) -> None:
    """Encode ``frames: [T, H, W, 3] uint8`` RGB to H.264 in ``path`` (written atomically), reproducibly.

    :func:`calmcap.data.video.encode_video` (libx264, CRF 18, yuv420p) with a keyframe every
    ``gop`` frames and the settings above: same frames, same bytes.
    """
    from calmcap.data.video import encode_video

    encode_video(path, frames, _fps_arg(fps), codec="libx264", keyframe_interval=gop, crf=18, threads=1,
                 extra_args=_BITEXACT_ARGS)


# --------------------------------------------------------------------------------------------
# Scenes and captions.


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _sample_scene(rng: np.random.Generator, domain: DomainSpec, size: int) -> dict[str, Any]:
    """Ground-truth attributes of one video: the main object, distractors and background."""

    def sample_object(exclude: tuple[str, str] | None = None) -> dict[str, Any]:
        while True:
            shape = _pick(rng, SHAPES)
            colour = _pick(rng, COLOURS)
            if exclude is None or (shape, colour) != exclude:
                break
        actions = [a for a in ACTIONS if not (a == "rotate" and shape in _ROTATION_INVARIANT)]
        size_name = _pick(rng, SIZES)
        radius = domain.size_radius[size_name] * size * rng.uniform(0.94, 1.06)
        return {"shape": shape, "colour": colour, "size": size_name, "action": _pick(rng, actions),
                "radius_px": round(float(radius), 3)}

    scene = sample_object()
    scene["background"] = _pick(rng, domain.backgrounds)
    count = int(rng.choice(domain.distractor_counts, p=np.asarray(domain.distractor_weights)))
    # A distractor never has the main object's shape-and-colour pair, so the object a caption
    # describes is identifiable (and it is drawn faded besides).
    scene["distractors"] = [sample_object(exclude=(scene["shape"], scene["colour"])) for _ in range(count)]
    return scene


def _make_captions(rng: np.random.Generator, domain: DomainSpec, scene: dict[str, Any],
                   count: int) -> tuple[list[str], list[list[str]]]:
    """``count`` distinct paraphrases in ``domain``'s wording and, for each, the attributes it mentions."""
    captions: list[str] = []
    mentions: list[list[str]] = []
    for _ in range(50 * count):
        if len(captions) == count:
            break
        size_word = _pick(rng, domain.size_words[scene["size"]])
        colour_word = _pick(rng, domain.colour_words[scene["colour"]])
        shape_word = _pick(rng, domain.shape_words[scene["shape"]])
        vp, ing = _pick(rng, domain.action_words[scene["action"]])
        mention_bg = rng.random() < domain.background_mention_prob
        bg = " " + _pick(rng, domain.background_phrases(scene["background"])) if mention_bg else ""
        caption = _pick(rng, domain.templates).format(
            np=_with_article(f"{size_word} {colour_word} {shape_word}"),
            size=size_word, colour=colour_word, shape=shape_word, vp=vp, ing=ing, bg=bg,
        )
        if caption not in captions:
            captions.append(caption)
            mentions.append(list(CAPTION_ATTRIBUTES if mention_bg else CAPTION_ATTRIBUTES[:4]))
    if len(captions) < count:  # pragma: no cover - the grammars have hundreds of paraphrases
        raise RuntimeError(f"could only make {len(captions)} distinct captions")
    return captions, mentions


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one video, a function of ``(seed, split, index)`` only."""
    return np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, seed, _SPLIT_CODE[split], index]))


@dataclass(frozen=True)
class RenderTask:
    """One video to render: where its randomness comes from and how it is encoded."""

    seed: int
    split: str
    index: int
    out_dir: str
    num_frames: int
    fps: float
    size: int
    gop: int
    captions_per_video: int


def _generate_one(task: RenderTask) -> dict[str, Any]:
    """Sample, render, encode and caption one video; returns its manifest line as a dict."""
    rendering, wording = (DOMAINS[name] for name in SPLIT_DOMAINS[task.split])
    rng = video_rng(task.seed, task.split, task.index)
    scene = _sample_scene(rng, rendering, task.size)
    captions, mentions = _make_captions(rng, wording, scene, task.captions_per_video)
    frames = _render_frames(scene, rng, rendering, task.size, task.num_frames)
    video_id = f"{task.split}_{task.index:05d}"
    relative = f"videos/{task.split}/{video_id}.mp4"
    encode_bitexact_mp4(frames, Path(task.out_dir) / relative, task.fps, task.gop)
    extra = {
        "domain": rendering.name,
        "wording_domain": wording.name,
        "shape": scene["shape"],
        "colour": scene["colour"],
        "size": scene["size"],
        "action": scene["action"],
        "background": scene["background"],
        "radius_px": scene["radius_px"],
        "distractors": scene["distractors"],
        "caption_mentions": mentions,
    }
    return ManifestEntry(video_id=video_id, video=relative, captions=captions, split=task.split,
                         extra=extra).to_json()


# --------------------------------------------------------------------------------------------
# Chance levels and ceilings.


def _attribute_key(entry: ManifestEntry, names: Sequence[str]) -> tuple[Any, ...]:
    return tuple(entry.extra[name] for name in names)


def retrieval_ceiling(entries: Sequence[ManifestEntry], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected R@K of a *perfect* model on one split of the benchmark, and of a random ranker.

    A perfect model can only tell videos apart by what a caption says. A caption that mentions
    (shape, colour, size, action) fits every video of the split with those attribute values;
    a perfect model ranks those ``m`` videos first in some order, so its text-to-video R@K is
    ``min(1, K / m)`` for that caption, averaged over captions. Video-to-text likewise: a video
    fits ``c`` captions of which its own ``o`` are correct, and R@K is the chance that one of
    them lands in the top K of ``c`` tied captions. Which attributes a caption mentions is read
    from ``extra["caption_mentions"]``.

    Returns keys ``ceiling/t2v/R@K``, ``ceiling/v2t/R@K``, ``chance/t2v/R@K``, ``chance/v2t/R@K``
    and ``unique_caption_attributes`` (distinct (shape, colour, size, action) combinations).
    """
    entries = list(entries)
    if not entries:
        return {}
    mention_sets = sorted({tuple(m) for e in entries for m in e.extra["caption_mentions"]})
    videos_by_key = {names: Counter(_attribute_key(e, names) for e in entries) for names in mention_sets}
    captions_by_key: dict[tuple[str, ...], Counter] = {names: Counter() for names in mention_sets}
    for e in entries:
        for m in e.extra["caption_mentions"]:
            captions_by_key[tuple(m)][_attribute_key(e, tuple(m))] += 1

    out: dict[str, float] = {}
    captions_per_video = [len(e.captions) for e in entries]
    for k in ks:
        t2v = [min(1.0, k / videos_by_key[tuple(m)][_attribute_key(e, tuple(m))])
               for e in entries for m in e.extra["caption_mentions"]]
        v2t = []
        for e in entries:
            consistent = sum(captions_by_key[names][_attribute_key(e, names)] for names in mention_sets)
            v2t.append(hit_probability(consistent, len(e.captions), k))
        out[f"ceiling/t2v/R@{k}"] = float(np.mean(t2v))
        out[f"ceiling/v2t/R@{k}"] = float(np.mean(v2t))
        out[f"chance/t2v/R@{k}"], out[f"chance/v2t/R@{k}"] = chance_recall(captions_per_video, k)
    out["unique_caption_attributes"] = len({_attribute_key(e, CAPTION_ATTRIBUTES[:4]) for e in entries})
    return out


# --------------------------------------------------------------------------------------------
# The generator and its CLI.


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    manifest = out_dir / MANIFEST_FILE
    if manifest.exists():
        if not overwrite:
            raise CalmcapError(f"{out_dir} already holds a benchmark ({manifest.name}); pass --overwrite to replace it")
        # Only remove what this generator writes; anything else in the folder is the user's.
        for split in SPLITS:
            shutil.rmtree(out_dir / "videos" / split, ignore_errors=True)
    for split in SPLITS:
        (out_dir / "videos" / split).mkdir(parents=True, exist_ok=True)


def render_all(render_one: Callable[[Any], dict[str, Any]], tasks: Sequence[Any], workers: int,
               progress: bool) -> list[dict[str, Any]]:
    """``[render_one(task) for task in tasks]`` in ``workers`` spawned processes, in task order.

    ``render_one`` must be a module-level function (the workers import it). ``progress`` shows
    a tqdm bar on stderr.
    """
    from tqdm import tqdm  # local: keeps `calmcap --help` fast

    bar = tqdm(total=len(tasks), desc="synth", unit="video", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    rows: list[dict[str, Any]] = []
    try:
        if workers <= 1:
            for task in tasks:
                rows.append(render_one(task))
                bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the caller may hold torch threads or open files a fork would copy.
            context = multiprocessing.get_context("spawn")
            chunksize = max(1, min(16, len(tasks) // (workers * 8)))
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                for row in pool.map(render_one, tasks, chunksize=chunksize):
                    rows.append(row)
                    bar.update(1)
    finally:
        bar.close()
    return rows


def generate_benchmark(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    num_test: int = DEFAULT_NUM_TEST,
    num_test_ood: int = DEFAULT_NUM_TEST_OOD,
    num_test_ood_visual: int = DEFAULT_NUM_TEST_OOD_VISUAL,
    num_test_ood_text: int = DEFAULT_NUM_TEST_OOD_TEXT,
    num_frames_per_video: int = DEFAULT_NUM_FRAMES,
    fps: float = DEFAULT_FPS,
    size: int = DEFAULT_SIZE,
    captions_per_video: int = CAPTIONS_PER_VIDEO,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render the embedded benchmark into ``out_dir`` and return a summary.

    Videos are ``num_frames_per_video`` frames of ``size`` x ``size`` RGB at ``fps``, H.264 in
    MP4. ``workers`` processes render and encode in parallel (0 or 1: in this process); the
    output is the same for any worker count. ``progress`` shows a tqdm bar on stderr.

    Returns ``{"out_dir", "manifest", "num_videos": {split: n}, "num_captions": {split: n},
    "chance": {split: {...}}, "ceiling": {split: {...}}, "seconds"}`` where chance and ceiling
    hold the R@K figures of :func:`retrieval_ceiling`.
    """
    seed = _check_int("seed", seed, 0)
    counts = {
        "train": _check_int("num_train", num_train, 0),
        "val": _check_int("num_val", num_val, 0),
        "test": _check_int("num_test", num_test, 0),
        "test_ood": _check_int("num_test_ood", num_test_ood, 0),
        "test_ood_visual": _check_int("num_test_ood_visual", num_test_ood_visual, 0),
        "test_ood_text": _check_int("num_test_ood_text", num_test_ood_text, 0),
    }
    if sum(counts.values()) == 0:
        raise ConfigError("every split has 0 videos; nothing to generate")
    _check_int("num_frames_per_video", num_frames_per_video, 2)
    _check_int("captions_per_video", captions_per_video, 1)
    _check_int("workers", workers, 0)
    if _check_int("size", size, 32) % 2:
        raise ConfigError(f"size must be even (yuv420p halves the chroma resolution), got {size}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")
    fps = float(fps)

    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    gop = max(1, round(fps))  # one keyframe per second bounds the cost of sparse seeking
    tasks = [
        RenderTask(seed=seed, split=split, index=i, out_dir=str(out), num_frames=num_frames_per_video,
                   fps=fps, size=size, gop=gop, captions_per_video=captions_per_video)
        for split in SPLITS for i in range(counts[split])
    ]
    logger.info("rendering %d videos into %s with %d worker(s)", len(tasks), out, workers)
    start = time.perf_counter()
    rows = render_all(_generate_one, tasks, workers, progress)
    seconds = time.perf_counter() - start

    entries = [ManifestEntry(**row) for row in rows]
    manifest = write_manifest(out / MANIFEST_FILE, entries)
    shutil.copyfile(concepts_path(), out / "concepts.txt")

    splits_info: dict[str, Any] = {}
    for split in SPLITS:
        split_entries = [e for e in entries if e.split == split]
        figures = retrieval_ceiling(split_entries)
        splits_info[split] = {
            "domain": SPLIT_DOMAIN[split],
            "wording_domain": SPLIT_DOMAINS[split][1],
            "num_videos": len(split_entries),
            "num_captions": sum(len(e.captions) for e in split_entries),
            "unique_caption_attributes": figures.pop("unique_caption_attributes", 0),
            "chance": {k.removeprefix("chance/"): round(v, 6) for k, v in figures.items() if k.startswith("chance/")},
            "ceiling": {k.removeprefix("ceiling/"): round(v, 6)
                        for k, v in figures.items() if k.startswith("ceiling/")},
        }
    # No timings or worker counts here: the file must be the same for the same seed and sizes.
    info = {
        "generator": "calmcap.data.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "video": {"size": size, "num_frames": num_frames_per_video, "fps": fps,
                  "seconds": round(num_frames_per_video / fps, 4), "codec": "h264", "pix_fmt": "yuv420p",
                  "gop": gop},
        "captions_per_video": captions_per_video,
        "splits": splits_info,
        "attributes": {"shape": list(SHAPES), "colour": list(COLOURS), "size": list(SIZES),
                       "action": list(ACTIONS),
                       "background": {name: list(d.backgrounds) for name, d in DOMAINS.items()}},
        "ceiling_definition": "expected R@K of a perfect model that can only use the attributes a caption "
                              "mentions; ties among videos with the same attributes are broken at random",
    }
    (out / "benchmark.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %d videos in %.1f s (%.1f videos/s)", len(entries), seconds, len(entries) / max(seconds, 1e-9))
    return {
        "out_dir": str(out),
        "manifest": str(manifest),
        "num_videos": {s: splits_info[s]["num_videos"] for s in SPLITS},
        "num_captions": {s: splits_info[s]["num_captions"] for s in SPLITS},
        "chance": {s: splits_info[s]["chance"] for s in SPLITS},
        "ceiling": {s: splits_info[s]["ceiling"] for s in SPLITS},
        "seconds": seconds,
    }
