"""api.upload.PacedInput, the request body reader of uploads: it hands every byte on once, in
order, whatever the sizes asked (Werkzeug's multipart parser asks 64 KiB, the raw upload
path 1 MiB), reads the server's stream in pieces that grow while the body arrives fast, and
falls back to small pieces (a slow client is cut sooner) at a slow read; and its watchdog,
which cuts off a blocked read at its deadline without being woken for every body."""

from __future__ import annotations

import io
import os
import random
import threading
import time

import pytest

from api.upload import MAX_PIECE_BYTES, PIECE_BYTES, PacedInput, _Watchdog
from shared.errors import RequestTimeoutError


class Recorded(io.BytesIO):
    """A body whose reads are recorded (the size asked of each), optionally slow."""

    def __init__(self, data: bytes, delay: float = 0.0) -> None:
        super().__init__(data)
        self.asked: list[int] = []
        self.delay = delay

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(-1 if size is None else size)
        if self.delay:
            time.sleep(self.delay)
        return super().read(size)


def _paced(body) -> PacedInput:
    return PacedInput(body, rate=1, grace=3600, sock=None)


@pytest.mark.parametrize("sizes", [[64 * 1024], [1 << 20], [1, 7, 65_537, 300_000],
                                   [5_000_000]])
def test_every_byte_comes_out_once_in_order(sizes):
    data = os.urandom(3 * MAX_PIECE_BYTES + 12_345)
    paced, out, turn = _paced(Recorded(data)), [], 0
    while piece := paced.read(sizes[turn % len(sizes)]):
        assert len(piece) <= sizes[turn % len(sizes)]
        out.append(piece)
        turn += 1
    assert b"".join(out) == data
    assert paced.received == len(data)


def test_lines_and_pieces_mixed_come_out_whole():
    rng = random.Random(7)
    lines = [b"x" * rng.randrange(0, 3000) + b"\n" for _ in range(2000)]
    data = b"".join(lines) + b"no newline at the end"
    paced, out = _paced(Recorded(data)), []
    while True:
        piece = paced.readline() if rng.random() < 0.5 else paced.read(rng.randrange(1, 9000))
        if not piece:
            break
        out.append(piece)
    assert b"".join(out) == data


def test_a_readline_finishes_a_line_begun_in_the_last_piece():
    data = b"a" * (PIECE_BYTES - 10) + b"bcdefghijklmnop\nnext\n"
    paced = _paced(Recorded(data))
    assert paced.read(PIECE_BYTES - 12) == b"a" * (PIECE_BYTES - 12)
    assert paced.readline() == b"aabcdefghijklmnop\n"  # two bytes buffered, the rest read
    assert paced.readline() == b"next\n"
    assert paced.readline() == b""


def test_a_fast_body_is_read_in_pieces_growing_to_the_largest():
    body = Recorded(b"z" * (8 * MAX_PIECE_BYTES))
    paced = _paced(body)
    while paced.read(64 * 1024):  # what Werkzeug's multipart parser asks
        pass
    assert body.asked[:5] == [PIECE_BYTES, 2 * PIECE_BYTES, 4 * PIECE_BYTES, 8 * PIECE_BYTES,
                              MAX_PIECE_BYTES]
    assert max(body.asked) == MAX_PIECE_BYTES


def test_a_slow_read_goes_back_to_small_pieces():
    body = Recorded(b"z" * (4 * MAX_PIECE_BYTES))
    paced = _paced(body)
    for _ in range(6):
        paced.read(MAX_PIECE_BYTES)
    assert body.asked[-1] == MAX_PIECE_BYTES
    body.delay = 0.1  # the client slows down: the next piece asked is the smallest again
    paced.read(MAX_PIECE_BYTES)
    paced.read(MAX_PIECE_BYTES)
    assert body.asked[-1] == PIECE_BYTES


class Blocking(io.BytesIO):
    """A body whose read blocks until the reader is cut off (or 5 s)."""

    def __init__(self) -> None:
        super().__init__(b"late")
        self.released = threading.Event()

    def read(self, size: int | None = -1) -> bytes:
        self.released.wait(5)
        return super().read(size)


class Watched(PacedInput):
    def cut_off(self) -> None:
        super().cut_off()
        self._stream.released.set()  # as a socket shut down ends the server's blocked read


def test_a_blocked_read_is_cut_off_at_its_deadline():
    for grace in (0.3, 0.2):  # the second starts while the watchdog idles on the first's
        body = Watched(Blocking(), rate=1_000_000, grace=grace, sock=None)
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            body.read(4)
        assert grace <= time.monotonic() - started < grace + 0.5


def test_watching_a_body_does_not_wake_an_idle_watchdog():
    watchdog = _Watchdog()
    first = PacedInput(io.BytesIO(), rate=1, grace=0.3, sock=None)
    watchdog.watch(first, first.deadline(0))
    watchdog.unwatch(first)
    deadline = time.monotonic() + 5
    # Until the thread has run with nothing to watch (before: infinity, or `first`'s deadline)
    while not first.deadline(0) < watchdog._wake_at < float("inf"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    woken = []
    cond = watchdog._condition()
    notify = cond.notify
    cond.notify = lambda *a: (woken.append(1), notify(*a))  # type: ignore[method-assign]
    body = PacedInput(io.BytesIO(), rate=1, grace=0.3, sock=None)
    watchdog.watch(body, body.deadline(4))
    watchdog.unwatch(body)
    assert woken == []
    watchdog._idle = 3600.0  # this test's thread sleeps from its next wake-up on


@pytest.mark.parametrize("length", [None, 3 * MAX_PIECE_BYTES + 12_345])
def test_the_loop_gets_a_turn_between_pieces_not_after_the_last(monkeypatch, length):
    """A fast upload pauses (shared.cooperative.pause: the loop's other requests first)
    after each piece while more of its body is to come; with its length known, not after
    the last piece. A body read whole in one piece, as /predict's, never pauses."""
    import api.upload

    pauses: list[int] = []
    monkeypatch.setattr(api.upload, "pause", lambda: pauses.append(len(pauses)))
    data = os.urandom(3 * MAX_PIECE_BYTES + 12_345)
    paced = PacedInput(Recorded(data), rate=1, grace=3600, sock=None, length=length)
    body = paced._stream
    while paced.read(MAX_PIECE_BYTES):
        pass
    reads = len(body.asked)  # of the server's stream, the last one empty
    assert reads > 4
    # None: every read with bytes pauses; known: all but the one that ends the body
    assert len(pauses) == (reads - 1 if length is None else reads - 2), (pauses, reads)

    pauses.clear()
    small = PacedInput(Recorded(b'{"features": {}}'), rate=1, grace=3600, sock=None,
                       length=16)
    assert small.read(PIECE_BYTES) == b'{"features": {}}'
    assert pauses == []
