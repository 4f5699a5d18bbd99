"""A multipart upload streamed into a temporary file: bounded in size and time, always removed.

:func:`receive_upload` reads a ``multipart/form-data`` body chunk by chunk (python-multipart's
streaming parser) and writes its one file part straight into a new file in the server's upload
folder, so a video is never held in memory and never copied. Text fields are kept (bounded:
they are a handful of numbers). The client's file name is only echoed back; nothing here opens
a path a client names.

A refused upload (too large, not a video type, malformed, too slow) raises
:class:`UploadRefused` with the HTTP status and a one-line reason, after the partial file has
been removed. Before refusing mid-body the rest of the body is read and dropped (up to
:data:`DRAIN_BYTES`): a server that answers and closes while the client is still sending makes
the kernel reset the connection, and the client then often loses the answer.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from calmcap.serve.settings import MIB

# The multipart field that carries the video.
FILE_FIELD = "file"
# All text fields of a request together (they are a few decoding settings and at most a caption).
MAX_FIELDS_BYTES = 64 * 1024
# After a refusal, at most this much of the rest of the body is read and dropped (see the module docstring).
DRAIN_BYTES = 64 * MIB
# Part content types taken as a video: video/*, and what browsers and curl send for a type they
# do not know (application/octet-stream, or nothing).
OCTET_STREAM = "application/octet-stream"


class UploadRefused(Exception):
    """An upload the server will not use: the HTTP ``status`` and a one-line ``detail`` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Upload:
    """A received upload: the video in ``path`` (a temporary file; :meth:`remove` deletes it).

    ``filename`` is the client's name for it, reduced to its last component (echoed in answers,
    never opened); ``fields`` the text fields of the form, as sent.
    """

    path: Path
    filename: str
    content_type: str
    num_bytes: int
    fields: dict[str, str] = field(default_factory=dict)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def format_bytes(num_bytes: int) -> str:
    """``268435456`` -> ``"256 MiB"``, ``262144`` -> ``"256 KiB"``, ``1000`` -> ``"1000 bytes"``."""
    for unit, size in (("MiB", MIB), ("KiB", 1024)):
        if num_bytes >= size:
            return f"{num_bytes / size:.4g} {unit}"
    return f"{num_bytes} bytes"


def client_filename(raw: str) -> str:
    """The last component of a client's file name, without control characters ("upload" when none).

    Browsers send a bare name; other clients may send a path (``C:\\clips\\a.mp4``) or nothing.
    """
    name = PurePosixPath(raw.replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())[:255]
    return name or "upload"


def is_video_type(content_type: str) -> bool:
    """Whether a part's Content-Type (without parameters) may hold a video."""
    kind = content_type.strip().lower()
    return kind in ("", OCTET_STREAM) or kind.startswith("video/")


def _temp_suffix(filename: str) -> str:
    from calmcap.pipeline.inputs import VIDEO_EXTENSIONS

    suffix = PurePosixPath(filename).suffix.lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ".video"


class _FormReader:
    """python-multipart callbacks: one file part to disk, text fields to memory, the first problem kept."""

    def __init__(self, upload_dir: Path, max_bytes: int) -> None:
        self.upload_dir = upload_dir
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.refusal: UploadRefused | None = None
        self.path: Path | None = None
        self.filename = ""
        self.content_type = ""
        self.file_bytes = 0
        self.file_complete = False
        self._fields_bytes = 0
        self._file: BinaryIO | None = None
        self._in_file = False
        self._name = ""
        self._data = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""

    def refuse(self, status: int, detail: str) -> None:
        """Keep the first problem, stop writing and remove what was written."""
        if self.refusal is None:
            self.refusal = UploadRefused(status, detail)
        self.remove()

    def remove(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---------------------------------------------------------------- python-multipart callbacks

    def on_part_begin(self) -> None:
        self._headers, self._data, self._in_file, self._name = {}, bytearray(), False, ""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if self.refusal is not None:
            return
        if self._name != FILE_FIELD:
            self.refuse(422, f"unexpected file field {self._name!r}: "
                             f"send the video as the multipart field '{FILE_FIELD}'")
            return
        if self.path is not None:
            self.refuse(422, f"one video per request: the form holds more than one '{FILE_FIELD}'")
            return
        content_type = parse_options_header(self._headers.get(b"content-type", b""))[0].decode("latin-1")
        self.filename = client_filename(options[b"filename"].decode("utf-8", "replace"))
        self.content_type = content_type
        if not is_video_type(content_type):
            self.refuse(415, f"{self.filename}: Content-Type {content_type!r} is not a video "
                             f"(send video/*, {OCTET_STREAM} or no type)")
            return
        fd, name = tempfile.mkstemp(dir=self.upload_dir, prefix="upload-", suffix=_temp_suffix(self.filename))
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._in_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.refusal is not None:
            return
        size = end - start
        if self._in_file:
            self.file_bytes += size
            if self.file_bytes > self.max_bytes:
                limit = format_bytes(self.max_bytes)
                self.refuse(413, f"{self.filename}: upload larger than this server's limit of {limit}")
                return
            # A page-cache write of one chunk takes microseconds; a thread hop per chunk would cost more.
            self._file.write(data[start:end])  # type: ignore[union-attr]
            return
        self._fields_bytes += size
        if self._fields_bytes > MAX_FIELDS_BYTES:
            self.refuse(413, f"form fields larger than {MAX_FIELDS_BYTES // 1024} KiB")
            return
        self._data += data[start:end]

    def on_part_end(self) -> None:
        if self.refusal is not None:
            return
        if self._in_file:
            self.close()
            self.file_complete = True
        elif self._name:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def callbacks(self) -> dict[str, Callable]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
            "on_part_data", "on_part_end")}


async def receive_upload(
    headers: Mapping[str, str],
    chunks: AsyncIterator[bytes],
    *,
    upload_dir: Path,
    max_bytes: int,
    deadline: float,
    time_limit_seconds: float,
) -> Upload:
    """Stream a multipart body (``headers`` of the request, ``chunks`` of its body) into an :class:`Upload`.

    ``deadline`` is in the running loop's clock (``loop.time()``); ``time_limit_seconds`` only
    words the 408 reason. Raises :class:`UploadRefused` (nothing left on disk): 415 for a body
    that is not ``multipart/form-data`` or a file part that is not a video type, 413 over
    ``max_bytes``, 408 past the deadline, 400 for a malformed body, 422 without a file.
    Whatever else escapes (the client disconnecting, cancellation) also leaves nothing on disk.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        shown = headers.get("content-type") or "none"
        raise UploadRefused(415, f"send the video as multipart/form-data (field '{FILE_FIELD}'); "
                                 f"the request's Content-Type is {shown}")
    declared = headers.get("content-length", "")
    if declared.isdigit():
        excess = int(declared) - max_bytes - MAX_FIELDS_BYTES
        # A client waiting for "100 Continue" has sent nothing yet, and one that sends far more than
        # could be drained is better cut off now: either way the answer comes before the body is read.
        if excess > 0 and ("100-continue" in headers.get("expect", "").lower() or excess > DRAIN_BYTES):
            raise UploadRefused(413, f"upload larger than this server's limit of {format_bytes(max_bytes)}")
    reader = _FormReader(upload_dir, max_bytes)
    parser = MultipartParser(options[b"boundary"], reader.callbacks())
    loop = asyncio.get_running_loop()
    dropped = 0
    try:
        iterator = aiter(chunks)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError  # noqa: UP041 - a distinct class before Python 3.11
            try:
                chunk = await asyncio.wait_for(anext(iterator), remaining)
            except StopAsyncIteration:
                break
            if reader.refusal is None:
                try:
                    parser.write(chunk)
                except MultipartParseError as error:
                    reader.refuse(400, f"malformed multipart body ({error})")
            else:
                dropped += len(chunk)
                if dropped > DRAIN_BYTES:
                    break
        if reader.refusal is None:
            parser.finalize()
    except asyncio.TimeoutError:  # noqa: UP041
        reader.remove()
        if reader.refusal is not None:
            raise reader.refusal from None
        raise UploadRefused(
            408, f"upload not complete within this server's time limit of {time_limit_seconds:g} s") from None
    except BaseException:
        reader.remove()
        raise
    if reader.refusal is not None:
        raise reader.refusal
    if reader.path is None:
        reader.remove()
        raise UploadRefused(422, f"no video in the request: send it as the multipart file field '{FILE_FIELD}'")
    if not reader.file_complete:
        reader.remove()
        raise UploadRefused(400, "malformed multipart body: it ends inside the video")
    return Upload(path=reader.path, filename=reader.filename, content_type=reader.content_type,
                  num_bytes=reader.file_bytes, fields=reader.fields)
