"""Open Inference Protocol V2 over REST (shared/online/v2.py), as tritonclient.http speaks it.

Errors on these routes answer V2's shape, {"error": "message"}, with the status of the
domain error (the rest of the API keeps its own shape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from flask import Blueprint, Response, g, request

from api.errors import register_plain_errors
from api.views import Reply, json_response, read_body, runtime, to_json
from shared.errors import (
    BadRequestError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from shared.models.loading import LoadedModel
from shared.models.store import parse_ref
from shared.monitoring.health import check_readiness
from shared.online import v2
from shared.services import Services

logger = logging.getLogger(__name__)

bp = Blueprint("v2", __name__, url_prefix="/v2")

BODY_TYPES = frozenset({"", "application/json", "application/octet-stream"})


register_plain_errors(bp)


@bp.get("")
def server_metadata() -> Response:
    try:
        ours = version("tabserve")
    except PackageNotFoundError:
        ours = "unknown"
    return json_response({"name": "tabserve", "version": ours,
                          "extensions": ["binary_tensor_data", "model_repository"]})


@bp.get("/health/live")
def live() -> Response:
    return json_response({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    report = check_readiness(runtime())
    return json_response({"ready": report["ready"]}, status=200 if report["ready"] else 503)


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    store = runtime().store
    resolved_name, resolved = store.resolve(model_ref(name, version))
    versions = [resolved] if version is not None else store.list_models()[resolved_name]
    return json_response(v2.model_metadata(store.manifest(resolved_name, resolved), versions))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    loaded = load(name, version)
    return json_response({"name": loaded.manifest.name,
                          "version": str(loaded.manifest.version), "ready": True})


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    rt = runtime()
    environ = request.environ  # headers read from it: no EnvironHeaders look-up per header
    if environ.get("HTTP_CONTENT_ENCODING", "identity") != "identity":
        raise UnsupportedMediaTypeError("Content-Encoding is not supported: send the body "
                                        "uncompressed")
    if request.mimetype not in BODY_TYPES and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaTypeError(f"Content-Type must be application/json or none, got "
                                        f"{request.mimetype}")
    raw = read_body(request.max_content_length)
    reply = infer_body(rt, raw, environ, lambda: load(name, version))
    return Response(reply.payload, mimetype=reply.content_type, headers=dict(reply.headers))


def accepts(mimetype: str, environ: dict[str, Any]) -> bool:
    """Whether api/fastpath.py may answer a request of this content type and encoding."""
    return environ.get("HTTP_CONTENT_ENCODING", "identity") == "identity" and \
        (mimetype in BODY_TYPES or mimetype.endswith("+json"))


def fast(rt: Services, raw: bytes, environ: dict[str, Any], params: tuple[Any, ...]) -> Reply:
    """infer() for a body already read: its 200 answer, or an error before anything is
    scored."""
    return infer_body(rt, raw, environ, lambda: rt.models.resolve(model_ref(*params)))


def infer_body(rt: Services, raw: bytes, environ: dict[str, Any],
               resolve: Callable[[], LoadedModel]) -> Reply:
    """A V2 infer body's answer, JSON or binary: the body parsed, then the model resolved
    (`resolve`), then scored."""
    header, buffers = v2.split_body(raw, environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
    body = v2.parse_header(header, rt.settings)
    loaded = resolve()
    answer = v2.infer(rt, loaded, body, buffers)
    if not answer.buffers:
        return Reply(to_json(answer.header), loaded.manifest.ref)
    head = orjson.dumps(answer.header)
    return Reply(head + answer.buffers, loaded.manifest.ref, "application/octet-stream",
                 (("Inference-Header-Content-Length", str(len(head))),))


@bp.post("/repository/index")
def repository_index() -> Response:
    return json_response(v2.repository_index(runtime()))


@bp.post("/repository/models/<name>/load")
def load_model(name: str) -> Response:
    load(name, None)
    return json_response({})


@bp.post("/repository/models/<name>/unload")
def unload_model(name: str) -> Response:
    raise BadRequestError(f"model {name!r} cannot be unloaded: every worker loads a model on "
                          "its first request and serves it while it is in the artifacts "
                          "directory")


@bp.route("/<path:rest>", methods=["GET", "POST"])
def unknown(rest: str) -> Response:
    # In V2's shape, so that a client's call this server lacks (model config, statistics,
    # shared memory, tracing) fails with a message it can show.
    raise NotFoundError(f"/v2/{rest} is not served: tabserve implements V2's health, "
                        "metadata, ready, infer and model repository endpoints")


def model_ref(name: str, version: str | None) -> str:
    ref = name if version is None else f"{name}:{version}"
    parse_ref(ref)  # a 422 naming a bad name or version
    return ref


def load(name: str, version: str | None) -> LoadedModel:
    """The model version, loaded in this process (a load failure is its error)."""
    loaded = runtime().models.resolve(model_ref(name, version))
    g.model_ref = loaded.manifest.ref
    return loaded
