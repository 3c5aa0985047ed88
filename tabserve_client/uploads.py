"""Streamed upload bodies: the file is read in pieces as it is sent, never whole; as the
body alone (a CSV file, scored by the server as it arrives) or in a multipart/form-data
form."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from typing import IO
from urllib.parse import quote

PIECE_BYTES = 256 * 1024
Progress = Callable[[int, int], None]  # (bytes sent so far, the body's length)


class MultipartBody:
    """A file-like body: form fields, then the file part, then the closing boundary.

    requests sends an object with __len__ and read() with a Content-Length, reading it in
    pieces; `progress(sent, length)` is called as each piece is read."""

    def __init__(self, fh: IO[bytes], filename: str, content_type: str,
                 fields: Mapping[str, str], progress: Progress | None = None) -> None:
        self.boundary = uuid.uuid4().hex
        head = b"".join(self._field(name, value) for name, value in fields.items())
        quoted = filename.replace("\\", "\\\\").replace('"', "\\\"")
        head += (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                 f"filename=\"{quoted}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
        self._parts: list[bytes | IO[bytes]] = [head, fh, f"\r\n--{self.boundary}--\r\n".encode()]
        self._length = len(head) + _remaining(fh) + len(self._parts[2])  # type: ignore[arg-type]
        self._progress = progress
        self._sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        want = PIECE_BYTES if size is None or size < 0 else size
        out = b""
        while self._parts and len(out) < want:
            part = self._parts[0]
            if isinstance(part, bytes):
                take = part[: want - len(out)]
                out += take
                rest = part[len(take):]
                if rest:
                    self._parts[0] = rest
                else:
                    self._parts.pop(0)
            else:
                piece = part.read(want - len(out))
                if piece:
                    out += piece
                else:
                    self._parts.pop(0)
        if out and self._progress is not None:
            self._sent += len(out)
            self._progress(self._sent, self._length)
        return out

    def _field(self, name: str, value: str) -> bytes:
        return (f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()


class FileBody(MultipartBody):
    """The file alone as a body of known length, read in pieces; `progress` as above."""

    def __init__(self, fh: IO[bytes], content_type: str,
                 progress: Progress | None = None) -> None:
        self._parts = [fh]
        self._length = _remaining(fh)
        self._progress, self._sent, self._type = progress, 0, content_type

    @property
    def content_type(self) -> str:
        return self._type


def content_disposition(filename: str) -> str:
    """`attachment; filename=...` for a raw body: ASCII as is, else RFC 5987 UTF-8."""
    try:
        filename.encode("ascii")
    except UnicodeEncodeError:
        return f"attachment; filename*=UTF-8''{quote(filename, safe='')}"
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    return f'attachment; filename="{quoted}"'


def _remaining(fh: IO[bytes]) -> int:
    """Bytes from the file's position to its end."""
    try:
        return os.fstat(fh.fileno()).st_size - fh.tell()
    except (AttributeError, OSError, ValueError):
        here = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(here)
        return end - here
