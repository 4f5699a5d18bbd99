"""What a running server holds (:class:`ServeState`): the model, the index, the model's thread, the
decode pool, the upload folder; opened before the server listens, closed after it stops.

Everything that can fail for a user-facing reason (no model, a bad checkpoint, an index built
with another model, an empty index) fails in :meth:`ServeState.open`, before the port is bound,
as the one-line :class:`~calmcap.errors.CalmcapError` every command prints.
"""

from __future__ import annotations

import collections
import logging
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calmcap.errors import CalmcapError
from calmcap.serve.batcher import ModelBatcher
from calmcap.serve.settings import ServeSettings

if TYPE_CHECKING:  # pragma: no cover
    from calmcap.pipeline import LoadedModel
    from calmcap.video_index import VideoIndex

logger = logging.getLogger(__name__)

# Index thumbnails kept in memory (~20 kB each): the pages of results a user flips through.
THUMBNAIL_CACHE_SIZE = 512


@dataclass
class ServeState:
    """A server's resources. ``index_rows`` maps an indexed video to its row (frame URLs name rows,
    never paths); ``identity`` is :func:`calmcap.reports.model_identity` of the model."""

    settings: ServeSettings
    loaded: LoadedModel
    identity: dict[str, Any]
    batcher: ModelBatcher
    decode_pool: ThreadPoolExecutor
    upload_dir: Path
    owns_upload_dir: bool
    index: VideoIndex | None = None
    index_rows: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _thumbnails: collections.OrderedDict[int, bytes] = field(default_factory=collections.OrderedDict)
    _thumbnails_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: ServeSettings, loaded: LoadedModel | None = None) -> ServeState:
        """Load the model (or take ``loaded``), open and check the index, make the upload folder."""
        from calmcap.pipeline import load_model, resolve_model_path, search_index
        from calmcap.reports import model_identity

        settings.check()
        if loaded is None:
            loaded = load_model(resolve_model_path(settings.model), settings.device)
        identity = model_identity(loaded.model, loaded.path)
        index, rows = None, {}
        if settings.index is not None:
            from calmcap.video_index import VideoIndex

            index = VideoIndex.open(settings.index)
            # A first search checks, now rather than at the first query, that the index was built
            # by this model and is not empty (search_index's own checks and messages).
            search_index(index, "a video", loaded, top_k=1)
            rows = {video: row for row, video in enumerate(index.ids)}
        if settings.upload_dir is not None:
            upload_dir, owned = Path(settings.upload_dir), False
            try:
                upload_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                reason = error.strerror or error
                raise CalmcapError(f"{upload_dir}: cannot use as the upload folder ({reason})") from None
        else:
            upload_dir, owned = Path(tempfile.mkdtemp(prefix="calmcap-serve-")), True
        batcher = ModelBatcher(loaded, queue_size=settings.queue_size, max_batch_size=settings.max_batch_size,
                               batch_wait_seconds=settings.batch_wait_seconds)
        pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="calmcap-decode")
        return cls(settings=settings, loaded=loaded, identity=identity, batcher=batcher, decode_pool=pool,
                   upload_dir=upload_dir, owns_upload_dir=owned, index=index, index_rows=rows)

    def start(self) -> None:
        self.batcher.start()
        indexed = f" with {len(self.index_rows)} indexed videos" if self.index is not None else ""
        logger.info("serving %s (%s)%s; uploads go to %s", self.identity.get("path") or "a model built in memory",
                    self.identity["name"], indexed, self.upload_dir)

    def close(self) -> None:
        """Finish queued work, stop the threads, remove the upload folder when the server made it."""
        self.batcher.close(timeout=self.settings.request_timeout_seconds)
        self.decode_pool.shutdown(wait=True, cancel_futures=True)
        if self.owns_upload_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    def thumbnail(self, row: int) -> bytes:
        """The middle frame of the index's video ``row`` (JPEG, cached); VideoDecodeError when unreadable."""
        from calmcap.serve.frames import video_thumbnail

        with self._thumbnails_lock:
            if row in self._thumbnails:
                self._thumbnails.move_to_end(row)
                return self._thumbnails[row]
        jpeg = video_thumbnail(self.index.ids[row])  # type: ignore[union-attr]
        with self._thumbnails_lock:
            self._thumbnails[row] = jpeg
            while len(self._thumbnails) > THUMBNAIL_CACHE_SIZE:
                self._thumbnails.popitem(last=False)
        return jpeg
