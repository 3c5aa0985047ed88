"""Every Redis key tabserve uses, one function each, so a key is built in one place only.

Celery's own keys (the broker queue, kombu's unacked index) are Celery's and not here: tabserve
reads the queue's length (its name is `settings.queue_name`) and never writes Celery's keys.
"""

from __future__ import annotations

PREFIX = "tabserve:"


# --- jobs (shared.jobs.store) ---

def job(job_id: str) -> str:
    """A job's record: a hash."""
    return f"{PREFIX}job:{job_id}"


def job_parts(job_id: str) -> str:
    """A split job's parts: a hash of `<index>:<field>`."""
    return f"{PREFIX}job:{job_id}:parts"


def jobs_index() -> str:
    """Every job id, scored by creation time: a sorted set."""
    return f"{PREFIX}jobs"


def jobs_with_status(status: str) -> str:
    """Ids of the jobs in one live status (queued, running): a set, so depth is one SCARD."""
    return f"{PREFIX}jobs:{status}"


def jobs_retrying() -> str:
    """Ids of queued jobs waiting for their next attempt after a lost one: a set."""
    return f"{PREFIX}jobs:retrying"


def job_lease(job_id: str) -> str:
    """Held by the running attempt of a job (value: its attempt), with a TTL it renews."""
    return f"{PREFIX}job:{job_id}:lease"


def part_lease(job_id: str, index: int) -> str:
    """Held by the running attempt of one part of a split job, like job_lease."""
    return f"{PREFIX}job:{job_id}:lease:{index}"


def reaper_lock() -> str:
    """Held by the one worker whose reaper looks for lost attempts now."""
    return f"{PREFIX}reaper:lock"


def reaper_redis_run_id() -> str:
    """The Redis server run id the reaper last saw: a new one means Redis restarted."""
    return f"{PREFIX}reaper:run_id"


def workers() -> str:
    """Live worker pool processes, scored by their last heartbeat: a sorted set."""
    return f"{PREFIX}workers"


def retention_lock() -> str:
    """Held by the worker sweeping expired jobs' files."""
    return f"{PREFIX}retention:lock"


# --- predictions kept for feedback (shared.monitoring.predictions) ---

def prediction_bucket(bucket: str) -> str:
    """Online predictions of one 10-minute bucket (an id's first 8 hex digits): a hash."""
    return f"{PREFIX}predb:{bucket}"


def online_prediction(prediction_id: str) -> str:
    """One online prediction, as written before the buckets: a string."""
    return f"{PREFIX}pred:{prediction_id}"


def job_predictions(job_id: str) -> str:
    """A job's predicted labels, packed one entry per row: a string."""
    return f"{PREFIX}jobpred:{job_id}"


# --- monitoring ---

def feedback_window(model: str, version: str) -> str:
    """Recent feedback outcomes of a model version: a list."""
    return f"{PREFIX}feedback:{model}:{version}"


def feedback_seen_job(job_id: str) -> str:
    """Rows of a job that have had their label: a bitmap, so a label counts once."""
    return f"{PREFIX}feedback:seen:{job_id}"


def feedback_seen_bucket(bucket: str) -> str:
    """Online predictions of one bucket that have had their label: a hash."""
    return f"{PREFIX}feedback:seen:b:{bucket}"


def drift_members(model_ref: str) -> str:
    """Processes that posted drift counts for a model version, scored by time: a sorted set."""
    return f"{PREFIX}drift:{model_ref}"


def drift_counts(model_ref: str, member: str) -> str:
    """One process's drift window counts for a model version: a string."""
    return f"{PREFIX}drift:{model_ref}:{member}"


# --- security (shared.security) ---

def rate_window(key_name: str, window: int) -> str:
    """Requests an API key made in one fixed rate-limit window: a counter that expires."""
    return f"{PREFIX}rate:{key_name}:{window}"


def owner_jobs(key_name: str) -> str:
    """Jobs an API key submitted that may still be live, scored by submit time: a sorted
    set, trimmed of final jobs when the job cap is checked."""
    return f"{PREFIX}owner:{key_name}:jobs"


def idempotency_key(owner: str, key_digest: str) -> str:
    """A POST /jobs Idempotency-Key of one owner (the header's SHA-256, so any printable
    value makes a plain key): a string holding the job id and the request's fingerprint."""
    return f"{PREFIX}idem:{owner}:{key_digest}"
