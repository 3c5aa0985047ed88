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
