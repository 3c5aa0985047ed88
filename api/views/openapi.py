"""GET /openapi.json (the OpenAPI document, shared/openapi/) and GET /docs (Swagger UI,
served with its assets from api/static/, no CDN)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from api.views import runtime
from shared.openapi.document import OpenAPIDocument
from shared.security.roles import Action

bp = Blueprint("openapi", __name__)

ASSETS = ("static/vendor/swagger-ui/swagger-ui.css", "static/vendor/swagger-ui/"
          "swagger-ui-bundle.js", "static/docs/init.js")
# Relative URLs: the page works under whatever prefix a proxy serves the API at.
PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tabserve API</title>
<link rel="stylesheet" href="{ASSETS[0]}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS[1]}"></script>
<script src="{ASSETS[2]}"></script>
</body>
</html>
"""
# Swagger UI sets style attributes and shows data: images; its scripts and the document
# come from this origin only.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def _document() -> OpenAPIDocument:
    cached = current_app.extensions.get("tabserve.openapi")
    if cached is None:
        rt = runtime()
        cached = OpenAPIDocument(rt.store, rt.settings.default_model)
        current_app.extensions["tabserve.openapi"] = cached
    return cached


@bp.get("/openapi.json")
def document() -> Response:
    # A public path: the gate lets anyone in; the models' feature schemas only for a key
    # that may read models (everyone while authentication is off).
    caller = runtime().gate.identify(request.headers.get("Authorization"))
    with_models = caller is not None and caller.may(Action.READ_MODELS)
    return Response(_document().render(with_models), mimetype="application/json")


@bp.get("/docs")
def docs() -> Response:
    response = Response(PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response
