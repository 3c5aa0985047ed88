"""shared.ids: random ids drawn a block of os.urandom at a time are each handed out once,
whatever the threads, and a forked child does not hand out its parent's bytes."""

from __future__ import annotations

import os
import threading

import pytest

from shared.ids import BLOCK_BYTES, RandomBlock, random_hex


def test_ids_are_hex_of_the_length_asked_and_never_repeat_across_blocks():
    block = RandomBlock()
    ids = [block.hex(n) for _ in range(3 * BLOCK_BYTES // 12) for n in (12, 16)]
    assert all(len(i) in (24, 32) and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)


def test_threads_never_get_the_same_bytes():
    block, got = RandomBlock(), []

    def take() -> None:
        got.extend(block.hex(16) for _ in range(2000))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 16_000


def test_more_than_a_block_at_once_is_served():
    assert len(RandomBlock().hex(BLOCK_BYTES + 1)) == 2 * (BLOCK_BYTES + 1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_draws_its_own_bytes():
    random_hex(16)  # the parent's block holds bytes not handed out yet
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, random_hex(16).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child != random_hex(16)
