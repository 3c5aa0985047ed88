"""Async promotion for the online routes: 202 and a job instead of predictions."""

from __future__ import annotations

from typing import Any

from flask import Response, g

from api.views import json_response, principal, runtime
from shared.errors import ForbiddenError
from shared.jobs.fromrows import RESPOND_ASYNC, submit_rows
from shared.models.loading import LoadedModel
from shared.redisguard import redis_errors
from shared.security.roles import Action


def respond_async(rows: list[Any], loaded: LoadedModel, asked: bool) -> Response:
    """Run rows as a job: 202, Location /jobs/<id>, and Preference-Applied when `asked`."""
    rt = runtime()
    who = principal()
    if not who.may(Action.SUBMIT_JOBS):
        raise ForbiddenError("this request would run as a job (Prefer: respond-async, or more "
                             f"rows than {rt.settings.max_online_rows}, "
                             "TABSERVE_MAX_ONLINE_ROWS), which this key's role may not submit")
    with redis_errors():
        rt.redis.ping()  # 503 before the rows are written, as POST /jobs does
    g.model_ref = loaded.manifest.ref
    job = submit_rows(rt, loaded, rows, owner=who.owner)
    headers = {"Location": f"/jobs/{job.id}"}
    if asked:
        headers["Preference-Applied"] = RESPOND_ASYNC
    return json_response(job.public(), status=202, headers=headers)
