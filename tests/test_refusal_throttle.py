"""A client's refused job submissions: a bucket of them at once, then each held until the
bucket refills (shared/security/refusals.py). Units with a stepped clock; the real gunicorn
case (a client looping on wide headers, /predict meanwhile) is in tests/test_api_isolation.py."""

from __future__ import annotations

import threading

import pytest

from shared.security.refusals import MAX_CLIENTS, RefusalThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_goes_at_once_then_each_refusal_waits_for_the_refill():
    clock = Clock()
    throttle = RefusalThrottle(burst=3, per_second=2.0, slots=4, clock=clock)
    assert [throttle.delay("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.delay("a") == pytest.approx(0.5)  # one refusal's worth at 2 a second
    assert throttle.delay("a") == pytest.approx(1.0)  # refusals that come together queue
    clock.now += 1.0  # two refusals' worth refilled: back to the debt of the first
    assert throttle.delay("a") == pytest.approx(0.5)
    clock.now += 10.0  # full again, never above the burst
    assert [throttle.delay("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.delay("a") > 0


def test_clients_have_their_own_buckets_and_waits_are_capped():
    clock = Clock()
    throttle = RefusalThrottle(burst=1, per_second=1.0, slots=4, max_wait=2.0, clock=clock)
    waits = [throttle.delay("flood") for _ in range(10)]
    assert waits[0] == 0.0 and max(waits) == 2.0 and waits[-1] == 2.0
    assert throttle.delay("other") == 0.0


def test_off_when_the_rate_is_zero_or_no_thread_may_wait():
    assert not RefusalThrottle(burst=0, per_second=0.0, slots=8).enabled
    sync = RefusalThrottle(burst=0, per_second=1.0, slots=0)  # one thread: sync workers
    assert not sync.enabled and sync.hold("a") == 0.0 and sync.delay("a") == 0.0


def test_hold_sleeps_only_while_a_slot_is_free():
    clock, slept = Clock(), []
    gate, release = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        gate.set()
        release.wait(5)

    throttle = RefusalThrottle(burst=0, per_second=1.0, slots=1, clock=clock, sleep=sleep)
    holder = threading.Thread(target=throttle.hold, args=("a",))
    holder.start()
    assert gate.wait(5)
    assert throttle.hold("b") == 0.0  # the one slot is taken: answered at once
    release.set()
    holder.join(5)
    assert slept == [1.0]
    assert throttle.hold("c") == 1.0  # the slot is back


def test_the_clients_remembered_are_bounded():
    throttle = RefusalThrottle(burst=5, per_second=1.0, slots=1, clock=Clock())
    for i in range(MAX_CLIENTS + 50):
        throttle.delay(f"c{i}")
    assert len(throttle._buckets) == MAX_CLIENTS


def test_the_hold_sleeps_with_the_time_sleep_of_the_moment(monkeypatch):
    # gevent workers patch time.sleep when they start, maybe after this module was imported:
    # a sleep bound at import would block every request of the process for the wait.
    import time

    throttle = RefusalThrottle(burst=0, per_second=2.0, slots=1, clock=Clock())
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    assert throttle.hold("a") == 0.5
    assert slept == [0.5]
