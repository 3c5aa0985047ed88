"""CPU that other processes use while a benchmark runs: the machine has two cores, and a
test suite running beside the benchmark moves its numbers, so the report says how much."""

from __future__ import annotations

import resource
import time

import psutil


class OtherCPU:
    """Other processes' share of the CPU over a span, in percent of the machine: the
    system's busy time (hypervisor steal included) less this process's, its live
    descendants' (servers) and its reaped children's (wrk). Counters, not sampling: no
    process escapes it however short, and no thread runs beside a measurement."""

    def __init__(self) -> None:
        self.percent = 0.0

    def __enter__(self) -> OtherCPU:
        self._started = time.monotonic()
        self._system = _system_busy()
        self._ours = _own_and_reaped()
        self._tree = _descendants()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self._started
        tree = _descendants()
        ours = _own_and_reaped() - self._ours + sum(
            cpu - self._tree.get(pid, 0.0) for pid, cpu in tree.items())
        other = _system_busy() - self._system - ours
        self.percent = max(0.0, 100 * other / (elapsed * (psutil.cpu_count() or 1)))


def _system_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _own_and_reaped() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


def _descendants() -> dict[int, float]:
    cpu = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            t = proc.cpu_times()
            cpu[proc.pid] = t.user + t.system
        except psutil.Error:
            pass
    return cpu


def other_cpu_percent(seconds: float) -> float:
    """Other processes' share of the CPU over the next `seconds`."""
    with OtherCPU() as other:
        time.sleep(seconds)
    return other.percent


def wait_quiet(limit_percent: float, timeout: float) -> float:
    """Wait (at most `timeout` s) until other processes use under `limit_percent`; the last
    measurement."""
    deadline = time.monotonic() + timeout
    while True:
        other = other_cpu_percent(2.0)
        if other < limit_percent or time.monotonic() > deadline:
            return other
        print(f"other processes use {other:.0f}% of the CPU; waiting for a quiet machine",
              flush=True)
