"""Ground truth that arrives later: join labels with logged predictions, track accuracy.

A prediction is labelled once: a second label for the same prediction id (in the same
request or a later one, from any API process) is not counted again but listed under
`duplicates` in the answer, so a client may safely retry a request. Each prediction id is
claimed in Redis in the same script that pushes its outcome: a bit per row of a job, a hash
field per online prediction (kept per 10-minute bucket, as the predictions are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from shared import keys
from shared.errors import JobNotFoundError, ModelLoadError, ValidationError
from shared.monitoring.predictions import lookup_job_prediction, lookup_online_prediction
from shared.redisguard import redis_errors

MAX_ITEMS = 10_000
MAX_DETAILS = 100

# KEYS[1]: the window; KEYS[j + 1]: item j's seen key (a job's bitmap, or a bucket's hash).
# ARGV: window size, seen TTL, then per item: kind ("bit" or "hash"), field, outcome.
# Returns 1/0 per item (counted or a duplicate), and the window.
CLAIM_AND_PUSH = """
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local counted = {}
for j = 1, #KEYS - 1 do
  local key, kind, field = KEYS[j + 1], ARGV[3 * j], ARGV[3 * j + 1]
  local new
  if kind == 'bit' then
    new = redis.call('SETBIT', key, tonumber(field), 1) == 0
  else
    new = redis.call('HSETNX', key, field, '1') == 1
  end
  redis.call('EXPIRE', key, ttl)
  counted[j] = 0
  if new then
    redis.call('LPUSH', KEYS[1], ARGV[3 * j + 2])
    counted[j] = 1
  end
end
redis.call('LTRIM', KEYS[1], 0, size - 1)
return {counted, redis.call('LRANGE', KEYS[1], 0, -1)}
"""


def parse_feedback(body: Any) -> list[tuple[str, Any]]:
    """(prediction_id, label) pairs from `[{"prediction_id": ..., "label": ...}, ...]`."""
    if not isinstance(body, list) or not body:
        raise ValidationError('body must be a non-empty array of {"prediction_id", "label"}')
    if len(body) > MAX_ITEMS:
        raise ValidationError(f"at most {MAX_ITEMS} feedback items per request")
    details, items = [], []
    for i, item in enumerate(body):
        problem = _item_problem(item)
        if problem is not None:
            details.append({"row": i, **problem})
        else:
            items.append((item["prediction_id"], item["label"]))
    if details:
        raise ValidationError(f"invalid feedback: {len(details)} bad item(s)",
                              details=details[:MAX_DETAILS])
    return items


def _item_problem(item: Any) -> dict[str, str] | None:
    if not isinstance(item, dict) or set(item) != {"prediction_id", "label"}:
        return {"message": 'must be {"prediction_id": ..., "label": ...}'}
    if not isinstance(item["prediction_id"], str):
        return {"field": "prediction_id", "message": "must be a string"}
    if not item["prediction_id"]:
        return {"field": "prediction_id", "message": "must not be empty"}
    if item["label"] is None or isinstance(item["label"], dict | list):
        return {"field": "label", "message": "must be a scalar"}
    return None


def class_key(value: Any) -> str:
    """A label as compared with a model's classes: 1, 1.0 and "1" are the same class."""
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and float(value).is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Match:
    """A feedback item joined with its prediction."""

    row: int  # the item's index in the request
    name: str
    version: int
    task: str
    classes: list[Any] | None
    predicted: Any
    seen_key: str
    kind: str  # how the seen key marks the prediction: "bit" (a job row) or "hash"
    field: str
    label: Any


class FeedbackStore:
    """Rolling outcomes per model version in Redis: 1/0 per label, or the absolute error."""

    def __init__(self, client: Any, jobs: Any, store: Any, window: int,
                 seen_ttl: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.jobs = jobs
        self.store = store
        self.window = window
        self.seen_ttl = seen_ttl

    def record(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        """Join each label with its prediction and update the rolling windows; 422 (and
        nothing counted) when a label cannot be one of its prediction's outcomes."""
        with redis_errors():
            matches, unmatched = self._match(items)
            check_labels(matches)
            scores, duplicates = self._push(matches, [pid for pid, _ in items])
        accepted = sum(s["labels"] for s in scores)
        return {"accepted": accepted, "unmatched": unmatched, "duplicates": duplicates,
                "models": scores}

    def _match(self, items: list[tuple[str, Any]]) -> tuple[list[Match], list[str]]:
        matches: list[Match] = []
        unmatched: list[str] = []
        cache: dict[str, Any] = {}
        for row, (prediction_id, label) in enumerate(items):
            try:
                match = self._lookup(prediction_id, cache)
            except (KeyError, ValueError, IndexError, JobNotFoundError, OSError):
                match = None
            if match is None or match.predicted is None:
                unmatched.append(prediction_id)
                continue
            match.row, match.label = row, label
            matches.append(match)
        return matches, unmatched

    def _lookup(self, prediction_id: str, cache: dict[str, Any]) -> Match:
        base, _, index = prediction_id.partition(".")
        if index and not (index.isascii() and index.isdigit()):
            raise KeyError(prediction_id)
        if "-" in base:  # a job id (UUID with dashes): <job_id>.<row>
            if base not in cache:
                cache[base] = self.jobs.get(base)
            job = cache[base]
            name, version = job.model_name, int(job.model_version)
            manifest = self._manifest(name, version, cache)
            if manifest is None:
                raise KeyError(prediction_id)
            row = int(index)
            value = lookup_job_prediction(self.r, base, row, manifest.classes)
            return Match(-1, name, version, manifest.task, manifest.classes, value,
                         keys.feedback_seen_job(base), "bit", str(row), None)
        raw = lookup_online_prediction(self.r, base)
        if raw is None:
            raise KeyError(prediction_id)
        entry = orjson.loads(raw)
        name, version, row = entry["m"], int(entry["v"]), int(index or 0)
        manifest = self._manifest(name, version, cache)
        classes = manifest.classes if manifest is not None else None
        # One hash per bucket of ids, as the predictions are kept (ids before buckets: one).
        bucket = base[:8] if len(base) == 32 else "legacy"
        return Match(-1, name, version, entry["t"], classes, entry["p"][row],
                     keys.feedback_seen_bucket(bucket), "hash", f"{base}.{row}", None)

    def _manifest(self, name: str, version: int, cache: dict[str, Any]) -> Any:
        """The model version's manifest (None when it cannot be read), once per request."""
        key = f"manifest:{name}:{version}"
        if key not in cache:
            try:
                cache[key] = self.store.manifest(name, version)
            except ModelLoadError:
                cache[key] = None
        return cache[key]

    def _push(self, matches: list[Match],
              ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        groups: dict[tuple[str, int, str], list[Match]] = {}
        for m in matches:
            groups.setdefault((m.name, m.version, m.task), []).append(m)
        script = self.r.register_script(CLAIM_AND_PUSH)
        scores, duplicates = [], []
        for (name, version, task), group in groups.items():
            args: list[Any] = [self.window, self.seen_ttl]
            for m in group:
                args += [m.kind, m.field, outcome(m)]
            counted, window = script(keys=[keys.feedback_window(name, str(version))]
                                     + [m.seen_key for m in group], args=args)
            duplicates += [ids[m.row] for m, new in zip(group, counted, strict=True) if not new]
            scores.append(_score(name, version, task, sum(counted), window))
        return scores, duplicates


def check_labels(matches: list[Match]) -> None:
    """422 naming each item whose label is not one of its model's classes (classifiers) or
    not a finite number (regressors)."""
    details = []
    known: dict[tuple[str, int], set[str]] = {}
    for m in matches:
        problem = None
        if m.task != "classification":
            if not _is_number(m.label):
                problem = f"must be a number ({m.name}:{m.version} is a regression model)"
        elif m.classes is not None:
            names = known.setdefault((m.name, m.version), {class_key(c) for c in m.classes})
            if class_key(m.label) not in names:
                shown = ", ".join(str(c) for c in m.classes[:20])
                problem = f"{m.label!r} is not a class of {m.name}:{m.version} ({shown})"
        if problem is not None:
            details.append({"row": m.row, "field": "label", "message": problem})
    if details:
        rows = ", ".join(str(d["row"]) for d in details[:10])
        more = " ..." if len(details) > 10 else ""
        raise ValidationError(f"invalid label in item(s) {rows}{more}",
                              details=details[:MAX_DETAILS])


def _is_number(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and not isinstance(value, bool)


def outcome(m: Match) -> float:
    """1/0 for a label that agrees (or not) with the prediction; the absolute error."""
    if m.task == "classification":
        return 1.0 if class_key(m.label) == class_key(m.predicted) else 0.0
    return abs(float(m.label) - float(m.predicted))


def _score(name: str, version: int, task: str, labels: int,
           window: list[bytes]) -> dict[str, Any]:
    values = [float(v) for v in window]
    score: dict[str, Any] = {"name": name, "version": version, "labels": labels,
                             "window": len(values)}
    if values:
        metric = "accuracy" if task == "classification" else "mean_absolute_error"
        score[metric] = sum(values) / len(values)
    return score
