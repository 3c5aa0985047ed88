"""Ground truth that arrives later: join labels with logged predictions, track accuracy."""

from __future__ import annotations

from typing import Any

import orjson

from shared import keys
from shared.errors import JobNotFoundError, ValidationError
from shared.jobs.store import redis_errors
from shared.monitoring.predictions import lookup_job_prediction, lookup_online_prediction

MAX_ITEMS = 10_000


def parse_feedback(body: Any) -> list[tuple[str, Any]]:
    """(prediction_id, label) pairs from `[{"prediction_id": ..., "label": ...}, ...]`."""
    if not isinstance(body, list) or not body:
        raise ValidationError('body must be a non-empty array of {"prediction_id", "label"}')
    if len(body) > MAX_ITEMS:
        raise ValidationError(f"at most {MAX_ITEMS} feedback items per request")
    details, items = [], []
    for i, item in enumerate(body):
        if not isinstance(item, dict) or set(item) != {"prediction_id", "label"}:
            details.append({"row": i, "message": 'must be {"prediction_id": ..., "label": ...}'})
        elif not isinstance(item["prediction_id"], str) or not item["prediction_id"]:
            details.append({"row": i, "field": "prediction_id", "message": "must be a string"})
        elif item["label"] is None or isinstance(item["label"], dict | list):
            details.append({"row": i, "field": "label", "message": "must be a scalar"})
        else:
            items.append((item["prediction_id"], item["label"]))
    if details:
        raise ValidationError(f"invalid feedback: {len(details)} bad item(s)",
                              details=details[:100])
    return items


class FeedbackStore:
    """Rolling outcomes per model version in Redis: 1/0 per label, or the absolute error."""

    def __init__(self, client: Any, jobs: Any, store: Any, window: int) -> None:
        self.r = client
        self.jobs = jobs
        self.store = store
        self.window = window

    def _lookup(self, prediction_id: str, cache: dict[str, Any]) -> tuple[str, int, str, Any]:
        base, _, index = prediction_id.partition(".")
        if "-" in base:  # a job id (UUID with dashes): <job_id>.<row>
            if base not in cache:
                cache[base] = self.jobs.get(base)
            job = cache[base]
            name, version = job.model_name, int(job.model_version)
            key = f"manifest:{name}:{version}"
            if key not in cache:
                cache[key] = self.store.manifest(name, version)
            manifest = cache[key]
            value = lookup_job_prediction(self.r, base, int(index), manifest.classes)
            return name, version, manifest.task, value
        raw = lookup_online_prediction(self.r, base)
        if raw is None:
            raise KeyError(prediction_id)
        entry = orjson.loads(raw)
        labels = entry["p"]
        value = labels[int(index)] if index else labels[0]
        return entry["m"], int(entry["v"]), entry["t"], value

    def record(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        """Join each label with its prediction and update the rolling windows."""
        outcomes: dict[tuple[str, int, str], list[float]] = {}
        unmatched: list[str] = []
        cache: dict[str, Any] = {}
        with redis_errors():
            for prediction_id, label in items:
                try:
                    name, version, task, predicted = self._lookup(prediction_id, cache)
                except (KeyError, ValueError, IndexError, JobNotFoundError, OSError):
                    unmatched.append(prediction_id)
                    continue
                if predicted is None:
                    unmatched.append(prediction_id)
                    continue
                if task == "classification":
                    outcome = 1.0 if str(label) == str(predicted) else 0.0
                else:
                    try:
                        outcome = abs(float(label) - float(predicted))
                    except (TypeError, ValueError):
                        raise ValidationError(f"label of {prediction_id!r} must be a number "
                                              "(regression model)") from None
                outcomes.setdefault((name, version, task), []).append(outcome)
            scores = self._push(outcomes)
        accepted = sum(len(v) for v in outcomes.values())
        return {"accepted": accepted, "unmatched": unmatched, "models": scores}

    def _push(self, outcomes: dict[tuple[str, int, str], list[float]]) -> list[dict[str, Any]]:
        scores = []
        for (name, version, task), values in outcomes.items():
            key = keys.feedback_window(name, str(version))
            pipe = self.r.pipeline()
            pipe.lpush(key, *values)
            pipe.ltrim(key, 0, self.window - 1)
            pipe.lrange(key, 0, -1)
            window = [float(v) for v in pipe.execute()[2]]
            mean = sum(window) / len(window)
            metric = "accuracy" if task == "classification" else "mean_absolute_error"
            scores.append({"name": name, "version": version, "labels": len(values),
                           "window": len(window), metric: mean})
        return scores
