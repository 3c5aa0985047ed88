"""The headers api.requestlog puts on every response: the view's own kept where the
security headers are concerned, replaced where the request's id, model version or
Cache-Control are; each name once. And the request header limit, to the byte."""

from __future__ import annotations

import pytest
from flask import Flask, Response, g

from api import install_header_limit
from api.requestlog import SECURITY_HEADERS, install_request_logging
from shared.errors import HeaderTooLargeError


def _app() -> Flask:
    app = Flask(__name__)
    install_request_logging(app, metrics=False, access_log=False)

    @app.get("/page")
    def page() -> Response:
        return Response("<p>", mimetype="text/html", headers={
            "Content-Security-Policy": "default-src 'self'", "X-Request-ID": "the view's"})

    @app.get("/jobs/<job_id>")
    def job(job_id: str) -> Response:
        g.model_ref = "m:1"
        return Response("{}", headers={"Cache-Control": "max-age=60",
                                       "X-Model-Version": "stale"})

    return app


def _names(r) -> list[str]:
    return [name.lower() for name, _ in r.headers]


def test_a_page_keeps_its_policy_and_gets_the_other_security_headers():
    r = _app().test_client().get("/page", headers={"X-Request-ID": "req-1"})
    assert r.headers["Content-Security-Policy"] == "default-src 'self'"
    for name, value in SECURITY_HEADERS.items():
        if name != "Content-Security-Policy":
            assert r.headers[name] == value
    assert r.headers["X-Request-ID"] == "req-1"
    assert "X-Model-Version" not in r.headers
    assert len(_names(r)) == len(set(_names(r)))


def test_the_request_id_model_version_and_cache_control_replace_the_views():
    r = _app().test_client().get("/jobs/j1")
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Model-Version"] == "m:1" and r.headers["X-Served-By"].isdigit()
    assert len(r.headers["X-Request-ID"]) == 32
    assert r.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    assert len(_names(r)) == len(set(_names(r)))


def test_the_header_limit_counts_name_and_value_exactly():
    app = Flask(__name__)
    app.testing = True
    install_header_limit(app, 100)
    app.get("/")(lambda: "ok")
    client = app.test_client()
    assert client.get("/", headers={"X-Pad": "a" * 95}).status_code == 200  # 5 + 95 bytes
    assert client.get("/", headers={"Content-Type": "a" * 88}).status_code == 200
    with pytest.raises(HeaderTooLargeError, match=r"'X-Pad' is 101 bytes; at most 100"):
        client.get("/", headers={"X-Pad": "a" * 96})
    with pytest.raises(HeaderTooLargeError, match=r"'Content-Type' is 101 bytes"):
        client.get("/", headers={"Content-Type": "a" * 89})
