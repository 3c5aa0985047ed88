"""shared/monitoring/metrics.py: multiprocess aggregation, the registry, the queue collector.

prometheus_client picks multiprocess mode when it is first imported, so the mode-dependent
tests run in a fresh interpreter with exactly the environment they need.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.parser import text_string_to_metric_families

from shared.monitoring import metrics, metricsdir
from shared.monitoring.metrics import QueueCollector

ROOT = Path(__file__).resolve().parent.parent
MULTIPROC_VARS = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")

MULTIPROCESS_SCRIPT = r"""
import json, multiprocessing, os
from shared.monitoring import metrics, metricsdir

def work(rows, memory, psi):
    metrics.ROWS_PREDICTED.labels("demo", "1", "batch").inc(rows)
    metrics.PROCESS_RESIDENT_MEMORY.labels("test").set(memory)
    metrics.FEATURE_DRIFT_PSI.labels("demo", "1", "age").set(psi)
    metrics.update_process_metrics("worker")

if __name__ == "__main__":
    metricsdir.clean(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    metrics.register_collector(
        metrics.QueueCollector(lambda: (5, 1, 2)))
    fork = multiprocessing.get_context("fork")
    pids = []
    # One after the other, so the second child's drift value is the most recent.
    for rows, memory, psi in ((3, 100, 0.3), (4, 20, 0.1)):
        child = fork.Process(target=work, args=(rows, memory, psi))
        child.start()
        child.join(timeout=30)
        assert child.exitcode == 0, child.exitcode
        pids.append(child.pid)
    before, content_type = metrics.render_metrics()
    metrics.mark_process_dead(pids[0])
    after, _ = metrics.render_metrics()
    print(json.dumps({"before": before.decode(), "after": after.decode(),
                      "content_type": content_type, "active": metrics.multiprocess_active()}))
"""

DEFAULT_SCRIPT = r"""
import json
from shared.monitoring import metrics

metrics.ROWS_PREDICTED.labels("demo", "1", "online").inc(5)
metrics.init_model_series("demo", "2")
metrics.init_job_series("demo", "2", ("succeeded", "failed", "cancelled"))
metrics.register_collector(
    metrics.QueueCollector(lambda: (5, 1, 2)))
metrics.update_process_metrics("api")
sum(i * i for i in range(3_000_000))  # burn some CPU between the two updates
metrics.update_process_metrics("api")
payload, content_type = metrics.render_metrics()
print(json.dumps({"payload": payload.decode(), "content_type": content_type,
                  "active": metrics.multiprocess_active()}))
"""


def run_python(code: str, **env: str) -> dict:
    """Run code in a fresh interpreter, without multiprocess variables unless given; its JSON."""
    environ = {k: v for k, v in os.environ.items() if k not in MULTIPROC_VARS}
    environ.update(env)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def samples(payload: str) -> dict[tuple[str, frozenset], float]:
    """Exposition text as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(payload)
        for s in family.samples
    }


def value(parsed: dict, name: str, **labels: str) -> float | None:
    return parsed.get((name, frozenset(labels.items())))


def test_multiprocess_render_sums_children_and_drops_dead_live_gauges(tmp_path):
    out = run_python(MULTIPROCESS_SCRIPT, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    before, after = samples(out["before"]), samples(out["after"])
    assert out["active"] is True
    assert out["content_type"].startswith("text/plain; version=0.0.4")
    rows = {"model": "demo", "version": "1", "path": "batch"}
    assert value(before, "tabserve_rows_predicted_total", **rows) == 7
    assert value(before, "tabserve_process_resident_memory_bytes", role="test") == 120
    assert value(before, "tabserve_feature_drift_psi", model="demo", version="1",
                 feature="age") == 0.1
    assert value(before, "tabserve_queue_depth") == 5
    assert value(before, "tabserve_process_cpu_seconds_total", role="worker") is not None
    # A dead process's counters still count; its live gauge no longer does.
    assert value(after, "tabserve_rows_predicted_total", **rows) == 7
    assert value(after, "tabserve_process_resident_memory_bytes", role="test") == 20
    assert value(after, "tabserve_process_resident_memory_bytes", role="worker") > 0


def test_render_without_multiprocess_dir_uses_default_registry():
    out = run_python(DEFAULT_SCRIPT)
    parsed = samples(out["payload"])
    assert out["active"] is False
    assert out["content_type"].startswith("text/plain; version=0.0.4")
    assert value(parsed, "tabserve_rows_predicted_total",
                 model="demo", version="1", path="online") == 5
    assert value(parsed, "tabserve_jobs_total", model="demo", version="2", status="failed") == 0
    assert value(parsed, "tabserve_workers_active") == 2
    assert value(parsed, "tabserve_process_resident_memory_bytes", role="api") > 0
    assert value(parsed, "tabserve_process_cpu_seconds_total", role="api") > 0
    # The default registry's own collectors are there too.
    assert any(name == "process_cpu_seconds_total" for name, _ in parsed)


def test_every_gauge_chooses_a_multiprocess_mode():
    gauges = [m for m in vars(metrics).values() if isinstance(m, Gauge)]
    assert len(gauges) >= 9
    for gauge in gauges:
        assert gauge._multiprocess_mode != "all", gauge._name


def test_job_statuses_are_the_final_statuses_of_jobs():
    from shared.jobs.record import FINAL

    metrics.init_job_series("statuses", "1", FINAL)
    families = {f.name: f for f in metrics.build_registry().collect()}
    got = {s.labels["status"] for s in families["tabserve_jobs"].samples
           if s.labels.get("model") == "statuses"}
    assert got == set(FINAL)


def test_cleaning_the_metrics_dir_removes_previous_files(tmp_path):
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_12345.db").write_bytes(b"stale")
    assert metricsdir.clean(directory) == directory
    assert list(directory.iterdir()) == []


def test_cleaning_the_metrics_dir_creates_a_missing_one(tmp_path):
    assert metricsdir.clean(tmp_path / "a" / "b").is_dir()


def test_mark_process_dead_without_multiprocess_dir_is_harmless(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    metrics.mark_process_dead(12345)


def test_queue_collector_yields_the_three_gauges():
    collector = QueueCollector(lambda: (4, 2, 3))
    got = {f.name: (f.type, [s.value for s in f.samples]) for f in collector.collect()}
    assert got == {
        "tabserve_queue_depth": ("gauge", [4.0]),
        "tabserve_jobs_running": ("gauge", [2.0]),
        "tabserve_workers_active": ("gauge", [3.0]),
    }


def test_queue_collector_yields_nothing_when_read_fails(caplog):
    def read() -> dict[str, int]:
        raise ConnectionError("redis away")

    with caplog.at_level(logging.DEBUG, logger="shared.monitoring.metrics"):
        assert list(QueueCollector(read).collect()) == []
    assert "redis away" in caplog.text


def test_queue_collector_with_missing_count_yields_nothing():
    assert list(QueueCollector(lambda: (1,)).collect()) == []


def test_registering_queue_collector_does_not_read_the_queue():
    calls = []
    collector = QueueCollector(lambda: calls.append(1) or (0, 0, 0))
    CollectorRegistry(auto_describe=True).register(collector)
    assert calls == []


FORK_WHILE_HELD_SCRIPT = r"""
import json, os, sys, threading, time
from prometheus_client import Counter
from shared.monitoring import forklocks, metrics

locks = {"values": forklocks.values_lock_cells()[0].cell_contents,
         "metric": metrics.JOBS_REQUEUED._lock, "registry": metrics.REGISTRY._lock}
held, done = threading.Event(), threading.Event()

def hold(lock):
    with lock:  # as the heartbeat or the reaper, recording a metric while the pool forks
        held.set()
        done.wait()

threading.Thread(target=hold, args=(locks[sys.argv[1]],), daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:  # the child: a labelled child, a value, a new metric in the registry
    metrics.JOBS_REQUEUED.labels("job", "fork").inc()
    Counter("tabserve_fork_test", "a metric made in the child", ["a"]).labels("b").inc()
    os._exit(0)
done.set()
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    finished, status = os.waitpid(pid, os.WNOHANG)
    if finished:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    status = None
print(json.dumps({"status": status}))
"""


@pytest.mark.parametrize("lock", ["values", "metric", "registry"])
def test_a_child_forked_while_a_thread_holds_a_metrics_lock_records_metrics(tmp_path, lock):
    # A Celery pool process forked while the worker's heartbeat held the values' lock hung
    # at its first metric, for good (shared.monitoring.forklocks).
    (tmp_path / "prom").mkdir()
    out = run_python(FORK_WHILE_HELD_SCRIPT.replace("sys.argv[1]", repr(lock)),
                     PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    assert out["status"] == 0, "the child hung on a lock held by a thread it does not have"


def test_the_renewal_finds_every_lock_it_knows_in_multiprocess_mode(tmp_path):
    code = ("import json; from shared.monitoring import forklocks, metrics; "
            "print(json.dumps({'cells': len(forklocks.values_lock_cells()), "
            "'renewed': forklocks.renew_locks(metrics.REGISTRY)}))")
    out = run_python(code, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    assert out["cells"] == 1  # prometheus_client's one lock for every multiprocess value
    assert out["renewed"] > 30  # it, the registry's, and each labelled metric's
