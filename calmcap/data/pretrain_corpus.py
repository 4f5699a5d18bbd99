"""The pretraining corpus of the embedded world: the analogue of CLIP's web data (issue #11).

CALM fine-tunes a *pretrained* CLIP (docs/DESIGN.md section 6). For the embedded benchmark the
analogue of CLIP's web-scale pretraining is this corpus: videos of the same rendered world,
from seeds disjoint from every benchmark split, covering more than either benchmark domain:

* **visuals**: the palette, the size radii and the background of each video are drawn
  independently from domain A's, domain B's and a third family that neither benchmark domain
  uses (``DOMAIN_C``: other shades, radii between A's and B's, five other background kinds),
  with 0-4 distractors (domain A has 0-2, domain B 1-3);
* **wording**: full sentences from the templates of both domains (plus a few of this corpus's
  own) with every synonym of both domains mixed freely, so that "scarlet" and "red" describe
  the same pixels and become learnable from co-occurrence; short alt-text-like captions naming
  one to three concepts ("a scarlet orb", "something twirling", "polka dots"); and the labels of
  the world's label set (``calmcap/anchors/synth_world.txt``, e.g. "a warm colour",
  "vertical motion"), each used only for videos it is true of.

The world's labels are the tiny model's default class anchors: labels its pretrained text
tower knows, related to but not the same as the benchmark's caption attributes, as Charades'
labels are to MSR-VTT's captions.

``calmcap synth OUT --corpus pretrain`` writes ``OUT/manifest.jsonl`` with splits ``pretrain``
and ``pretrain_val``, ``OUT/videos/<split>/*.mp4`` (rendered and encoded exactly like the
benchmark's videos) and ``OUT/corpus.json``. Every video's randomness derives from
``(seed, split, index)`` and this module's ``CORPUS_VERSION``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from calmcap.data import synth
from calmcap.data.manifest import ManifestEntry, write_manifest
from calmcap.errors import CalmcapError, ConfigError

logger = logging.getLogger(__name__)

# Bump whenever a change alters the corpus for a given seed (it enters every video's seed).
CORPUS_VERSION = 1

SPLITS = ("pretrain", "pretrain_val")
DEFAULT_NUM_VIDEOS = 20000
DEFAULT_NUM_VAL = 500
CAPTIONS_PER_VIDEO = 5
MAX_DISTRACTORS = 4
# How often a caption is a full sentence, an alt-text phrase, or a label of the world.
CAPTION_KIND_WEIGHTS = {"sentence": 0.5, "alt_text": 0.35, "label": 0.15}
BACKGROUND_MENTION_PROB = 0.3

# Visuals that neither benchmark domain uses.
DOMAIN_C_PALETTE = {
    "red": (235, 70, 55),
    "green": (60, 160, 100),
    "blue": (75, 115, 200),
    "yellow": (245, 200, 75),
    "purple": (175, 95, 195),
    "orange": (250, 165, 70),
}
DOMAIN_C_SIZE_RADIUS = {"small": 0.078, "medium": 0.138, "large": 0.2}
DOMAIN_C_BACKGROUNDS = ("grid", "speckle", "vignette", "plaid", "rings")
DOMAIN_C_TONES = ((30, 45, 35), (85, 60, 60), (55, 55, 100), (130, 120, 95), (75, 95, 95), (35, 30, 50))

_DOMAIN_C_BACKGROUND_WORDS = {
    "grid": ("on a grid background", "over a grid of lines"),
    "speckle": ("on a speckled background", "over scattered specks"),
    "vignette": ("on a vignetted background", "against a darkened frame"),
    "plaid": ("on a plaid background", "over a tartan pattern"),
    "rings": ("on a background of concentric rings", "over circular ripples"),
}
# Templates of this corpus only (besides domain A's and B's).
_TEMPLATES_C = (
    "{np} is {ing}{bg}",
    "footage of {np} {ing}{bg}",
    "this shows {np} {ing}{bg}",
    "{np}, {ing}{bg}",
)
# Alt-text names of the background kinds ("polka dots", "a checkerboard").
BACKGROUND_NAMES = {
    "plain": "a plain backdrop", "gradient": "a gradient", "stripes": "stripes", "noise": "noise",
    "checker": "a checkerboard", "radial": "a radial glow", "diagonal": "diagonal stripes", "dots": "polka dots",
    "waves": "waves", "blotches": "blotches", "grid": "a grid", "speckle": "speckles", "vignette": "a vignette",
    "plaid": "plaid", "rings": "concentric rings",
}
ALL_BACKGROUNDS = synth.DOMAIN_A.backgrounds + synth.DOMAIN_B.backgrounds + DOMAIN_C_BACKGROUNDS

DOMAIN_C = dataclasses.replace(
    synth.DOMAIN_A,
    name="C",
    palette=DOMAIN_C_PALETTE,
    size_radius=DOMAIN_C_SIZE_RADIUS,
    backgrounds=DOMAIN_C_BACKGROUNDS,
    background_tones=DOMAIN_C_TONES,
    background_words=_DOMAIN_C_BACKGROUND_WORDS,
    templates=_TEMPLATES_C,
    distractor_counts=tuple(range(MAX_DISTRACTORS + 1)),
    distractor_weights=(0.2,) * (MAX_DISTRACTORS + 1),
)
VISUAL_FAMILIES = {"A": synth.DOMAIN_A, "B": synth.DOMAIN_B, "C": DOMAIN_C}


def _union(*tables: dict[str, tuple]) -> dict[str, tuple]:
    """Per key, the options of every table in order, without repeats."""
    return {key: tuple(dict.fromkeys(option for table in tables for option in table.get(key, ())))
            for key in dict.fromkeys(k for table in tables for k in table)}


_A, _B = synth.DOMAIN_A, synth.DOMAIN_B
SHAPE_WORDS = _union(_A.shape_words, _B.shape_words)
COLOUR_WORDS = _union(_A.colour_words, _B.colour_words)
SIZE_WORDS = _union(_A.size_words, _B.size_words)
ACTION_WORDS = _union(_A.action_words, _B.action_words)
BACKGROUND_WORDS = _union(_A.background_words, _B.background_words, _DOMAIN_C_BACKGROUND_WORDS)
TEMPLATES = _A.templates + _B.templates + _TEMPLATES_C


# --------------------------------------------------------------------------------------------
# The world's labels: each a phrase and the scenes it is true of.

def _main(attribute: str, values: set[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda scene: scene[attribute] in values


def _radius(predicate: Callable[[float], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda scene: predicate(scene["radius_fraction"])


def _background(kinds: set[str]) -> Callable[[dict[str, Any]], bool]:
    return lambda scene: scene["background"] in kinds


def _shares(attribute: str) -> Callable[[dict[str, Any]], bool]:
    return lambda scene: any(d[attribute] == scene[attribute] for d in scene["distractors"])


_MOVES = {"move_left", "move_right", "move_up", "move_down"}
WORLD_LABELS: dict[str, Callable[[dict[str, Any]], bool]] = {
    # shape families
    "a round shape": _main("shape", {"circle", "ring"}),
    "a pointed shape": _main("shape", {"star", "triangle", "diamond"}),
    "a shape with straight edges": _main("shape", {"square", "triangle", "diamond", "hexagon", "cross"}),
    "a hollow shape": _main("shape", {"ring"}),
    "a shape with four corners": _main("shape", {"square", "diamond"}),
    "a shape with many corners": _main("shape", {"star", "hexagon", "cross"}),
    # colour families
    "a warm colour": _main("colour", {"red", "orange", "yellow"}),
    "a cool colour": _main("colour", {"green", "blue", "purple"}),
    "the colour of fire": _main("colour", {"red", "orange"}),
    "the colour of the sea": _main("colour", {"blue", "green"}),
    "the colour of sunshine": _main("colour", {"yellow", "orange"}),
    "the colour of leaves": _main("colour", {"green"}),
    "the colour of grapes": _main("colour", {"purple"}),
    # sizes, by the radius actually drawn (the families put the size words at other radii)
    "a tiny object": _radius(lambda r: r < 0.095),
    "an object of middling size": _radius(lambda r: 0.12 <= r <= 0.16),
    "a big object": _radius(lambda r: r > 0.18),
    # motion
    "horizontal motion": _main("action", {"move_left", "move_right", "shake"}),
    "vertical motion": _main("action", {"move_up", "move_down", "bounce"}),
    "motion along a curve": _main("action", {"orbit"}),
    "a change in size": _main("action", {"grow", "shrink"}),
    "spinning motion": _main("action", {"rotate"}),
    "no motion at all": _main("action", {"stay"}),
    "an object that keeps its place": _main("action", {"stay", "rotate", "blink", "grow", "shrink"}),
    "an object crossing the frame": _main("action", _MOVES),
    "repetitive motion": _main("action", {"bounce", "shake", "blink", "orbit"}),
    "something flickering": _main("action", {"blink"}),
    "something getting bigger": _main("action", {"grow"}),
    "something getting smaller": _main("action", {"shrink"}),
    "leftward motion": _main("action", {"move_left"}),
    "rightward motion": _main("action", {"move_right"}),
    "upward motion": _main("action", {"move_up"}),
    "downward motion": _main("action", {"move_down"}),
    # the backdrop
    **{name: _background({kind}) for kind, name in BACKGROUND_NAMES.items()},
    "a patterned backdrop": _background({"stripes", "checker", "diagonal", "dots", "waves", "grid", "plaid", "rings"}),
    "a smooth backdrop": _background({"plain", "gradient", "radial", "vignette"}),
    # the scene as a whole
    "a single object": lambda scene: not scene["distractors"],
    "faded shapes in the background": lambda scene: bool(scene["distractors"]),
    "a crowded scene": lambda scene: len(scene["distractors"]) >= 3,
    "two objects of the same colour": _shares("colour"),
    "two objects of the same shape": _shares("shape"),
    "two objects moving the same way": _shares("action"),
}


def world_labels_path() -> Path:
    """The shipped label file of the world's labels (``calmcap/anchors/synth_world.txt``)."""
    return Path(__file__).resolve().parent.parent / "anchors" / "synth_world.txt"


def true_labels(scene: dict[str, Any]) -> list[str]:
    """The world's labels that hold for ``scene`` (a scene from :func:`sample_scene`)."""
    return [label for label, holds in WORLD_LABELS.items() if holds(scene)]


# --------------------------------------------------------------------------------------------
# Scenes and captions.

def sample_scene(rng: np.random.Generator, size: int) -> tuple[dict[str, Any], synth.DomainSpec]:
    """One scene with independently mixed visual families, and the spec that renders it."""
    palette_family = synth._pick(rng, tuple(VISUAL_FAMILIES))
    size_family = synth._pick(rng, tuple(VISUAL_FAMILIES))
    background = synth._pick(rng, ALL_BACKGROUNDS)
    tone_family = next(name for name, spec in VISUAL_FAMILIES.items() if background in spec.backgrounds)
    num_distractors = int(rng.integers(0, MAX_DISTRACTORS + 1))
    spec = dataclasses.replace(
        DOMAIN_C,
        palette=VISUAL_FAMILIES[palette_family].palette,
        size_radius=VISUAL_FAMILIES[size_family].size_radius,
        backgrounds=(background,),
        background_tones=VISUAL_FAMILIES[tone_family].background_tones,
        distractor_counts=(num_distractors,),
        distractor_weights=(1.0,),
    )
    scene = synth._sample_scene(rng, spec, size)
    scene.update(palette_family=palette_family, size_family=size_family, background_family=tone_family,
                 radius_fraction=round(scene["radius_px"] / size, 5))
    return scene, spec


def _sentence(rng: np.random.Generator, scene: dict[str, Any]) -> tuple[str, list[str]]:
    size_word = synth._pick(rng, SIZE_WORDS[scene["size"]])
    colour_word = synth._pick(rng, COLOUR_WORDS[scene["colour"]])
    shape_word = synth._pick(rng, SHAPE_WORDS[scene["shape"]])
    vp, ing = synth._pick(rng, ACTION_WORDS[scene["action"]])
    mention_bg = rng.random() < BACKGROUND_MENTION_PROB
    bg = " " + synth._pick(rng, BACKGROUND_WORDS[scene["background"]]) if mention_bg else ""
    caption = synth._pick(rng, TEMPLATES).format(
        np=synth._with_article(f"{size_word} {colour_word} {shape_word}"),
        size=size_word, colour=colour_word, shape=shape_word, vp=vp, ing=ing, bg=bg,
    )
    mentions = ["shape", "colour", "size", "action"] + (["background"] if mention_bg else [])
    return caption, mentions


def _alt_text(rng: np.random.Generator, scene: dict[str, Any]) -> tuple[str, list[str]]:
    """A short phrase naming one to three concepts: "a scarlet orb", "something twirling"."""
    while True:
        chosen = [name for name, p in (("size", 0.35), ("colour", 0.55), ("shape", 0.55), ("action", 0.35),
                                       ("background", 0.2)) if rng.random() < p]
        if 1 <= len(chosen) <= 3:
            break
    words = []
    if "size" in chosen:
        words.append(synth._pick(rng, SIZE_WORDS[scene["size"]]))
    if "colour" in chosen:
        words.append(synth._pick(rng, COLOUR_WORDS[scene["colour"]]))
    if "shape" in chosen:
        words.append(synth._pick(rng, SHAPE_WORDS[scene["shape"]]))
    elif words:
        words.append(synth._pick(rng, ("object", "shape", "thing")))
    if words:
        phrase = " ".join(words)
        if rng.random() < 0.7:
            phrase = synth._with_article(phrase)
    elif "action" in chosen:
        phrase = "something"
    else:
        phrase = ""
    if "action" in chosen:
        phrase += " " + synth._pick(rng, ACTION_WORDS[scene["action"]])[1]
    if "background" in chosen:
        if phrase:
            phrase += " " + synth._pick(rng, BACKGROUND_WORDS[scene["background"]])
        else:
            phrase = BACKGROUND_NAMES[scene["background"]]
    return phrase.strip(), chosen


def make_captions(
    rng: np.random.Generator, scene: dict[str, Any], count: int
) -> tuple[list[str], list[str], list[list[str]]]:
    """``count`` distinct captions of mixed kinds: (captions, kinds, mentioned attributes)."""
    kinds = tuple(CAPTION_KIND_WEIGHTS)
    weights = np.asarray([CAPTION_KIND_WEIGHTS[k] for k in kinds])
    labels = true_labels(scene)
    captions: list[str] = []
    caption_kinds: list[str] = []
    mentions: list[list[str]] = []
    for _ in range(50 * count):
        if len(captions) == count:
            break
        kind = kinds[int(rng.choice(len(kinds), p=weights))]
        if kind == "sentence":
            caption, mentioned = _sentence(rng, scene)
        elif kind == "alt_text":
            caption, mentioned = _alt_text(rng, scene)
        else:
            if not labels:  # pragma: no cover - every scene has a shape and a colour family label
                continue
            caption, mentioned = synth._pick(rng, labels), ["label"]
        if caption not in captions:
            captions.append(caption)
            caption_kinds.append(kind)
            mentions.append(mentioned)
    if len(captions) < count:  # pragma: no cover - the grammar has thousands of phrasings
        raise RuntimeError(f"could only make {len(captions)} distinct captions")
    return captions, caption_kinds, mentions


# --------------------------------------------------------------------------------------------
# Rendering.

# The benchmark generator's version when this corpus was made: a constant here, so that a later
# change of the benchmark (and its version) leaves the corpus, and the weights made from it, alone.
_BENCHMARK_VERSION_AT_CREATION = 1


def corpus_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one corpus video: disjoint from every benchmark video's (its split
    codes are its own, and its entropy has one more word than a benchmark video's)."""
    return np.random.default_rng(np.random.SeedSequence(
        [_BENCHMARK_VERSION_AT_CREATION, seed, synth._SPLIT_CODE[split], index, CORPUS_VERSION]))


def _render_one(task: synth.RenderTask) -> dict[str, Any]:
    """Sample, render, encode and caption one corpus video; returns its manifest line."""
    rng = corpus_rng(task.seed, task.split, task.index)
    scene, spec = sample_scene(rng, task.size)
    captions, kinds, mentions = make_captions(rng, scene, task.captions_per_video)
    frames = synth._render_frames(scene, rng, spec, task.size, task.num_frames)
    video_id = f"{task.split}_{task.index:06d}"
    relative = f"videos/{task.split}/{video_id}.mp4"
    synth.encode_bitexact_mp4(frames, Path(task.out_dir) / relative, task.fps, task.gop)
    extra = {key: scene[key] for key in ("shape", "colour", "size", "action", "background", "radius_px",
                                         "radius_fraction", "distractors", "palette_family", "size_family",
                                         "background_family")}
    extra.update(caption_kinds=kinds, caption_mentions=mentions, labels=true_labels(scene))
    return ManifestEntry(video_id=video_id, video=relative, captions=captions, split=task.split,
                         extra=extra).to_json()


def generate_pretrain_corpus(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_videos: int = DEFAULT_NUM_VIDEOS,
    num_val: int = DEFAULT_NUM_VAL,
    num_frames_per_video: int = synth.DEFAULT_NUM_FRAMES,
    fps: float = synth.DEFAULT_FPS,
    size: int = synth.DEFAULT_SIZE,
    captions_per_video: int = CAPTIONS_PER_VIDEO,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render the pretraining corpus into ``out_dir`` and return a summary.

    Videos are encoded like the benchmark's (``num_frames_per_video`` frames of ``size`` px at
    ``fps``, H.264). Returns ``{"out_dir", "manifest", "num_videos": {split: n},
    "num_captions": {split: n}, "caption_kinds": {kind: n}, "seconds"}``.
    """
    seed = synth._check_int("seed", seed, 0)
    counts = {"pretrain": synth._check_int("num_videos", num_videos, 1),
              "pretrain_val": synth._check_int("num_val", num_val, 0)}
    synth._check_int("num_frames_per_video", num_frames_per_video, 2)
    synth._check_int("captions_per_video", captions_per_video, 1)
    synth._check_int("workers", workers, 0)
    if synth._check_int("size", size, 32) % 2:
        raise ConfigError(f"size must be even (yuv420p halves the chroma resolution), got {size}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ConfigError(f"fps must be a positive number, got {fps!r}")

    out = Path(out_dir)
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        if not overwrite:
            raise CalmcapError(f"{out} already holds a corpus ({manifest.name}); pass --overwrite to replace it")
        for split in SPLITS:
            shutil.rmtree(out / "videos" / split, ignore_errors=True)
    for split in SPLITS:
        (out / "videos" / split).mkdir(parents=True, exist_ok=True)
    gop = max(1, round(float(fps)))
    tasks = [synth.RenderTask(seed=seed, split=split, index=i, out_dir=str(out), num_frames=num_frames_per_video,
                         fps=float(fps), size=size, gop=gop, captions_per_video=captions_per_video)
             for split in SPLITS for i in range(counts[split])]
    logger.info("rendering a pretraining corpus of %d videos into %s with %d worker(s)", len(tasks), out, workers)
    start = time.perf_counter()
    rows = synth.render_all(_render_one, tasks, workers, progress)
    seconds = time.perf_counter() - start
    entries = [ManifestEntry(**row) for row in rows]
    write_manifest(manifest, entries)
    shutil.copyfile(world_labels_path(), out / "labels.txt")

    kinds = Counter(kind for e in entries for kind in e.extra["caption_kinds"])
    info = {
        "generator": "calmcap.data.pretrain_corpus",
        "corpus_version": CORPUS_VERSION,
        "seed": seed,
        "video": {"size": size, "num_frames": num_frames_per_video, "fps": float(fps), "codec": "h264",
                  "pix_fmt": "yuv420p", "gop": gop},
        "captions_per_video": captions_per_video,
        "splits": {split: {"num_videos": counts[split],
                           "num_captions": sum(len(e.captions) for e in entries if e.split == split)}
                   for split in SPLITS},
        "caption_kinds": dict(sorted(kinds.items())),
        "visual_families": {"palette": sorted(VISUAL_FAMILIES), "size": sorted(VISUAL_FAMILIES),
                            "backgrounds": list(ALL_BACKGROUNDS)},
        "labels": list(WORLD_LABELS),
    }
    (out / "corpus.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %d corpus videos in %.1f s", len(entries), seconds)
    return {
        "out_dir": str(out),
        "manifest": str(manifest),
        "num_videos": dict(counts),
        "num_captions": {split: info["splits"][split]["num_captions"] for split in SPLITS},
        "caption_kinds": info["caption_kinds"],
        "seconds": seconds,
    }
