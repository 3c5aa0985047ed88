"""Stored files sent under gevent without holding the event loop.

gunicorn hands a file response (Flask's send_file: a job's result, its errors) to the
socket's sendfile, and gevent's sendfile is send() in a loop that yields only when the socket
is full. A client reading as fast as loopback allows never fills it, so one download of a
95 MB result held the process's other requests until it was sent: /predict's p99 was 161
ms, max 308 ms, beside one client downloading it again and again (docs/benchmarks.md,
"/predict beside large uploads"). Here each piece is read from disk in a native thread
(shared.cooperative.off_loop), and the loop serves its other sockets while it waits. Under
gthread the server's own sendfile is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any

from shared.cooperative import off_loop, under_gevent
from shared.storage import PIECE_BYTES


class CooperativeFile:
    """wsgi.file_wrapper: a file's pieces (at least PIECE_BYTES), each read off the loop."""

    filelike = None  # no fileno for gunicorn: it iterates instead of calling sendfile

    def __init__(self, file: IO[bytes], buffer_size: int = PIECE_BYTES) -> None:
        self._file = file
        self._size = max(buffer_size, PIECE_BYTES)  # Werkzeug asks 8 KiB

    def __iter__(self) -> CooperativeFile:
        return self

    def __next__(self) -> bytes:
        data = off_loop(self._file.read, self._size)
        if not data:
            raise StopIteration
        return data

    def seekable(self) -> bool:  # a Range request's start: seeked to, not read through
        return self._file.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()


def cooperative_files(wsgi_app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: under gevent, file responses are CooperativeFile's pieces."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if under_gevent():
            environ["wsgi.file_wrapper"] = CooperativeFile
        return wsgi_app(environ, start_response)

    return app
