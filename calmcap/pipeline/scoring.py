"""Scoring any system's captions against references: :func:`score_captions` and the file formats it reads."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

from calmcap.errors import CalmcapError
from calmcap.pipeline.inputs import resolve_manifest

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class ScoreResult:
    """Caption metrics of a prediction file against references."""

    metrics: dict[str, float]
    num_videos: int
    num_references: int
    protocol: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _load_json(path: PathLike, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalmcapError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise CalmcapError(f"{path}: is a directory, expected a {what} JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CalmcapError(f"{path}: not valid JSON ({error})") from None


def load_predictions(source: PathLike | Sequence[dict[str, Any]] | dict[str, str]) -> dict[str, str]:
    """Predictions ``{id: caption}`` from COCO-style ``[{"image_id", "caption"}]`` or ``{id: caption}``.

    ``source`` is a JSON file or the loaded object. Ids become strings; duplicates are errors.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<predictions>"
    obj = _load_json(source, "predictions") if isinstance(source, (str, os.PathLike)) else source
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(value, str):
                raise CalmcapError(f"{name}: prediction for id {key!r} must be a caption string, "
                                   f"got {type(value).__name__}")
            out[str(key)] = value
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
                raise CalmcapError(f"{name}: item {i} must be {{\"image_id\": ..., \"caption\": \"...\"}}, "
                                   f"got {str(item)[:80]}")
            key = str(item["image_id"])
            if key in out:
                raise CalmcapError(f"{name}: image_id {key!r} has more than one prediction (item {i})")
            out[key] = item["caption"]
    else:
        raise CalmcapError(f"{name}: expected a COCO-style list of {{image_id, caption}} or an {{id: caption}} object")
    if not out:
        raise CalmcapError(f"{name}: no predictions")
    return out


def load_references(
    source: PathLike | dict[str, Any], split: str | Sequence[str] | None = None
) -> dict[str, list[str]]:
    """References ``{id: [caption, ...]}``.

    Accepted: a calmcap manifest (``.jsonl`` file or a directory holding ``manifest.jsonl``;
    ``split`` picks splits), COCO-style annotations ``{"annotations": [{"image_id",
    "caption"}]}``, a list of such items, or ``{id: [caption, ...]}``.
    """
    if isinstance(source, (str, os.PathLike)) and (Path(source).is_dir() or str(source).endswith(".jsonl")):
        from calmcap.data.manifest import read_manifest

        entries = read_manifest(resolve_manifest(source), split)
        return {e.video_id: list(e.captions) for e in entries}
    if split:
        raise CalmcapError("--split applies to manifest references (.jsonl or a directory); "
                           "these are COCO-style annotations")
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<references>"
    obj = _load_json(source, "references") if isinstance(source, (str, os.PathLike)) else source
    items = obj.get("annotations") if isinstance(obj, dict) and "annotations" in obj else obj
    out: dict[str, list[str]] = {}
    if isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
                raise CalmcapError(f"{name}: annotation {i} must be {{\"image_id\": ..., \"caption\": \"...\"}}, "
                                   f"got {str(item)[:80]}")
            out.setdefault(str(item["image_id"]), []).append(item["caption"])
    elif isinstance(items, dict):
        for key, value in items.items():
            refs = [value] if isinstance(value, str) else value
            if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
                raise CalmcapError(f"{name}: references of id {key!r} must be a list of strings")
            out[str(key)] = list(refs)
    else:
        raise CalmcapError(f"{name}: expected COCO-style annotations, a manifest, or an {{id: [captions]}} object")
    if not out:
        raise CalmcapError(f"{name}: no references")
    return out


def score_captions(
    predictions: PathLike | Sequence[dict[str, Any]] | dict[str, str],
    references: PathLike | dict[str, Any],
    *,
    split: str | Sequence[str] | None = None,
    use_java: bool | None = None,
    meteor: bool = True,
) -> ScoreResult:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (x100) of any system's captions (:func:`calmcap.metrics.caption_metrics`).

    The prediction ids must equal the reference ids (after ``split`` selection); otherwise a
    one-line error names how many and which differ.
    """
    from calmcap.metrics import caption_metrics

    preds = load_predictions(predictions)
    refs = load_references(references, split)
    if set(preds) != set(refs):
        missing = sorted(set(refs) - set(preds))
        extra = sorted(set(preds) - set(refs))
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference id(s) without a prediction (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} predicted id(s) without references (e.g. {', '.join(extra[:3])})")
        raise CalmcapError(f"prediction and reference ids differ: {'; '.join(parts)}")
    for key, value in refs.items():
        if not value:
            raise CalmcapError(f"id {key!r} has no reference captions")
    metrics = caption_metrics(preds, refs, use_java=use_java, meteor=meteor)
    return ScoreResult(metrics=metrics, num_videos=len(preds), num_references=sum(len(v) for v in refs.values()),
                       protocol=caption_metric_protocol(use_java, meteor))


def caption_metric_protocol(use_java: bool | None, meteor: bool) -> dict[str, Any]:
    """How caption metrics were computed (scorer, tokenizer, METEOR), for reports."""
    from calmcap.metrics import java_available

    java = java_available() if use_java is None else use_java
    return {
        "scorer": "pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr), x100",
        "tokenizer": "PTB (Java)" if java else "Python stand-in for PTB (no Java; not paper-comparable)",
        "meteor": bool(java and meteor),
        "spice": False,
    }
