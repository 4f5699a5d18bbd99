"""Retrieval: embedding videos into an on-disk index, text-to-video search in it, video-to-text ranking.

The index format and its search are :mod:`calmcap.video_index`; this module feeds it videos
through the model (decoding overlapped with the model, as captioning does).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from calmcap.errors import CalmcapError
from calmcap.pipeline.features import encode_clips, encode_video_file
from calmcap.pipeline.loading import LoadedModel, ModelLike, frame_settings, load_model
from calmcap.pipeline.prefetch import ClipPrefetcher, clip_batches
from calmcap.pipeline.stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.video_index import IndexBuildReport, SearchHit, VideoIndex

PathLike = Union[str, "os.PathLike[str]"]


def build_index(
    videos: Sequence[PathLike],
    index: PathLike,
    model: ModelLike = None,
    *,
    batch_size: int = 8,
    num_frames: int | None = None,
    device: str = "cpu",
    overlap: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    flush_every: int = 256,
    stats: PipelineStats | None = None,
) -> IndexBuildReport:
    """Embed videos into an on-disk index (:mod:`calmcap.video_index`); resumable.

    Videos already in the index are skipped; the others are decoded (overlapped with the
    model), encoded to normalised ``V`` and appended in float16. Bad videos are listed in the
    report and skipped (a re-run tries them again).
    """
    import torch

    from calmcap.reports import model_identity
    from calmcap.video_index import IndexBuildReport, IndexWriter

    stats = stats if stats is not None else PipelineStats()
    stats.overlap = overlap
    start = time.perf_counter()
    loaded = load_model(model, device, stats)
    network = loaded.model
    frames, image_size = frame_settings(network, num_frames)
    identity = model_identity(network, loaded.path)
    keys = [str(Path(v).resolve()) for v in videos]
    writer = IndexWriter(index, model=identity, embed_dim=network.embed_dim, num_frames=frames, overwrite=overwrite)
    todo = [(k, str(v)) for k, v in zip(keys, videos, strict=True) if k not in writer.done]
    todo = list({k: v for k, v in todo}.items())
    report = IndexBuildReport(path=Path(index), skipped=len(keys) - len(todo))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="index", unit="video", dynamic_ncols=True)
    by_display = {display: key for key, display in todo}
    prefetcher = ClipPrefetcher([d for _, d in todo], frames, image_size, overlap=overlap, depth=2 * batch_size,
                                stats=stats)
    try:
        for group in clip_batches(prefetcher, batch_size):
            good = [c for c in group if c.error is None]
            for clip in group:
                if clip.error is not None:
                    report.bad.append((clip.path, clip.error))
                    stats.failed += 1
            if good:
                features, mask = encode_clips(network, good, stats)
                with torch.inference_mode():
                    embeds = network.fuse(features, mask).float().cpu().numpy()
                writer.add([by_display[c.path] for c in good], embeds)
                report.added += len(good)
                stats.videos += len(good)
                if writer.pending >= flush_every:
                    writer.flush()
            if bar is not None:
                bar.update(len(group))
        writer.finalize(bad=report.bad)
    finally:
        prefetcher.close()
        writer.flush()
        if bar is not None:
            bar.close()
        stats.wall_seconds = time.perf_counter() - start
    report.total = writer.count
    report.seconds = stats.wall_seconds
    return report


def _check_index_model(idx: VideoIndex, loaded: LoadedModel) -> None:
    from calmcap.reports import same_model

    embed_dim = loaded.model.embed_dim
    if idx.embed_dim != embed_dim:
        raise CalmcapError(f"{idx.path}: index holds {idx.embed_dim}-d embeddings but the model makes {embed_dim}-d "
                           f"ones; use the model that built it ({idx.model.get('path')})")
    if not same_model(idx.model, loaded.model, loaded.path):
        raise CalmcapError(f"{idx.path}: built with another model "
                           f"({idx.model.get('path')}, sha256 {str(idx.model.get('sha256'))[:12]}); "
                           "query it with that model or rebuild the index with `calmcap index --overwrite`")


def search_index(
    index: PathLike | Any,
    query: str | Sequence[str],
    model: ModelLike = None,
    *,
    top_k: int = 10,
    device: str = "cpu",
) -> list[SearchHit] | list[list[SearchHit]]:
    """Text-to-video search: the ``top_k`` indexed videos by cosine similarity to the query text.

    One query string gives a list of hits; a list of queries gives one list per query.
    """
    import torch

    from calmcap.video_index import VideoIndex

    idx = index if isinstance(index, VideoIndex) else VideoIndex.open(index)
    loaded = load_model(model, device)
    _check_index_model(idx, loaded)
    queries = [query] if isinstance(query, str) else list(query)
    if not queries or any(not q.strip() for q in queries):
        raise CalmcapError("empty query text")
    with torch.inference_mode():
        text = loaded.model.encode_text(queries).float().cpu().numpy()
    hits = idx.search(text, top_k)
    return hits[0] if isinstance(query, str) else hits


def rank_sentences(
    video: PathLike,
    sentences: Sequence[str],
    model: ModelLike = None,
    *,
    top_k: int | None = None,
    num_frames: int | None = None,
    device: str = "cpu",
) -> list[tuple[str, float]]:
    """Video-to-text: ``sentences`` sorted by cosine similarity to the video, ``(sentence, score)``."""
    import torch

    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise CalmcapError("no sentences to rank")
    network = load_model(model, device).model
    features, mask = encode_video_file(network, video, num_frames)
    with torch.inference_mode():
        v = network.fuse(features, mask).float()
        texts = torch.cat([network.encode_text(sentences[i : i + 256]).float() for i in range(0, len(sentences), 256)])
    scores = (texts @ v[0]).cpu().tolist()
    order = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    return [(sentences[i], float(scores[i])) for i in order]
