"""Celery entry point: `celery -A worker.app:celery_app worker` (what `tabserve worker` runs)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import (
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from shared.config import Settings
from shared.jobs.pipeline import configure_arrow, lower_priority
from shared.jobs.queue import make_celery
from shared.logs import configure_logging
from shared.services import Services
from shared.storage import is_local, local_dirs

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10
settings = Settings.from_env()
celery_app = make_celery(settings)
# Imported by the worker at start (Celery's `include`): worker.tasks imports this module, so
# importing it from here would make an import cycle.
celery_app.conf.include = ["worker.tasks"]
_stopping = threading.Event()


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    # Connected so that Celery leaves the root logger to us.
    configure_logging(settings.log_level)


_runtime: Services | None = None


def runtime() -> Services:
    """This process's runtime (model cache, job store, storage), built on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Services(settings)
    return _runtime


@worker_process_init.connect
def _init_process(**_: Any) -> None:
    # A pool child must not share the parent's Redis connections: build its own.
    global _runtime
    lower_priority(settings.worker_nice)
    _runtime = Services(settings)
    configure_arrow(settings.worker_threads)
    if settings.preload_model:
        _runtime.models.warm(settings.default_model)


@worker_init.connect
def _init_worker(sender: Any = None, **_: Any) -> None:
    # Main process, before the pool forks: exporter and heartbeat. (The metrics directory
    # is cleaned by `tabserve worker` before Python starts: metrics made at import already
    # hold their files open, so cleaning here would lose them.)
    from shared.monitoring import metrics

    if settings.worker_metrics_port:
        try:
            metrics.start_metrics_server(settings.worker_metrics_port,
                                         settings.worker_metrics_bind)
        except OSError as exc:
            logger.warning("worker metrics: port %d unavailable: %s",
                           settings.worker_metrics_port, exc)
    processes = int(getattr(sender, "concurrency", 0) or 1)
    name = getattr(sender, "hostname", None) or f"worker-{os.getpid()}"
    # Everything the threads use is imported and built here, before they start and before
    # the pool forks: a thread holding an import lock (or any lock) while the pool forks
    # leaves the child a lock that no thread will release, and the child hangs. (The locks
    # they take to record metrics are prometheus_client's, renewed in every forked child:
    # shared.monitoring.forklocks.)
    from shared.jobs.reaper import Reaper

    beat, reap, sweep = _built(), _built(), _built()
    reaper = Reaper(reap, f"{name}#{os.getpid()}")
    threading.Thread(target=_heartbeat, args=(beat, name, processes), name="heartbeat",
                     daemon=True).start()
    # Finds jobs whose attempt lost its worker (here or in any other worker) and sends them
    # on; one worker at a time does the work, under a lock in Redis.
    threading.Thread(target=reaper.run, args=(_stopping,), name="reaper", daemon=True).start()
    threading.Thread(target=_sweep, args=(sweep,), name="sweeper", daemon=True).start()


def _built() -> Services:
    rt = Services(settings)
    _ = rt.redis, rt.storage, rt.jobs, rt.celery
    return rt


def _sweep(rt: Services) -> None:
    # This worker's metrics directory (files of pool processes that died), and a local data
    # directory (once per interval across the cluster, under a lock in Redis). A bucket is
    # swept by the pool processes after each job instead (worker.tasks).
    from shared.jobs.retention import purge_expired
    from shared.monitoring.metricsdir import remove_dead_dirs, sweep_dead

    every = settings.sweep_interval_seconds
    while not _stopping.wait(min(every, 60)):
        try:
            sweep_dead()
            remove_dead_dirs()
            if is_local(settings):
                purge_expired(rt.jobs, rt.storage, every, settings.failed_job_grace_seconds)
        except Exception as exc:  # Redis or the disk away: next time
            logger.warning("sweep failed: %s: %s", type(exc).__name__, exc)


def _heartbeat(rt: Services, name: str, processes: int) -> None:
    from shared.monitoring import metrics

    while True:
        try:
            rt.jobs.worker_heartbeat(name, processes)
            metrics.WORKER_HEARTBEAT.labels(name).set(time.time())  # read by the health check
            metrics.update_process_metrics("worker")
            metrics.update_disk_metrics(local_dirs(settings))
        except Exception as exc:  # Redis away: keep trying
            logger.debug("heartbeat failed: %s", exc)
        if _stopping.wait(HEARTBEAT_SECONDS):
            break
    try:
        rt.jobs.worker_gone(name)
    except Exception:  # best effort on the way out
        pass


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    from shared.monitoring.metrics import mark_process_dead

    mark_process_dead(pid or os.getpid())


@worker_shutdown.connect
def _shutdown(**_: Any) -> None:
    from shared.monitoring.metricsdir import remove_if_owned

    _stopping.set()
    remove_if_owned()

