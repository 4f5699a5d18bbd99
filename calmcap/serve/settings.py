"""What a server runs with: :class:`ServeSettings` (the model, the index, limits, queue and batch sizes).

The one definition of the serving knobs and their defaults: ``calmcap serve``'s options take
their defaults and help from here, and :meth:`ServeSettings.check` is the one place they are
validated (a bad value is a :class:`~calmcap.errors.ConfigError` naming the option).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from calmcap.errors import ConfigError

# Loopback unless told otherwise (issue #14): the API has no authentication.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MIB = 1 << 20


@dataclass(frozen=True)
class ServeSettings:
    """Settings of one server.

    ``model`` is a checkpoint directory (None: ``$CALMCAP_MODEL``, else ``runs/synth_tiny/model``,
    as every command); ``index`` an index folder made by ``calmcap index`` (None: no search).

    ``queue_size`` bounds the requests admitted at once, whatever they are doing (uploading,
    decoding, waiting for the model or in it); one more is answered 503 with ``Retry-After``
    before its body is read. The model takes up to ``max_batch_size`` waiting captions with the
    same decoding settings at once, after waiting at most ``batch_wait_seconds`` for company
    (0: only what is already waiting). ``decode_workers`` threads decode uploads beside the model.
    ``request_timeout_seconds`` bounds a request from its first byte to its answer.
    ``upload_dir`` is where uploads are spooled (None: a fresh folder in the system's temporary
    directory, removed at exit).
    """

    model: str | None = None
    index: str | None = None
    device: str = "cpu"
    max_upload_bytes: int = 256 * MIB
    request_timeout_seconds: float = 120.0
    queue_size: int = 32
    max_batch_size: int = 8
    batch_wait_seconds: float = 0.0
    decode_workers: int = 2
    upload_dir: str | None = None

    def check(self) -> ServeSettings:
        """Raise :class:`ConfigError` naming the first impossible setting; else self."""
        rules = [
            (self.max_upload_bytes >= 1, f"max_upload_bytes must be at least 1, got {self.max_upload_bytes}"),
            (math.isfinite(self.request_timeout_seconds) and self.request_timeout_seconds > 0,
             f"request_timeout_seconds must be a positive number, got {self.request_timeout_seconds}"),
            (self.queue_size >= 1, f"queue_size must be at least 1, got {self.queue_size}"),
            (self.max_batch_size >= 1, f"max_batch_size must be at least 1, got {self.max_batch_size}"),
            (math.isfinite(self.batch_wait_seconds) and 0 <= self.batch_wait_seconds <= 1,
             f"batch_wait_seconds must be between 0 and 1, got {self.batch_wait_seconds}"),
            (self.decode_workers >= 1, f"decode_workers must be at least 1, got {self.decode_workers}"),
        ]
        for ok, message in rules:
            if not ok:
                raise ConfigError(message)
        return self


SETTING_NAMES = tuple(f.name for f in fields(ServeSettings))
