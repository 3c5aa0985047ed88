"""The request class: multipart file parts stream straight into the storage's local staging
file, and every request body is read at a minimum rate.

A client that sends its body slower than TABSERVE_UPLOAD_MIN_BYTES_PER_SECOND on average, once
TABSERVE_UPLOAD_GRACE_SECONDS have passed, gets a JSON 408: a body may take as long as its
size needs at that rate, and a trickling client cannot hold a server thread for longer. A read
blocked past its deadline (a client sending a byte a second, or nothing) is cut by a watchdog
thread, which shuts the read side of the socket; the view's clean-up then removes whatever was
staged.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import IO, Any, cast

from flask import Request, current_app, request
from werkzeug.utils import cached_property

from shared.cooperative import pause
from shared.errors import RequestTimeoutError, TabserveError
from shared.jobs.headerguard import HeaderGuard, widest_limit
from shared.jobs.idempotency import HEADER as IDEMPOTENCY_HEADER
from shared.jobs.idempotency import Fingerprint
from shared.jobs.submit import format_of

logger = logging.getLogger(__name__)
CLOSE_CONNECTION = "tabserve.close_connection"  # environ key: end the connection after
# The piece asked of the server's stream at once: the watchdog can only bound a read by the
# bytes it asked for, so a small piece lets it cut a slow client sooner. A body that keeps
# arriving faster than a piece per FAST_READ_SECONDS is read in pieces growing to
# MAX_PIECE_BYTES: gunicorn reads ahead up to 1 MiB and copies what is left of its buffer at
# every read, so 64 KiB reads of a fast upload cost it ~3 MiB of copying each (a 556 MiB
# upload took 2.7-3.5 s, most of it in gunicorn's Unreader.read; bench in the commit).
PIECE_BYTES = 64 * 1024
MAX_PIECE_BYTES = 1024 * 1024
FAST_READ_SECONDS = 0.05
IDLE_SECONDS = 60.0  # the watchdog's sleep with nothing to watch, before any body's grace


class UploadRequest(Request):
    """Flask request class; file parts go to storage.staging_file(), bodies are paced."""

    staged: list[Any]

    @cached_property
    def stream(self) -> IO[bytes]:  # type: ignore[override]
        self._pace_input()
        return super().stream

    @property
    def input_stream(self) -> IO[bytes]:  # type: ignore[override]
        self._pace_input()
        return self.environ["wsgi.input"]

    def _pace_input(self) -> None:
        body = self.environ["wsgi.input"]
        settings = current_app.extensions["tabserve"].settings
        if isinstance(body, PacedInput) or not settings.upload_min_bytes_per_second:
            return
        self.environ["wsgi.input"] = PacedInput(
            body, settings.upload_min_bytes_per_second, settings.upload_grace_seconds,
            self.environ.get("gunicorn.socket"), self.content_length)

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None,
                         content_length: int | None = None) -> IO[bytes]:
        storage = current_app.extensions["tabserve"].storage
        path, fh = storage.staging_file()
        if not hasattr(self, "staged"):
            self.staged = []
        self.staged.append(path)
        fh = guard_header(fh, content_type, filename)
        if IDEMPOTENCY_HEADER in self.headers:  # the file's SHA-256, taken as it is staged
            return cast(IO[bytes], HashingWriter(fh, Fingerprint()))
        return fh


def guard_header(fh: IO[bytes], content_type: str | None,
                 filename: str | None = None) -> IO[bytes]:
    """A CSV upload's staging file, its header line checked as it is written (a too wide
    header ends the request at once: end_body); other files as they are."""
    try:
        fmt = format_of(content_type if content_type != "application/octet-stream" else None,
                        filename)
    except TabserveError:  # the view refuses it, once the file's fields are known
        return fh
    if fmt != "csv":
        return fh
    rt = current_app.extensions["tabserve"]
    limit = widest_limit(rt.store, rt.settings.max_input_columns)
    return cast(IO[bytes], HeaderGuard(fh, limit, rt.settings.max_line_bytes))


def end_body() -> None:
    """Read no more of this request's body: the answer goes out with `Connection: close`,
    and the socket's read side is shut so that nothing waits for (or drains) the rest."""
    request.environ[CLOSE_CONNECTION] = True
    body = request.environ.get("wsgi.input")
    if isinstance(body, PacedInput):
        body.cut_off()
        return
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # the client went away already


def closing(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: a request marked by end_body is answered with `Connection: close`.
    gunicorn drops a `Connection` header the application sets; its response object (the
    start_response it hands over is a method of it) closes when told to force_close. Under
    another server the connection stays open and the server deals with the unread body."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if environ.get(CLOSE_CONNECTION):
                server_response = getattr(start_response, "__self__", None)
                force_close = getattr(server_response, "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, start)

    return app


class HashingWriter:
    """A staging file that feeds what is written to it to a fingerprint."""

    def __init__(self, fh: IO[bytes], fingerprint: Fingerprint) -> None:
        self._fh = fh
        self.fingerprint = fingerprint

    def write(self, data: bytes) -> int:
        self.fingerprint.update(data)
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


class PacedInput:
    """wsgi.input, read no slower than `rate` bytes/s on average after `grace` seconds."""

    def __init__(self, stream: Any, rate: int, grace: float,
                 sock: socket.socket | None, length: int | None = None) -> None:
        self._stream = stream
        self.length = length  # the body's, when the request said (Content-Length)
        self.rate = rate
        self.grace = grace
        self._start = time.monotonic() + grace  # the rate is owed from then on
        self._sock = sock
        self.received = 0
        self.cut = False
        self.piece = PIECE_BYTES  # grows while the body arrives fast, back at a slow read
        self._buf, self._pos = b"", 0  # the last piece read, served from `_pos` on

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # all of it, still piece by piece
            return b"".join(iter(lambda: self.read(MAX_PIECE_BYTES), b""))
        if size == 0:
            return b""
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._paced(self._stream.read, self.piece), 0
        out = self._buf[self._pos:self._pos + size]
        self._pos += len(out)
        return out

    def readline(self, size: int | None = -1) -> bytes:
        limit = PIECE_BYTES if size is None or size < 0 else min(size, PIECE_BYTES)
        end = min(len(self._buf), self._pos + limit)
        newline = self._buf.find(b"\n", self._pos, end)
        if newline >= 0 or end - self._pos == limit:
            stop = newline + 1 if newline >= 0 else end
            out, self._pos = self._buf[self._pos:stop], stop
            return out
        head, self._buf, self._pos = self._buf[self._pos:], b"", 0
        return head + self._paced(self._stream.readline, limit - len(head))

    def __iter__(self) -> PacedInput:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def deadline(self, wanted: int) -> float:
        """When `wanted` more bytes are due, at the minimum rate."""
        return self._start + (self.received + wanted) / self.rate

    def cut_off(self) -> None:
        """End the body: a blocked read returns, and the connection is not reused."""
        self.cut = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # the client went away already

    def _paced(self, read: Any, size: int) -> bytes:
        if self.cut or time.monotonic() > self.deadline(0):
            self._refuse()
        WATCHDOG.watch(self, self.deadline(size))
        started = time.monotonic()
        try:
            data = read(size)
        except Exception:
            if self.cut:  # the server's reader saw the socket end
                self._refuse()
            raise
        finally:
            WATCHDOG.unwatch(self)
        self.received += len(data)
        if data and (self.length is None or self.received < self.length):
            pause()  # a fast upload's next piece comes without a wait: others' requests first
        # (a body read whole in one piece, as /predict's, goes on at once)
        if len(data) == size == self.piece and \
                time.monotonic() - started < FAST_READ_SECONDS:
            self.piece = min(2 * self.piece, MAX_PIECE_BYTES)
        elif len(data) == size:
            self.piece = PIECE_BYTES
        if self.cut or data and time.monotonic() > self.deadline(0):
            self._refuse()
        return data

    def _refuse(self) -> None:
        if not self.cut:
            self.cut_off()
        raise RequestTimeoutError(
            f"the request body arrived slower than the minimum of {self.rate} bytes/s "
            f"({self.received} bytes received)")


class _Watchdog:
    """One daemon thread per process: cuts off reads still blocked at their deadline.

    It wakes at the earliest deadline it holds, and with none, after the shortest grace a
    body has had: a body that starts after that wake-up cannot be due before the grace has
    passed, so watching it needs no wake-up. Woken for every body, the thread took the GIL
    from the request being served on each one.
    """

    def __init__(self) -> None:
        # Made at the first body, in the process that serves: one made at import would
        # hold an unpatched lock under gevent workers (GUNICORN_CMD_ARGS), which patch
        # threading when the worker starts, maybe after this module was imported.
        self._cond: threading.Condition | None = None
        self._due: dict[int, tuple[float, PacedInput]] = {}
        self._wake_at = float("inf")
        self._idle = IDLE_SECONDS
        self._thread: threading.Thread | None = None

    def _condition(self) -> threading.Condition:
        if self._cond is None:
            with _MADE_ONCE:
                if self._cond is None:
                    self._cond = threading.Condition()
        return self._cond

    def watch(self, body: PacedInput, deadline: float) -> None:
        cond = self._condition()
        with cond:
            self._due[id(body)] = (deadline, body)
            self._idle = min(self._idle, body.grace)
            if self._thread is None:  # started in the process that serves
                self._thread = threading.Thread(target=self._run, name="body-watchdog",
                                                daemon=True)
                self._thread.start()
            if deadline < self._wake_at:  # a body's deadlines only grow: rarely woken
                cond.notify()

    def unwatch(self, body: PacedInput) -> None:
        with self._condition():
            self._due.pop(id(body), None)

    def _run(self) -> None:
        cond = self._condition()
        with cond:
            while True:
                now = time.monotonic()
                for key, (deadline, body) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[key]
                        logger.info("request body slower than %d bytes/s: cut off",
                                    body.rate)
                        body.cut_off()
                self._wake_at = min((d for d, _ in self._due.values()), default=now + self._idle)
                cond.wait(timeout=max(self._wake_at - now, 0.01))


# Held only for the instant it takes to make the watchdog's condition, never while waiting.
_MADE_ONCE = threading.Lock()
WATCHDOG = _Watchdog()
