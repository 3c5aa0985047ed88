"""GET /models and /models/<name>: the manifests, each linking its feature schema in the
OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response

from api.views import json_response, runtime
from shared.errors import ModelNotFoundError
from shared.models.store import parse_ref
from shared.openapi.document import schema_link

bp = Blueprint("models", __name__)


@bp.get("/models")
def list_models() -> Response:
    models, unreadable = runtime().store.catalog()
    for entry in models:
        latest = entry["latest"]
        latest["schema"] = schema_link(latest["name"], latest["version"])
    return json_response({"models": models, "unreadable": unreadable})


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    store = runtime().store
    parse_ref(name)
    versions = store.list_models(fresh=True).get(name)
    if not versions:
        raise ModelNotFoundError(f"unknown model {name!r}")
    manifests = [{**store.manifest(name, v).public(), "schema": schema_link(name, v)}
                 for v in versions]
    return json_response({"name": name, "versions": manifests, "latest": versions[-1],
                          "schema": schema_link(name, versions[-1])})
