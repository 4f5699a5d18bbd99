"""Evaluating a checkpoint on manifests and splits: :func:`evaluate_checkpoint` -> a report.

The work per split is :func:`calmcap.evaluation.evaluate` (the function training validates
with); this adds loading, several (manifest, split) rows, data identities and the report files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Union

from calmcap.errors import CalmcapError
from calmcap.pipeline.caption import CaptionOptions
from calmcap.pipeline.inputs import resolve_manifest
from calmcap.pipeline.loading import ModelLike, frame_settings, load_model
from calmcap.pipeline.scoring import caption_metric_protocol

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.reports import BenchmarkReport

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
DataSpec = tuple[PathLike, Sequence[str]] | tuple[PathLike, Sequence[str], str]

DETERMINISTIC = "evaluation decodes deterministically with one caption per video (no sampling)"


def evaluate_checkpoint(
    model: ModelLike,
    data: PathLike | Sequence[DataSpec],
    splits: Sequence[str] | None = None,
    *,
    out: PathLike | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    num_frames: int | None = None,
    decode: CaptionOptions | None = None,
    captioning: bool = True,
    retrieval: bool = True,
    use_java: bool | None = None,
    meteor: bool = True,
    max_videos: int | None = None,
    device: str = "cpu",
    progress: bool = False,
    plots: bool = True,
) -> BenchmarkReport:
    """Evaluate one checkpoint on one or several manifests/splits; optionally write the reports.

    ``data`` is a manifest (file or directory) with ``splits``, or a list of
    ``(manifest, [split, ...])`` or ``(manifest, [split, ...], name)`` (the name shown in the
    tables; default: the manifest's folder name). Every (manifest, split) becomes one row of the cross-domain
    table. With ``out`` the report files are written there (``report.json``, ``report.md``,
    predictions, plots; see :mod:`calmcap.reports`).
    """
    from calmcap.data.dataset import VideoCaptionDataset
    from calmcap.data.manifest import read_manifest
    from calmcap.evaluation import evaluate
    from calmcap.reports import BenchmarkReport, EvalRow, data_identity, model_identity

    if isinstance(data, (str, os.PathLike)):
        if not splits:
            raise CalmcapError(f"name at least one split of {data} to evaluate")
        specs: list[DataSpec] = [(data, list(splits))]
    else:
        if splits:
            raise CalmcapError("pass splits inside the (manifest, splits) pairs when data is a list")
        specs = list(data)
    if not specs:
        raise CalmcapError("nothing to evaluate: no data given")
    if not (captioning or retrieval):
        raise CalmcapError("nothing to evaluate: both captioning and retrieval are off")
    options = (decode or CaptionOptions()).validate()
    if options.do_sample or options.num_return_sequences not in (None, 1):
        raise CalmcapError(DETERMINISTIC)
    loaded = load_model(model, device)
    decoding = options.resolve(loaded.generation)
    if decoding.do_sample or decoding.num_return_sequences != 1:  # the checkpoint's own settings
        raise CalmcapError(DETERMINISTIC)
    frames, image_size = frame_settings(loaded.model, num_frames)
    identity = model_identity(loaded.model, loaded.path)
    report = BenchmarkReport(model=identity, settings={
        "batch_size": batch_size, "num_frames": frames, "image_size": image_size, "device": str(device),
        "captioning": captioning, "retrieval": retrieval, "max_videos": max_videos,
        "decode": asdict(decoding) if captioning else None,
    })
    for spec in specs:
        manifest_arg, split_names, *named = spec
        manifest = resolve_manifest(manifest_arg)
        if not split_names:
            raise CalmcapError(f"{manifest_arg}: no split given to evaluate")
        for split in split_names:
            entries = read_manifest(manifest, split)
            total = len(entries)
            if max_videos is not None:
                entries = entries[:max_videos]
            dataset = VideoCaptionDataset(manifest, split, frames, image_size, mode="videos", entries=entries)
            start = time.perf_counter()
            logger.info("evaluating %s split %s (%d videos)", manifest, split, len(entries))
            try:
                result = evaluate(
                    loaded.model, dataset, batch_size=batch_size, num_workers=num_workers, captioning=captioning,
                    retrieval=retrieval, use_java=use_java, meteor=meteor, progress=progress,
                    decode=decoding,
                )
            except CalmcapError as error:  # name the manifest and split the one-line error is about
                raise CalmcapError(f"{manifest} split {split}: {error}") from None
            data_id = data_identity(manifest, split, total, len(entries))
            if named and named[0]:
                data_id["name"] = str(named[0])
            row = EvalRow.from_result(result, manifest=manifest, split=split, entries=entries, identity=data_id,
                                      seconds=time.perf_counter() - start)
            row.protocol["caption_metrics"] = caption_metric_protocol(use_java, meteor) if captioning else None
            report.add(row)
    if out is not None:
        report.write(out, plots=plots)
    return report
