"""Every Prometheus metric of tabserve, defined once, and the helpers that expose them.

The API (gunicorn workers) and the worker (Celery pool children) are several processes, so the
metrics run in prometheus_client's multiprocess mode: when PROMETHEUS_MULTIPROC_DIR is set in
the environment *before prometheus_client is first imported*, each process writes its values to
files there and `render_metrics()` sums them. Defining a metric opens no connection and, since
every metric here has labels, writes no file until a labelled child is first used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared.diskspace import disk_usage
from shared.monitoring.forklocks import renew_locks

if TYPE_CHECKING:  # a type only: shared.models imports this module
    from shared.models.manifest import Manifest

logger = logging.getLogger(__name__)

# prometheus_client's own variable, read by the library itself at import; we only follow it.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# From the fastest request (a one-row predict of a loaded model) to 10 s, past which a request
# is an outage (gunicorn's timeout is longer).
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# One predict call: a single row online up to one 100k-row chunk of a batch job.
COMPUTE_BUCKETS = (*HTTP_BUCKETS, 30, 60)
# A job: seconds for a small file up to the 12 h visibility timeout.
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200)
RATE_BUCKETS = (100, 300, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7)

MODEL = ("model", "version")
PATHS = ("online", "batch")

# --- HTTP (API) ---
HTTP_REQUESTS = Counter(
    "tabserve_http_requests_total", "HTTP requests answered, by route template, method, status.",
    ("route", "method", "status"))
HTTP_REQUEST_DURATION = Histogram(
    "tabserve_http_request_duration_seconds", "Time to answer an HTTP request.",
    ("route", "method"), buckets=HTTP_BUCKETS)

# --- Scoring (both paths: path = online | batch) ---
MODEL_COMPUTE = Histogram(
    "tabserve_model_compute_seconds", "Time inside the model's predict call alone.",
    (*MODEL, "path"), buckets=COMPUTE_BUCKETS)
ROWS_PREDICTED = Counter(
    "tabserve_rows_predicted_total", "Rows scored.", (*MODEL, "path"))
VALIDATION_ERRORS = Counter(
    "tabserve_validation_errors_total", "Inputs rejected by validation, by error code.",
    ("code", "path"))
REFUSALS_HELD = Counter(
    "tabserve_job_refusals_held_total",
    "Refused job submissions answered late, by HTTP status: their client was over its "
    "refusal bucket (TABSERVE_JOB_REFUSAL_BURST, TABSERVE_JOB_REFUSALS_PER_SECOND).",
    ("status",))

# --- Jobs (batch) ---
JOBS_SUBMITTED = Counter(
    "tabserve_jobs_submitted_total", "Jobs accepted by the API.", MODEL)
JOBS_FINISHED = Counter(
    "tabserve_jobs_total", "Jobs that reached a final status (succeeded|failed|cancelled).",
    (*MODEL, "status"))
JOB_DURATION = Histogram(
    "tabserve_job_duration_seconds", "Time from a job's start to its final status.",
    MODEL, buckets=JOB_BUCKETS)
JOB_ROWS_PER_SECOND = Histogram(
    "tabserve_job_rows_per_second", "Throughput of each finished job.", MODEL,
    buckets=RATE_BUCKETS)
# Attempts (shared.jobs.lease, shared.jobs.reaper); kind = job | part.
JOB_ATTEMPTS = Counter(
    "tabserve_job_attempts_total", "Attempts at a job or part that started running.",
    ("kind",))
# Rows of a job or part that a later attempt took over from a dead one's checkpoint, and
# rows it scored again (done by the dead attempt past its checkpoint, or all, without one).
JOB_ROWS_RESUMED = Counter(
    "tabserve_job_rows_resumed_total",
    "Rows a re-delivered attempt took over from an earlier attempt's checkpoint.", ("kind",))
JOB_ROWS_RESCORED = Counter(
    "tabserve_job_rows_rescored_total",
    "Rows scored again by a re-delivered attempt (past the checkpoint, or all without one).",
    ("kind",))
# reason = worker_lost (an attempt's lease expired) | redis_restart | message_lost (a queued
# job's message re-sent after the broker lost it).
JOBS_REQUEUED = Counter(
    "tabserve_jobs_requeued_total", "Jobs and parts sent again by the reaper, by reason.",
    ("kind", "reason"))
JOB_RECORDS_RESTORED = Counter(
    "tabserve_job_records_restored_total",
    "Job records Redis had lost, put back from their copies in storage (shared.jobs.mirror), "
    "by what the job was: final (as it ended) or live (queued again).", ("state",))
# mostrecent: one reaper at a time counts them; whichever ran last is the truth.
JOBS_WAITING_RETRY = Gauge(
    "tabserve_jobs_waiting_retry", "Queued jobs waiting for their next attempt after a lost one.",
    ("queue",), multiprocess_mode="mostrecent")

# --- Models ---
# max: the slowest load of this version by any process since start is what start-up pays.
MODEL_LOAD_SECONDS = Gauge(
    "tabserve_model_load_seconds", "Time to load (unpickle, verify) a model version.",
    MODEL, multiprocess_mode="max")
# livemax: 1 while at least one live process holds the version; set 0 when a process evicts it.
MODEL_INFO = Gauge(
    "tabserve_model_info", "A loaded model version and its artifact's sha256 (value 1).",
    (*MODEL, "sha256"), multiprocess_mode="livemax")
# livemax: 1 while a live process answers unpinned requests (the `live` alias) or the alias
# with this version; two versions at 1 for long means a process could not switch.
MODEL_SERVING = Gauge(
    "tabserve_model_serving", "The version a process serves for a model's alias (value 1).",
    (*MODEL, "alias"), multiprocess_mode="livemax")
MODEL_SWITCH_FAILURES = Counter(
    "tabserve_model_switch_failures_total",
    "Loads of a promoted (or re-aliased) version that failed; the process kept the old one.",
    MODEL)

# --- Processes (the default process collector does not work in multiprocess mode) ---
# livesum: the role's total over processes alive now; a dead worker's memory is not in use.
PROCESS_RESIDENT_MEMORY = Gauge(
    "tabserve_process_resident_memory_bytes", "Resident memory of the role's live processes.",
    ("role",), multiprocess_mode="livesum")
# A counter, not a livesum gauge: the sum must not drop when a process exits, or rate() would
# read the drop as a counter reset and report a spike.
PROCESS_CPU_SECONDS = Counter(
    "tabserve_process_cpu_seconds_total", "User+system CPU time of the role's processes.",
    ("role",))

# --- Drift and quality ---
# mostrecent: PSI is computed over a window by one process (a job's worker, a periodic task);
# the newest computation supersedes older ones, while max would pin an old spike until restart
# and keep the alert from resolving. Non-live, so a recycled pool child's result remains.
FEATURE_DRIFT_PSI = Gauge(
    "tabserve_feature_drift_psi", "Population stability index of a feature vs training data.",
    (*MODEL, "feature"), multiprocess_mode="mostrecent")
PREDICTION_DRIFT_PSI = Gauge(
    "tabserve_prediction_drift_psi", "Population stability index of predictions vs holdout.",
    MODEL, multiprocess_mode="mostrecent")
FEEDBACK = Counter(
    "tabserve_feedback_total", "Ground-truth labels received for past predictions.", MODEL)
PREDICTIONS_DROPPED = Counter(
    "tabserve_prediction_log_dropped_total",
    "Online predictions not kept for feedback (Redis near its maxmemory, or away).",
    ("reason",))
# mostrecent for the same reason as PSI: each value is computed from the shared feedback store
# (not a per-process tally), so the newest is the truth whichever process wrote it.
ACCURACY = Gauge(
    "tabserve_accuracy", "Accuracy of recent predictions against feedback (classifiers).",
    MODEL, multiprocess_mode="mostrecent")
MEAN_ABSOLUTE_ERROR = Gauge(
    "tabserve_mean_absolute_error", "MAE of recent predictions against feedback (regressors).",
    MODEL, multiprocess_mode="mostrecent")
HOLDOUT_ACCURACY = Gauge(
    "tabserve_holdout_accuracy", "Accuracy on the holdout set, from the model's manifest.",
    MODEL, multiprocess_mode="mostrecent")
HOLDOUT_MEAN_ABSOLUTE_ERROR = Gauge(
    "tabserve_holdout_mean_absolute_error", "MAE on the holdout set, from the model's manifest.",
    MODEL, multiprocess_mode="mostrecent")

# --- Disk: where job files go, as this process sees it (dir = data | staging) ---
# mostrecent: every process of a target reads the same filesystem; the newest reading wins.
DISK_FREE_BYTES = Gauge(
    "tabserve_disk_free_bytes", "Free bytes where job files are written (data, staging).",
    ("dir",), multiprocess_mode="mostrecent")
DISK_SIZE_BYTES = Gauge(
    "tabserve_disk_size_bytes", "Size of the filesystem where job files are written.",
    ("dir",), multiprocess_mode="mostrecent")

WORKER_HEARTBEAT = Gauge(
    "tabserve_worker_heartbeat_timestamp_seconds",
    "When this worker last reached Redis (Unix time); its health check reads it.",
    ("node",), multiprocess_mode="max")  # one writer per worker replica: its main process

# In the order of the counts a QueueCollector reads (shared.jobs.store.QueueCounts).
QUEUE_GAUGES = (
    ("tabserve_queue_depth", "Jobs waiting for a worker."),
    ("tabserve_jobs_running", "Jobs being scored now."),
    ("tabserve_workers_active", "Worker processes with a live heartbeat."),
)


class QueueCollector:
    """Queue depth, running jobs and live workers, read from Redis at scrape time."""

    def __init__(self, read_fn: Callable[[], Sequence[int]]) -> None:
        self.read_fn = read_fn

    def describe(self) -> Iterable[Metric]:
        """The three gauges without values, so registering does not call read_fn."""
        return [GaugeMetricFamily(name, doc) for name, doc in QUEUE_GAUGES]

    def collect(self) -> Iterable[Metric]:
        """The three gauges, or nothing when the state cannot be read."""
        try:
            counts = self.read_fn()
            return [GaugeMetricFamily(name, doc, value=float(value))
                    for (name, doc), value in zip(QUEUE_GAUGES, counts, strict=True)]
        except Exception as exc:  # a scrape must not fail because Redis is away
            logger.debug("queue metrics skipped: %s: %s", type(exc).__name__, exc)
            return []


_extra_collectors: list[Collector] = []


def register_collector(collector: Collector) -> None:
    """Add a collector (e.g. QueueCollector) to what render_metrics exposes in this process."""
    if collector not in _extra_collectors:
        _extra_collectors.append(collector)


class _ProjectCollector:
    """This process's view: the multiprocess files (or the default registry) plus extras."""

    def collect(self) -> Iterator[Metric]:
        path = os.environ.get(MULTIPROC_ENV)
        if path:
            from shared.monitoring.metricsdir import locked

            with locked(path):  # not while a sweep folds dead processes' files
                found = list(multiprocess.MultiProcessCollector(None, path=path).collect())
            yield from found
        else:
            yield from REGISTRY.collect()
        for collector in list(_extra_collectors):
            yield from collector.collect()


def build_registry() -> CollectorRegistry:
    """A registry that reads the current metrics on every collect (for an HTTP exporter)."""
    registry = CollectorRegistry()
    registry.register(_ProjectCollector())
    return registry


def render_metrics() -> tuple[bytes, str]:
    """The exposition payload and its content type, for the API's /metrics."""
    return generate_latest(build_registry()), CONTENT_TYPE_PLAIN_0_0_4


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve render_metrics' content on a port from a daemon thread (the Celery main process)."""
    start_http_server(port, addr=addr, registry=build_registry())


def multiprocess_active() -> bool:
    """Whether this process's metrics are written to the multiprocess directory."""
    return values.ValueClass is not values.MutexValue


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (gunicorn child_exit, Celery worker_process_shutdown)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        multiprocess.mark_process_dead(pid, path)


_cpu_reported: dict[int, float] = {}  # by pid: a forked child's CPU times start at zero


def update_process_metrics(role: str) -> None:
    """Record this process's resident memory and CPU time under role (api | worker)."""
    process = psutil.Process()
    PROCESS_RESIDENT_MEMORY.labels(role=role).set(process.memory_info().rss)
    times = process.cpu_times()
    seconds = times.user + times.system
    pid = os.getpid()
    delta = seconds - _cpu_reported.get(pid, 0.0)
    cpu = PROCESS_CPU_SECONDS.labels(role=role)  # the series exists from the first call
    if delta > 0:
        cpu.inc(delta)
        _cpu_reported[pid] = seconds


def update_disk_metrics(dirs: Mapping[str, str | os.PathLike[str]]) -> None:
    """Record the free and total bytes of each directory's filesystem (by its role)."""
    for role, directory in dirs.items():
        usage = disk_usage(directory)
        if usage is not None:
            DISK_FREE_BYTES.labels(role).set(usage[0])
            DISK_SIZE_BYTES.labels(role).set(usage[1])


def init_model_series(model: str, version: str) -> None:
    """Create a model version's counters at zero, so increase() counts their first event."""
    for path in PATHS:
        ROWS_PREDICTED.labels(model, version, path)
    JOBS_SUBMITTED.labels(model, version)
    FEEDBACK.labels(model, version)


def record_model_loaded(manifest: Manifest, seconds: float) -> None:
    """Load time, info and holdout figures of a model version just loaded in this process."""
    model, version = manifest.name, str(manifest.version)
    init_model_series(model, version)
    MODEL_LOAD_SECONDS.labels(model, version).set(seconds)
    MODEL_INFO.labels(model, version, manifest.sha256).set(1)
    if "accuracy" in manifest.metrics:
        HOLDOUT_ACCURACY.labels(model, version).set(manifest.metrics["accuracy"])
    if "mae" in manifest.metrics:
        HOLDOUT_MEAN_ABSOLUTE_ERROR.labels(model, version).set(manifest.metrics["mae"])


def record_model_switch(name: str, alias: str, old: int | None, new: int) -> None:
    """This process now serves `new` for name@alias (instead of `old`)."""
    if old is not None:
        MODEL_SERVING.labels(name, str(old), alias).set(0)
    MODEL_SERVING.labels(name, str(new), alias).set(1)


def record_model_switch_failed(name: str, version: int) -> None:
    """A version an alias moved to could not be loaded; the old one is still served."""
    MODEL_SWITCH_FAILURES.labels(name, str(version)).inc()


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """metric.labels(*labels), cached: the request path skips the library's label checks."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP request answered."""
    child(HTTP_REQUESTS, route, method, str(status)).inc()
    child(HTTP_REQUEST_DURATION, route, method).observe(seconds)


def record_prediction(manifest: Manifest, path: str, rows: int, seconds: float) -> None:
    """One predict call: its compute time and the rows it scored."""
    model, version = manifest.name, str(manifest.version)
    child(MODEL_COMPUTE, model, version, path).observe(seconds)
    child(ROWS_PREDICTED, model, version, path).inc(rows)


def record_drift(manifest: Manifest, features: Mapping[str, float], prediction: float | None,
                 ) -> None:
    """Publish a window's PSI per feature and of the predictions."""
    model, version = manifest.name, str(manifest.version)
    for feature, value in features.items():
        FEATURE_DRIFT_PSI.labels(model, version, feature).set(value)
    if prediction is not None:
        PREDICTION_DRIFT_PSI.labels(model, version).set(prediction)


def init_job_series(model: str, version: str, statuses: Iterable[str]) -> None:
    """Create a model version's job counters at zero, one per final status (the job code
    calls this when it accepts a job: the statuses are named there)."""
    for status in statuses:
        JOBS_FINISHED.labels(model, version, status)


def record_job_finished(model: str, version: str, status: str, seconds: float | None = None,
                        rows: int = 0) -> None:
    """A job reached a final status; a succeeded one gives its duration and rows."""
    JOBS_FINISHED.labels(model, version, status).inc()
    if seconds:
        JOB_DURATION.labels(model, version).observe(seconds)
        JOB_ROWS_PER_SECOND.labels(model, version).observe(rows / seconds)


def record_predictions_dropped(reason: str, count: int) -> None:
    """Online predictions the prediction log did not keep, and why."""
    PREDICTIONS_DROPPED.labels(reason).inc(count)


def record_feedback(models: list[dict]) -> None:
    """Labels received and the rolling accuracy (or MAE) of each model version."""
    for entry in models:
        model, version = entry["name"], str(entry["version"])
        FEEDBACK.labels(model, version).inc(entry["labels"])
        if "accuracy" in entry:
            ACCURACY.labels(model, version).set(entry["accuracy"])
        if "mean_absolute_error" in entry:
            MEAN_ABSOLUTE_ERROR.labels(model, version).set(entry["mean_absolute_error"])


# A thread of the parent inside a metric at the fork would leave the child its lock, held for
# good (shared.monitoring.forklocks). Every metric here is in the default registry.
os.register_at_fork(after_in_child=lambda: renew_locks(REGISTRY))
