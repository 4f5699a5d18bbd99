"""A real ``calmcap serve`` in a child process, on a free loopback port, for the tests that need one
(load and faults, SIGTERM, the browser): started with ``--port 0``, its port and upload folder read
from its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_RUNNING = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")


class ServerProcess:
    """``python -m calmcap.cli serve ARGS --port 0``; :attr:`url` once it listens, :attr:`log` its stderr."""

    def __init__(self, args: list[str], start_timeout: float = 240.0) -> None:
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "calmcap.cli", "serve", *args, "--port", "0"], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
        self.lines: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + start_timeout
        while not self._listening.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("calmcap serve did not start:\n" + self.log[-4000:])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = _RUNNING.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._listening.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def rss_bytes(self) -> int:
        """The server's resident memory (Linux /proc)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM, then wait for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def multipart(parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = "calmcapTestBoundary"
              ) -> tuple[bytes, str]:
    """A multipart/form-data body of ``(name, filename or None, content type or None, data)`` parts,
    and its Content-Type."""
    chunks = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + data + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class RawPost:
    """A POST over a bare socket, sent in pieces: :meth:`send` part of the body, then :meth:`finish`
    (the rest, and the answer) or :meth:`abandon` (close mid-upload, as a client that goes away)."""

    def __init__(self, port: int, path: str, body: bytes, content_type: str) -> None:
        import socket

        self.body, self.sent = body, 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        self.sock.sendall(head.encode())

    def send(self, num_bytes: int) -> None:
        self.sock.sendall(self.body[self.sent : self.sent + num_bytes])
        self.sent += num_bytes

    def finish(self) -> tuple[int, bytes]:
        import http.client

        self.sock.sendall(self.body[self.sent :])
        response = http.client.HTTPResponse(self.sock)
        response.begin()
        data = response.read()
        self.sock.close()
        return response.status, data

    def abandon(self) -> None:
        self.sock.close()
