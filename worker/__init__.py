"""The Celery worker: a thin adapter that turns task messages into shared/ calls."""
