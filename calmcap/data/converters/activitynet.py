"""ActivityNet Captions (Krishna et al., "Dense-Captioning Events in Videos", ICCV 2017).

Input: ``train.json``, ``val_1.json``, ``val_2.json``, each
``{"v_<youtube id>": {"duration": s, "timestamps": [[start, end], ...], "sentences": [...]}}``
with times in seconds. Videos are ``v_<id>.mp4`` (other containers and CLIP4Clip's copies
without the ``v_`` prefix are found too).

Splits: ``train.json`` -> train; the ``test_file`` (default ``val_1``) -> test; the other
validation file -> val. Paragraph retrieval tests on val_1 because the test annotations were
never released (Zhang et al., HSE, ECCV 2018; ClipBERT; CLIP4Clip's ActivityNet loader).
``SPLIT=PATH`` overrides.

Protocols:

* ``paragraph``: one entry per video, its sentences joined by spaces in file order, over the
  whole video (HSE; ClipBERT, section 4.1; CLIP4Clip).
* ``segment`` (dense captioning / moment-level use): one entry per sentence with its
  timestamps. Reversed pairs are swapped (Gabeur et al., MMT, notes two such videos) and
  times are clamped to ``[0, duration]``; a segment left empty is dropped with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calmcap.data.converters.base import (
    ConversionResult,
    assign_splits,
    clean_caption,
    load_json,
    require,
    warn_skipped,
)
from calmcap.data.manifest import ManifestEntry
from calmcap.errors import ManifestError

PROTOCOLS = ("paragraph", "segment")
TEST_FILES = ("val_1", "val_2")


def _split_inferrer(test_file: str):
    def infer(name: str) -> str | None:
        lowered = name.lower()
        for val_file in TEST_FILES:
            if re.search(rf"{val_file}(\D|$)", lowered):
                return "test" if val_file == test_file else "val"
        if "train" in lowered:
            return "train"
        return None

    return infer


def _video_aliases(name: str) -> list[str]:
    return [name[2:]] if name.startswith("v_") else []


def _segment(pair: Any, duration: float | None, path: Path, where: str) -> tuple[float, float] | None:
    """A clean (start, end) in seconds, or None if nothing of it is left inside the video."""
    if (
        not isinstance(pair, list) or len(pair) != 2
        or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in pair)
    ):
        raise ManifestError(f"{path}: {where}: bad timestamp {pair!r} (expected [start, end] in seconds)")
    start, end = sorted(float(t) for t in pair)
    start = max(start, 0.0)
    if duration is not None:
        end = min(end, duration)
    return (start, end) if end > start else None


def convert_activitynet(
    annotations: Sequence[str | Path], *, protocol: str = "paragraph", test_file: str = "val_1"
) -> ConversionResult:
    """Convert ActivityNet Captions under ``protocol`` (sources in the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ManifestError(f"activitynet: unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if test_file not in TEST_FILES:
        raise ManifestError(f"activitynet: test_file must be one of {', '.join(TEST_FILES)}, got {test_file!r}")
    entries: list[ManifestEntry] = []
    sources: list[str] = []
    for split, path in assign_splits(annotations, _split_inferrer(test_file), "ActivityNet Captions"):
        sources.append(str(path))
        data = load_json(path)
        if not isinstance(data, dict):
            raise ManifestError(f"{path}: expected a JSON object keyed by video id, got {type(data).__name__}")
        dropped: list[str] = []
        empty: list[str] = []
        for video_id, record in data.items():
            sentences = require(record, "sentences", list, path, video_id)
            duration = record.get("duration")
            if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))):
                raise ManifestError(f"{path}: {video_id}: 'duration' must be a number, got {duration!r}")
            extra = {"duration": float(duration)} if duration is not None else {}
            video = f"{video_id}.mp4"
            if protocol == "paragraph":
                texts = [clean_caption(s) for s in sentences if isinstance(s, str)]
                if len(texts) != len(sentences):
                    raise ManifestError(f"{path}: {video_id}: 'sentences' must be a list of strings")
                paragraph = " ".join(t for t in texts if t)
                if not paragraph:
                    empty.append(video_id)
                    continue
                entries.append(ManifestEntry(video_id, video, [paragraph], split, extra=extra))
                continue
            timestamps = require(record, "timestamps", list, path, video_id)
            if len(timestamps) != len(sentences):
                raise ManifestError(
                    f"{path}: {video_id}: {len(timestamps)} timestamps for {len(sentences)} sentences"
                )
            for k, (pair, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
                where = f"{video_id}: sentences[{k}]"
                if not isinstance(sentence, str):
                    raise ManifestError(f"{path}: {where}: must be a string, got {type(sentence).__name__}")
                bounds = _segment(pair, extra.get("duration"), path, where)
                text = clean_caption(sentence)
                if bounds is None or not text:
                    dropped.append(f"{video_id}#{k}")
                    continue
                entries.append(ManifestEntry(
                    f"{video_id}#{k}", video, [text], split, start_seconds=bounds[0], end_seconds=bounds[1],
                    extra={**extra, "parent_video": video_id},
                ))
        warn_skipped("videos without sentences", empty, path)
        warn_skipped("segments empty after clamping to the video, or without text", dropped, path)
    if protocol == "paragraph":
        conventions = [f"paragraph retrieval: sentences joined in file order, whole video; test = {test_file} "
                       "(HSE, ECCV 2018; ClipBERT; CLIP4Clip)"]
    else:
        conventions = [f"segment: one entry per sentence, reversed timestamps swapped, clamped to [0, duration]; "
                       f"test = {test_file} (Krishna et al., ICCV 2017; MMT preprocessing)"]
    return ConversionResult(
        "activitynet", protocol, entries, {"protocol": protocol, "test_file": test_file}, conventions, sources,
        video_aliases=_video_aliases,
    )
