"""DiDeMo (Hendricks et al., "Localizing Moments in Video with Natural Language", ICCV 2017).

Input: ``train_data.json`` / ``val_data.json`` / ``test_data.json`` from the LocalizingMoments
repository, each a list of ``{"annotation_id", "description", "video", "times", ...}`` where
``times`` holds one ``[first, last]`` pair of 5-second segment indices (0-5) per annotator;
videos were truncated to 30 s for annotation. The split of a file is read from its name
(``train``/``val``/``test``) or given as ``SPLIT=PATH``. Videos keep their release names
(``<flickr id>.mov`` or re-encoded ``.mp4``).

Protocols:

* ``paragraph`` (text-video retrieval): one entry per video whose caption is all its
  descriptions joined by spaces in file order, over the whole video (ClipBERT, Lei et al.,
  CVPR 2021, section 4.1; CLIP4Clip, Luo et al. 2021, section 4.1; Frozen in Time). CLIP4Clip
  decodes only the first 31 s; here the whole file is used, which is identical for the
  at-most-30-s clips that make up nearly all of DiDeMo.
* ``segment``: one entry per description with the annotators' moment in seconds, start =
  mean(first) * 5 and end = (mean(last) + 1) * 5, as CLIP4Clip's DiDeMo loader computes it.
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
SEGMENT_SECONDS = 5.0


def _infer_split(name: str) -> str | None:
    for split in ("train", "val", "test"):
        if re.search(rf"(^|[^a-z]){split}", name.lower()):
            return split
    return None


def _moment_seconds(times: Any, path: Path, where: str) -> tuple[float, float]:
    """Mean start and end over annotators, in seconds (CLIP4Clip's convention)."""
    if not isinstance(times, list) or not times:
        raise ManifestError(f"{path}: {where}: 'times' must be a non-empty list of [start, end] segment pairs")
    for pair in times:
        if (
            not isinstance(pair, list) or len(pair) != 2
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in pair)
        ):
            raise ManifestError(f"{path}: {where}: bad 'times' pair {pair!r} (expected [start, end] segment indices)")
    first = sum(min(pair) for pair in times) / len(times)
    last = sum(max(pair) for pair in times) / len(times)
    return first * SEGMENT_SECONDS, (last + 1) * SEGMENT_SECONDS


def convert_didemo(annotations: Sequence[str | Path], *, protocol: str = "paragraph") -> ConversionResult:
    """Convert DiDeMo under ``protocol`` (``paragraph`` or ``segment``; sources in the module docstring)."""
    if protocol not in PROTOCOLS:
        raise ManifestError(f"didemo: unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    entries: list[ManifestEntry] = []
    sources: list[str] = []
    for split, path in assign_splits(annotations, _infer_split, "DiDeMo"):
        sources.append(str(path))
        data = load_json(path)
        if not isinstance(data, list):
            raise ManifestError(f"{path}: expected a JSON list of annotations, got {type(data).__name__}")
        paragraphs: dict[str, list[str]] = {}
        empty: list[str] = []
        for i, item in enumerate(data):
            where = f"[{i}]"
            video = require(item, "video", str, path, where)
            description = clean_caption(require(item, "description", str, path, where))
            start, end = _moment_seconds(require(item, "times", list, path, where), path, where)
            if not description:
                empty.append(where)
                continue
            if protocol == "paragraph":
                paragraphs.setdefault(video, []).append(description)
                continue
            annotation_id = item.get("annotation_id", i)
            entries.append(ManifestEntry(
                video_id=f"{video}#{annotation_id}", video=video, captions=[description], split=split,
                start_seconds=start, end_seconds=end,
                extra={"parent_video": video, "times": item["times"]},
            ))
        warn_skipped("annotations with an empty description", empty, path)
        for video, descriptions in paragraphs.items():
            entries.append(ManifestEntry(
                video_id=video, video=video, captions=[" ".join(descriptions)], split=split,
                extra={"num_descriptions": len(descriptions)},
            ))
    if protocol == "paragraph":
        conventions = ["paragraph retrieval: all descriptions of a video joined in file order, whole video "
                       "(ClipBERT, CVPR 2021; CLIP4Clip; Frozen in Time)"]
    else:
        conventions = ["segment: one entry per description, start = mean(first segment) * 5 s, "
                       "end = (mean(last segment) + 1) * 5 s (CLIP4Clip's DiDeMo loader)"]
    return ConversionResult("didemo", protocol, entries, {"protocol": protocol}, conventions, sources)
