"""The Celery app both sides use: the API sends jobs by task name, workers run them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from shared.config import Settings
from shared.jobs import broker

SCORE_JOB = "tabserve.score_job"
SCORE_PART = "tabserve.score_part"


PROC_ALIVE_SECONDS = 300


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured so that accepted jobs are not lost."""
    app = Celery("tabserve", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_acks_late=True,                   # ack when done, so a dead worker's job returns
        task_reject_on_worker_lost=True,       # requeue when a pool child dies mid-job
        worker_prefetch_multiplier=1,          # a worker holds one job at a time per process
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # A pool child loads the model before it reports up (worker.app _init_process);
        # Celery's 4 s default killed children whose load took longer, one after another
        # (bench/soak.py saw seven in a row on a loaded machine).
        worker_proc_alive_timeout=PROC_ALIVE_SECONDS,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue_name,
        task_ignore_result=True,               # job state lives in our own Redis record
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options=transport_options(settings),
        result_backend_transport_options=transport_options(settings),
        result_expires=settings.job_ttl_seconds,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    if urlsplit(settings.redis_url).scheme in broker.SCHEMES:
        app.conf.broker_transport = broker.TRANSPORT  # survives Redis dying mid-poll
    return app


def transport_options(settings: Settings) -> dict[str, Any]:
    """Redis transport options.

    A dead or frozen worker's job is found by its lease (shared.jobs.reaper), not by the
    broker: the visibility timeout outlasts the longest job allowed, so the broker never
    hands a live job's message to a second worker (and a message it does hand out again is
    dropped by the attempt check).
    """
    visibility = max(settings.visibility_timeout_seconds,
                     settings.job_time_limit_max_seconds + 3600)
    return {
        "visibility_timeout": visibility,
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
    }


def warm_queue(app: Celery) -> None:
    """Import what sending the first job needs (the broker's transport, the producer pool,
    the result backend every sent task's handle names), without connecting: done at
    start-up, so that a process's first job does not import them while its other threads
    wait (an import holds the import lock and the GIL)."""
    with app.connection_for_write() as connection:
        connection.transport  # noqa: B018 - resolving it imports kombu's Redis transport
    app.amqp.producer_pool  # noqa: B018
    app.backend  # noqa: B018


def send_score_job(app: Celery, settings: Settings, job_id: str, attempt: int = 1) -> None:
    """Queue an attempt at a job for the workers; raises when the broker cannot be reached.
    No result is asked for (job state is our own record): Celery would otherwise subscribe
    to the job's result channel, and unsubscribe when the handle is dropped, for each job."""
    app.send_task(SCORE_JOB, args=[job_id, attempt], queue=settings.queue_name, retry=True,
                  ignore_result=True,
                  retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                "interval_max": 0.5})


def send_score_part(app: Celery, settings: Settings, job_id: str, index: int,
                    attempt: int = 1) -> None:
    """Queue an attempt at one part of a job split across workers."""
    app.send_task(SCORE_PART, args=[job_id, index, attempt], queue=settings.queue_name,
                  retry=True, ignore_result=True,
                  retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5,
                                "interval_max": 2})
