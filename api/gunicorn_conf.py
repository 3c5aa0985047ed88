"""gunicorn settings for `tabserve api`; overridable through TABSERVE_* and GUNICORN_CMD_ARGS."""

import os

bind = os.environ.get("TABSERVE_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("TABSERVE_WEB_WORKERS") or os.cpu_count() or 1)
worker_class = "sync"
timeout = int(os.environ.get("TABSERVE_WEB_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
max_requests = 0
accesslog = None  # the app logs one JSON line per request itself
errorlog = "-"
loglevel = os.environ.get("TABSERVE_LOG_LEVEL", "info").lower()
# One native thread per process for the model (OpenMP, BLAS), set before numpy loads.
raw_env = [
    f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}",
    f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '1')}",
    f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', '1')}",
]


def on_starting(server):  # noqa: ANN001, ANN201 - gunicorn hook signature
    """Master, before forking: a clean metrics directory for this run."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from shared.monitoring.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(directory)


def child_exit(server, worker):  # noqa: ANN001, ANN201
    """A worker died or was replaced: drop its live gauges."""
    from shared.monitoring.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def on_exit(server):  # noqa: ANN001, ANN201
    """Remove the metrics directory the CLI created for this run."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.environ.get("TABSERVE_METRICS_DIR_OWNED") == "1":
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
