"""LSMDC (Rohrbach et al., "Movie Description", IJCV 2017) from the LSMDC 2016 challenge files.

Input: tab-separated files without a header, one sentence per line:
``<clip id>\\t<start aligned>\\t<end aligned>\\t<start extracted>\\t<end extracted>\\t<sentence>``
(``LSMDC16_annos_training.csv``, ``LSMDC16_annos_val.csv``, and for retrieval the 1,000-clip
public test ``LSMDC16_challenge_1000_publictect.csv``). A clip id may appear on several lines;
its sentences are grouped. Clip files are ``<movie>/<clip id>.avi`` and are already cut, so the
entries carry no start/end (the times are positions in the movie; they are kept in ``extra``).

Split from the file name: ``training`` -> train, ``val`` -> val, ``publictect`` / ``1000`` or
``test`` -> test; or ``SPLIT=PATH``. Retrieval tests on the 1,000 public-test clips, one
sentence each (Yu et al., JSFusion, ECCV 2018; CLIP4Clip's LSMDC loader; the LSMDC 2016 movie
retrieval challenge).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from calmcap.data.converters.base import (
    ConversionResult,
    assign_splits,
    clean_caption,
    read_lines,
    warn_skipped,
)
from calmcap.data.manifest import ManifestEntry
from calmcap.errors import ManifestError

NUM_FIELDS = 6


def _infer_split(name: str) -> str | None:
    lowered = name.lower()
    if "publictect" in lowered or "publictest" in lowered or "1000" in lowered or "test" in lowered:
        return "test"
    if "train" in lowered:
        return "train"
    if "val" in lowered:
        return "val"
    return None


def _movie_of(clip_id: str) -> str:
    """``0001_American_Beauty_00.00.51.926-00.00.54.129`` -> ``0001_American_Beauty``."""
    movie, sep, _ = clip_id.rpartition("_")
    return movie if sep else clip_id


def convert_lsmdc(annotations: Sequence[str | Path]) -> ConversionResult:
    """Convert LSMDC 2016 annotation files, one split per file (see the module docstring)."""
    entries: list[ManifestEntry] = []
    sources: list[str] = []
    for split, path in assign_splits(annotations, _infer_split, "LSMDC"):
        sources.append(str(path))
        clips: dict[str, ManifestEntry] = {}
        empty: list[str] = []
        for line, text in read_lines(path):
            if not text.strip():
                continue
            # The sentence is the last field; a stray tab inside it stays part of the sentence.
            fields = text.split("\t", NUM_FIELDS - 1)
            if len(fields) != NUM_FIELDS:
                raise ManifestError(
                    f"{path}:{line}: expected {NUM_FIELDS} tab-separated fields (clip id, 4 times, sentence), "
                    f"got {len(fields)}"
                )
            clip_id = fields[0].strip()
            if not clip_id:
                raise ManifestError(f"{path}:{line}: empty clip id")
            sentence = clean_caption(fields[5])
            if not sentence:
                empty.append(f"line {line}")
                continue
            if clip_id not in clips:
                clips[clip_id] = ManifestEntry(
                    video_id=clip_id, video=f"{_movie_of(clip_id)}/{clip_id}.avi", captions=[], split=split,
                    extra={"movie": _movie_of(clip_id), "start_aligned": fields[1], "end_aligned": fields[2]},
                )
            clips[clip_id].captions.append(sentence)
        warn_skipped("lines with an empty sentence", empty, path)
        entries.extend(clips.values())
    conventions = [
        "clips grouped by clip id, all sentences kept; test = the 1,000-clip public test with one sentence each "
        "(LSMDC 2016 retrieval challenge; JSFusion, ECCV 2018; CLIP4Clip)",
    ]
    return ConversionResult("lsmdc", "retrieval", entries, {}, conventions, sources)
