"""POST /feedback: labels for earlier predictions, for rolling accuracy per model version."""

from __future__ import annotations

from flask import Blueprint, Response

from api.views import json_body, json_response, runtime
from shared.monitoring.feedback import FeedbackStore, parse_feedback
from shared.monitoring.metrics import record_feedback

bp = Blueprint("feedback", __name__)


@bp.post("/feedback")
def post_feedback() -> Response:
    rt = runtime()
    items = parse_feedback(json_body())
    settings = rt.settings
    # A label is claimed for as long as its prediction can be found.
    seen_ttl = max(settings.prediction_ttl_seconds, settings.job_ttl_seconds)
    store = FeedbackStore(rt.redis, rt.jobs, rt.store, settings.feedback_window, seen_ttl)
    result = store.record(items)
    record_feedback(result["models"])
    return json_response(result)
