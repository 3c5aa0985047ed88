"""GET /: the web page (models, one prediction, file uploads, recent jobs).

The page is static: api/static/ui/index.html, app.css and app.js, served by Flask's static
route under /static/ui/. It calls the JSON API from the browser with the key the user gives
it, so the page and its assets are public (roles.PUBLIC_PATHS, PUBLIC_PREFIXES) and every
call it makes passes the gate like any other client's."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

bp = Blueprint("ui", __name__)

# Scripts, styles and calls from this origin only: no inline script, no eval, no framing.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self'",
    "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'",
    "frame-ancestors 'none'",
])
# The other security headers (nosniff, no referrer, no framing) are every response's
# (api/requestlog.py), which keeps this policy in place of the API's default-src 'none'.
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}


@bp.get("/")
def index() -> Response:
    response = current_app.send_static_file("ui/index.html")
    response.headers.update(PAGE_HEADERS)
    return response
