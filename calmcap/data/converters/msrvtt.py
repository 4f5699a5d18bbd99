"""MSR-VTT (Xu et al., CVPR 2016) from its official JSON annotations.

Input: ``MSRVTT_data.json`` (CLIP4Clip's ``msrvtt_data.zip``) or the challenge's
``train_val_videodatainfo.json`` + ``test_videodatainfo.json``; all share the layout
``{"videos": [{"video_id", "split", "category", "url", "start time", "end time", ...}],
"sentences": [{"sen_id", "video_id", "caption"}]}``. Several files are merged.
Videos are ``videoNNNN.mp4``.

Protocols:

* ``captioning``: the official split, ``train`` 6,513 / ``validate`` 497 / ``test`` 2,990, all
  (about 20) references per video (Xu et al. 2016, section 4).
* ``retrieval-9k``: train on the 9,000 videos that are not in the 1k-A test ("Training-9K",
  Gabeur et al., ECCV 2020 / CLIP4Clip's ``MSRVTT_train.9k.csv``), test on 1k-A.
* ``retrieval-7k``: train on the official train + validate videos, 7,010 ("Training-7K", Miech
  et al., HowTo100M, ICCV 2019 / CLIP4Clip's ``MSRVTT_train.7k.csv``), test on 1k-A.

The 1k-A test (Yu et al., JSFusion, ECCV 2018) is ``MSRVTT_JSFUSION_test.csv`` with columns
``key,vid_key,video_id,sentence``: 1,000 videos, one query sentence each; it cannot be derived
from the JSON, so retrieval protocols require it. A train CSV (one column ``video_id``), when
given, is used verbatim; otherwise the train list is derived as described above and the
sidecar records ``train_list: derived``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calmcap.data.converters.base import (
    ConversionResult,
    clean_captions,
    load_json,
    read_csv_rows,
    require,
    warn_skipped,
)
from calmcap.data.manifest import ManifestEntry
from calmcap.errors import ManifestError

logger = logging.getLogger(__name__)

PROTOCOLS = ("retrieval-9k", "retrieval-7k", "captioning")
TEST_CAPTIONS = ("jsfusion", "all")
# The official split names in the JSON, mapped to manifest split names.
_OFFICIAL_SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _load_annotations(paths: Sequence[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Merge the ``videos`` and ``sentences`` of every file; a video listed twice keeps its first record.

    Each video record gains ``_source`` (its file) so later errors can name it.
    """
    videos: dict[str, dict[str, Any]] = {}
    captions: dict[str, list[str]] = {}
    seen_sentences: set[tuple[str, Any]] = set()
    for path in paths:
        data = load_json(path)
        for i, video in enumerate(require(data, "videos", list, path, "top level")):
            video_id = require(video, "video_id", str, path, f"videos[{i}]")
            require(video, "split", str, path, f"videos[{i}]")
            videos.setdefault(video_id, {**video, "_source": path})
        for i, sentence in enumerate(data.get("sentences", []) if isinstance(data, dict) else []):
            video_id = require(sentence, "video_id", str, path, f"sentences[{i}]")
            caption = require(sentence, "caption", str, path, f"sentences[{i}]")
            # The same sentence in two files (MSRVTT_data.json + a challenge file) counts once.
            key = (video_id, sentence.get("sen_id", (path, i)))
            if key in seen_sentences:
                continue
            seen_sentences.add(key)
            captions.setdefault(video_id, []).append(caption)
    return videos, captions


def _read_id_list(path: Path) -> list[str]:
    return list(dict.fromkeys(row["video_id"].strip() for _, row in read_csv_rows(path, ["video_id"])))


def _read_jsfusion(path: Path) -> dict[str, tuple[str, str]]:
    """video_id -> (key, sentence) from ``MSRVTT_JSFUSION_test.csv``."""
    test: dict[str, tuple[str, str]] = {}
    for line, row in read_csv_rows(path, ["key", "vid_key", "video_id", "sentence"]):
        video_id = row["video_id"].strip()
        if video_id in test:
            raise ManifestError(f"{path}:{line}: video {video_id!r} listed twice (1k-A has one sentence per video)")
        test[video_id] = (row["key"].strip(), row["sentence"])
    return test


def _entry(video_id: str, captions: list[str], split: str, video: dict[str, Any] | None) -> ManifestEntry:
    extra = {}
    if video is not None and isinstance(video.get("category"), int):
        extra["category"] = video["category"]
    return ManifestEntry(video_id=video_id, video=f"{video_id}.mp4", captions=captions, split=split, extra=extra)


def convert_msrvtt(
    annotations: Sequence[str | Path],
    *,
    protocol: str = "retrieval-9k",
    train_csv: str | Path | None = None,
    test_csv: str | Path | None = None,
    test_captions: str = "jsfusion",
) -> ConversionResult:
    """Convert MSR-VTT annotations under ``protocol`` (see the module docstring for sources).

    ``test_captions`` (retrieval only): ``jsfusion`` keeps the single 1k-A query per test video
    (CLIP4Clip, X-Pool); ``all`` keeps all references, for multi-caption video-to-text evaluation.
    """
    if protocol not in PROTOCOLS:
        raise ManifestError(f"msrvtt: unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")
    if test_captions not in TEST_CAPTIONS:
        raise ManifestError(f"msrvtt: unknown test_captions {test_captions!r} (choose from {', '.join(TEST_CAPTIONS)})")
    paths = [Path(p) for p in annotations]
    if not paths:
        raise ManifestError("msrvtt: no annotation file given (expected MSRVTT_data.json or *_videodatainfo.json)")
    videos, captions = _load_annotations(paths)
    options: dict[str, Any] = {"protocol": protocol}
    sources = [str(p) for p in paths]
    entries: list[ManifestEntry] = []
    no_captions: list[str] = []

    if protocol == "captioning":
        conventions = ["official split train 6,513 / validate 497 / test 2,990, all references (Xu et al., CVPR 2016)"]
        for video_id, video in videos.items():
            split = _OFFICIAL_SPLITS.get(video["split"])
            if split is None:
                raise ManifestError(
                    f"{video['_source']}: video {video_id!r}: unknown split {video['split']!r} "
                    "(expected train, validate or test)"
                )
            refs = clean_captions(captions.get(video_id, []))
            if not refs:
                no_captions.append(video_id)
                continue
            entries.append(_entry(video_id, refs, split, video))
        warn_skipped("videos without captions", no_captions, sources[0])
        return ConversionResult("msrvtt", protocol, entries, options, conventions, sources)

    if test_csv is None:
        raise ManifestError(
            f"msrvtt: protocol {protocol!r} needs the 1k-A test list; pass --test-csv MSRVTT_JSFUSION_test.csv"
        )
    test_path = Path(test_csv)
    test = _read_jsfusion(test_path)
    sources.append(str(test_path))
    options["test_captions"] = test_captions
    conventions = [
        "test: 1k-A, 1,000 videos from MSRVTT_JSFUSION_test.csv (Yu et al., JSFusion, ECCV 2018; CLIP4Clip)",
        "test captions: " + ("the one 1k-A sentence per video (CLIP4Clip, X-Pool)" if test_captions == "jsfusion"
                             else "all references per video (multi-caption video-to-text)"),
    ]
    if train_csv is not None:
        train_path = Path(train_csv)
        train_ids = _read_id_list(train_path)
        sources.append(str(train_path))
        options["train_list"] = str(train_path)
        conventions.append(f"train: video ids of {train_path.name} (CLIP4Clip's MSRVTT_train.{protocol[-2:]}.csv)")
        overlap = [v for v in train_ids if v in test]
        if overlap:
            raise ManifestError(
                f"{train_path}: {len(overlap)} train videos are also 1k-A test videos (e.g. {overlap[0]}); "
                "is this the right train list?"
            )
        unknown = [v for v in train_ids if v not in videos]
        warn_skipped("train videos absent from the annotation JSON", unknown, train_path)
        train_ids = [v for v in train_ids if v in videos]
    else:
        options["train_list"] = "derived"
        if protocol == "retrieval-9k":
            train_ids = [v for v in videos if v not in test]
            conventions.append(
                "train: every annotated video not in 1k-A, 9,000 (Gabeur et al., ECCV 2020; CLIP4Clip 9k)"
            )
        else:
            official = [v for v, video in videos.items() if video["split"] in ("train", "validate", "val")]
            train_ids = [v for v in official if v not in test]
            if len(train_ids) != len(official):
                logger.warning("msrvtt: dropped %d official train/val videos that are in 1k-A",
                               len(official) - len(train_ids))
            conventions.append(
                "train: official train + validate, 7,010 (Miech et al., HowTo100M, ICCV 2019; CLIP4Clip 7k)"
            )

    for video_id in train_ids:
        refs = clean_captions(captions.get(video_id, []))
        if not refs:
            no_captions.append(video_id)
            continue
        entries.append(_entry(video_id, refs, "train", videos.get(video_id)))
    for video_id, (key, sentence) in test.items():
        if test_captions == "all":
            refs = clean_captions(captions.get(video_id, []))
            if not refs:
                raise ManifestError(
                    f"{test_path}: test video {video_id!r} has no captions in the annotation JSON "
                    "(needed for test_captions='all')"
                )
        else:
            refs = clean_captions([sentence])
            if not refs:
                raise ManifestError(f"{test_path}: test video {video_id!r} ({key}) has an empty sentence")
        entry = _entry(video_id, refs, "test", videos.get(video_id))
        entry.extra["jsfusion_key"] = key
        entries.append(entry)
    warn_skipped("videos without captions", no_captions, sources[0])
    return ConversionResult("msrvtt", protocol, entries, options, conventions, sources)
