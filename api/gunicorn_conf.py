"""gunicorn settings for `tabserve api`, from shared.config.Settings (TABSERVE_BIND, ...).

GUNICORN_CMD_ARGS and command-line flags still override them, as gunicorn documents.
"""

import os
import sys

from gunicorn.glogging import Logger

from shared.config import WORKER_CLASSES, Settings
from shared.errors import ConfigError

try:
    settings = Settings.from_env()
except ConfigError as exc:
    # Read by the master before it forks: a bad setting stops start-up with one line.
    sys.exit(f"error: {exc.message}")

bind = settings.bind
workers = settings.web_workers
# gevent (the default): one event loop per process, in which a slow client (a body trickling
# in, a long upload, a hung Redis) holds a greenlet, and keep-alive connections take turns
# (api/gevent_worker.py). gthread: the same with `threads` threads. Either way the worker's
# heartbeat goes on meanwhile, so `timeout` restarts a hung worker, not one receiving a long
# upload. Request bodies are paced by api/upload.py (a minimum rate); docs/deploy.md says what
# a front proxy adds.
# With S3 storage the API runs gthread (Settings.api_worker_class says why).
if settings.api_worker_class != settings.web_worker_class:
    print(f"warning: TABSERVE_WEB_WORKER_CLASS={settings.web_worker_class} does not work with "
          f"S3 storage: running {settings.api_worker_class} workers", file=sys.stderr)
worker_class = WORKER_CLASSES[settings.api_worker_class]
threads = settings.web_threads
# Connections a worker holds at once (in requests, or kept alive between them); beyond it, the
# listening socket's backlog waits for the other workers.
worker_connections = 1000 if settings.api_worker_class == "gevent" else \
    max(4 * settings.web_threads, 256)
timeout = settings.web_timeout
# gunicorn answers a header line over its own limit itself, in HTML; a generous one leaves the
# app to refuse a large header with its JSON 431 (TABSERVE_MAX_HEADER_BYTES, api/__init__.py).
limit_request_field_size = max(64 * 1024, 2 * settings.max_header_bytes)
graceful_timeout = 30
keepalive = 5
max_requests = 0
accesslog = None  # the app logs one JSON line per request itself
errorlog = "-"
loglevel = settings.log_level.lower()


def _with_pid(record):  # noqa: ANN001, ANN202 - a logging filter
    if record.process is None:
        record.process = os.getpid()
    return True


class _Logger(Logger):
    # gunicorn's format shows "[%(process)d]", and the app's configure_logging turns off
    # logging's pid lookup (logging.logProcesses) in the worker: without this filter every
    # worker's "Worker exiting" line ends in "--- Logging error ---".
    def setup(self, cfg):  # noqa: ANN001, ANN201
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.addFilter(_with_pid)


logger_class = _Logger
# One native thread per process for the model (OpenMP, BLAS), set before numpy loads.
raw_env = [
    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}",
    f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '1')}",
    f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', '1')}",
]


def on_starting(server):  # noqa: ANN001, ANN201 - gunicorn hook signature
    """Master, before forking: no metric files left from a previous run."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from shared.monitoring.metricsdir import clean

        clean(directory)


def post_fork(server, worker):  # noqa: ANN001, ANN201 - gunicorn hook signature
    """A worker, as it starts: the heap kept for upload pieces (shared.allocator)."""
    from shared.allocator import keep_heap

    if not keep_heap():
        server.log.info("allocator: mallopt unavailable, glibc's defaults kept")


def child_exit(server, worker):  # noqa: ANN001, ANN201
    """A worker died or was replaced: drop its live gauges, fold its counters into the
    archive files."""
    from shared.monitoring.metrics import mark_process_dead
    from shared.monitoring.metricsdir import sweep_dead

    mark_process_dead(worker.pid)
    try:
        sweep_dead()
    except OSError as exc:  # e.g. a full disk: the files stay until the next exit
        server.log.warning("metrics directory not swept: %s", exc)


def on_exit(server):  # noqa: ANN001, ANN201
    """Remove the metrics directory `tabserve api` made for this run."""
    from shared.monitoring.metricsdir import remove_if_owned

    remove_if_owned()
