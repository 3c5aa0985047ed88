"""GET /models and /models/<name>: the manifests (each linking its feature schema in the
OpenAPI document), aliases and live version; for admins, PUT/DELETE
/models/<name>/aliases/<alias> and POST /models/<name>/promote."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from api.views import json_body, json_response, principal, runtime
from shared.errors import ValidationError
from shared.models.aliases import LIVE
from shared.models.store import check_name
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
    check_name(name)
    versions = store.versions(name, fresh=True)
    manifests = [{**store.manifest(name, v).public(), "schema": schema_link(name, v)}
                 for v in versions]
    return json_response({"name": name, "versions": manifests, "latest": versions[-1],
                          "schema": schema_link(name, versions[-1]),
                          **store.lifecycle(name), "history": store.alias_history(name)})


@bp.put("/models/<name>/aliases/<alias>")
def put_alias(name: str, alias: str) -> Response:
    return json_response(_set_alias(name, alias, requested_version()))


@bp.delete("/models/<name>/aliases/<alias>")
def delete_alias(name: str, alias: str) -> Response:
    return json_response(_set_alias(name, alias, None))


@bp.post("/models/<name>/promote")
def promote(name: str) -> Response:
    return json_response(_set_alias(name, LIVE, requested_version()))


def requested_version() -> int:
    """The body's {"version": N}; a 422 otherwise."""
    body = json_body()
    version = body.get("version") if isinstance(body, dict) else None
    if type(version) is not int or version < 1:
        raise ValidationError('the body must be {"version": N}, N a version number',
                              details=[{"field": "version", "message": "a positive integer"}])
    return version


def _set_alias(name: str, alias: str, version: int | None) -> dict[str, Any]:
    store = runtime().store
    check_name(name)
    previous = store.set_alias(name, alias, version, principal().name or "api")
    return {"name": name, "alias": alias, "version": version, "previous": previous,
            **store.lifecycle(name)}
