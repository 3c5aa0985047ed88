"""Random ids from the operating system's generator, drawn a block at a time.

os.urandom is a system call that lets go of the GIL: under gunicorn's threads, another
request's thread takes it, and this one waits to get it back. A request asks for two ids (its
request id and its prediction id); taking them from one 4 KiB read serves ~150 requests.
A forked child starts with an empty block, so no two processes hand out the same bytes.
The lock is held for no wait but the read itself, so a lock made before gevent patches
threading (GUNICORN_CMD_ARGS) is never contended by two greenlets.
"""

from __future__ import annotations

import os
import threading

BLOCK_BYTES = 4096


class RandomBlock:
    """Bytes of os.urandom, handed out once each, in any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._pos = 0

    def hex(self, nbytes: int) -> str:
        """`nbytes` random bytes in hex digits."""
        with self._lock:
            end = self._pos + nbytes
            if end > len(self._block):
                self._block, self._pos, end = os.urandom(max(BLOCK_BYTES, nbytes)), 0, nbytes
            out = self._block[self._pos:end]
            self._pos = end
        return out.hex()

    def forget(self) -> None:
        """Drop what is left (in a forked child: the parent may still hand it out)."""
        self._block, self._pos = b"", 0
        self._lock = threading.Lock()


_RANDOM = RandomBlock()
os.register_at_fork(after_in_child=_RANDOM.forget)


def random_hex(nbytes: int) -> str:
    """`nbytes` bytes from the operating system's generator, in hex digits."""
    return _RANDOM.hex(nbytes)
