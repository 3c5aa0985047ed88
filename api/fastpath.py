"""The scoring routes' plain requests, answered from the WSGI environ without Flask.

POST /predict, /invocations and /v2/models/<m>/infer are most of what the API answers, and
Flask's request context, URL routing, hooks and Response object cost about as much per
request as validating and scoring one row (docs/benchmarks.md, "/predict per request" and
"The scoring routes' fast path"). A request of the plain kind (its route's content type, no
query string but `?model=<ref>`, no `Prefer`, a Content-Length within the body limit,
headers within theirs) is answered here by its view's `fast` twin (api/views/predict.py,
mlflow.py, v2.py: the same shared/online calls on a body already read), with the headers,
metric and access-log line the app's hooks give every answer (api.requestlog).

Anything else goes on to the Flask app, which answers it as it always has: another content
type, another query string (V2 infer ignores its query, as its view does), `Prefer:
respond-async`, a key the gate refuses, a body that fails to arrive, and any error from
parsing to scoring, so that every error keeps the one shape its route gives. What was done
here already is handed over in the environ (the gate's verdict, the body read or its
failure, the start time), so nothing is counted or read twice. Scoring is the last step
that can fail, and it fails before it records anything.

TABSERVE_ONLINE_FAST_PATH=0 sends every request through Flask.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from api.requestlog import SECURITY_HEADERS, STARTED, log_request, request_id
from api.upload import PacedInput
from api.views import EARLY_BODY, FastAnswer, mlflow, predict, read_length, v2
from shared.security.roles import Action

if TYPE_CHECKING:
    from shared.services import Services

# What the Flask app finds in the environ when a request goes on to it: the gate's verdict
# here (a Principal, or the error it raised; api/__init__.py), the body or the error reading
# it (api.views.read_body) and the start time (api.requestlog).
ADMITTED = "tabserve.admitted"

logger = logging.getLogger(__name__)
_SECURITY = list(SECURITY_HEADERS.items())
_V2_INFER = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
# A route: its URL rule as the app's metrics name it, its view's content-type check, and
# the view's fast twin.
Route = tuple[str, Callable[[str, dict[str, Any]], bool], FastAnswer]
_EXACT: dict[str, Route] = {
    "/predict": ("/predict", predict.accepts, predict.fast),
    "/invocations": ("/invocations", mlflow.accepts, mlflow.fast),
}
_V2: tuple[Route, Route] = (
    ("/v2/models/<name>/infer", v2.accepts, v2.fast),
    ("/v2/models/<name>/versions/<version>/infer", v2.accepts, v2.fast),
)

StartResponse = Callable[..., Any]


def headers_fit(environ: dict[str, Any], limit: int) -> bool:
    """Whether no request header is longer than `limit` bytes, name and value: a header's
    environ key is at least as long as its name, so when no key and value together pass
    the limit, no header does (api/__init__.py names the one that does)."""
    return all(len(key) + len(value) <= limit for key, value in environ.items()
               if type(value) is str)


class FastScoring:
    """WSGI middleware in front of the Flask app (`wsgi_app`): plain scoring requests are
    answered here, the rest go on."""

    def __init__(self, rt: Services, wsgi_app: Callable[..., Any]) -> None:
        self.rt = rt
        self.app = wsgi_app
        settings = rt.settings
        self.limit = settings.max_body_bytes
        self.header_limit = settings.max_header_bytes
        self.gate = rt.gate if rt.gate.enabled else None
        self.rate = settings.upload_min_bytes_per_second
        self.grace = settings.upload_grace_seconds
        self.metrics = settings.monitoring
        self.access_log = settings.access_log

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST" or "HTTP_PREFER" in environ:
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        route = _EXACT.get(path)
        if route is not None:
            query = environ.get("QUERY_STRING")
            if not query:
                params: tuple[str | None, ...] = (None,)
            elif query.startswith("model=") and "&" not in query and len(query) > 6:
                params = (unquote_plus(query[6:]),)  # ?model=<ref>, as request.args reads it
            else:
                return self.app(environ, start_response)
        elif path.startswith("/v2/") and (found := _V2_INFER.fullmatch(path)) is not None:
            params = found.groups()
            route = _V2[params[1] is not None]
        else:
            return self.app(environ, start_response)
        rule, accepts, answer = route
        mimetype = environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
        if not accepts(mimetype, environ):
            return self.app(environ, start_response)
        return self._answer(environ, start_response, rule, answer, params)

    def _answer(self, environ: dict[str, Any], start_response: StartResponse, rule: str,
                answer: FastAnswer, params: tuple[str | None, ...]) -> Iterable[bytes]:
        started = environ[STARTED] = time.perf_counter()
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or int(length) > self.limit \
                or not headers_fit(environ, self.header_limit):
            return self.app(environ, start_response)
        if self.gate is not None:
            try:
                environ[ADMITTED] = self.gate.admit(environ.get("HTTP_AUTHORIZATION"),
                                                    environ["PATH_INFO"], Action.PREDICT)
            except Exception as exc:  # noqa: BLE001 - the app raises it again, once
                environ[ADMITTED] = exc
                return self.app(environ, start_response)
        stream = environ["wsgi.input"]
        if self.rate:
            stream = environ["wsgi.input"] = PacedInput(stream, self.rate, self.grace,
                                                         environ.get("gunicorn.socket"),
                                                         int(length))
        try:
            raw = read_length(stream, int(length),
                              ends_early="wsgi.input_terminated" in environ)
        except Exception as exc:  # noqa: BLE001 - the app raises it again
            environ[EARLY_BODY] = exc
            return self.app(environ, start_response)
        try:
            reply = answer(self.rt, raw, environ, params)
        except Exception:  # noqa: BLE001 - the app answers it in its route's shape
            environ[EARLY_BODY] = raw
            return self.app(environ, start_response)
        rid = request_id(environ)
        headers = [("Content-Type", reply.content_type),
                   ("Content-Length", str(len(reply.payload))), *reply.headers,
                   ("X-Request-ID", rid), *_SECURITY,
                   ("X-Model-Version", reply.model_ref), ("X-Served-By", str(os.getpid()))]
        try:
            log_request(rule, "POST", environ["PATH_INFO"], 200,
                        (time.perf_counter() - started) * 1000, rid, reply.model_ref,
                        metrics=self.metrics, access_log=self.access_log)
        except Exception:  # the answer stands: it was scored and recorded
            logger.exception("request %s: its metric or access line failed", rid)
        start_response("200 OK", headers)
        return [reply.payload]
