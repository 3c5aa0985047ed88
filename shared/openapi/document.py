"""The OpenAPI 3.1 document: component schemas from the pydantic models that validate
requests (shared/jobs/submit.py) and describe bodies and answers (shapes.py, protocols.py),
the paths from operations.py, and one component per model version's feature schema, from
its manifest. The generic part is built once per process; the per-model part again only when
the model store's listing (names and versions) changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from shared.errors import ModelLoadError, TabserveError
from shared.jobs.submit import InputSource, JobOptions
from shared.models.manifest import Manifest
from shared.models.schema import FeatureSpec
from shared.online.mlflow import tabserve_version
from shared.openapi import protocols, shapes
from shared.openapi.examples import with_examples
from shared.openapi.operations import ERROR_TEXT, Operation, json_of, operations, ref

if TYPE_CHECKING:
    from shared.models.store import ModelStore

REQUESTS: list[type[BaseModel]] = [
    shapes.PredictRequest, shapes.FeedbackRequest, JobOptions, InputSource,
    protocols.V2InferRequest, protocols.V1PredictRequest, protocols.MlflowRequest]
ANSWERS: list[type[BaseModel]] = [
    shapes.Error, shapes.PredictResponse, shapes.ModelList, shapes.ModelDetail,
    shapes.AliasRequest, shapes.AliasResult, shapes.Alive,
    shapes.Check, shapes.Readiness, shapes.FeedbackResult, shapes.JobRecord, shapes.JobList,
    shapes.ValidationReport,
    protocols.V2Error, protocols.V2ServerMetadata, protocols.V2Live, protocols.V2Ready,
    protocols.V2ModelMetadata, protocols.V2ModelReady, protocols.V2RepositoryIndex,
    protocols.V2Empty, protocols.V2InferResponse, protocols.V1PredictResponse,
    protocols.V1ModelReady, protocols.V1ModelList, protocols.V1Error, protocols.MlflowError,
    protocols.MlflowResponse]
COMPONENT_PREFIX = "Features."
SECURITY = "apiKey"
DESCRIPTION = (
    "Online predictions, batch scoring jobs, and the Open Inference Protocol (V2), KServe "
    "V1 and MLflow scoring protocols over the same models. With API keys configured, every "
    "operation but the public ones (marked with no security requirement) needs "
    "`Authorization: Bearer <key>`; with none configured the API is open. Errors of "
    "tabserve's own routes have one shape, `Error`; the V1, V2 and MLflow routes answer in "
    "their protocol's shape. Each model version's feature schema is the component "
    "`Features.<name>.<version>` (shown to keys that may read models).")
TAGS = [("predict", "Online predictions"), ("models", "Model versions and their manifests"),
        ("jobs", "Batch scoring of CSV and Parquet files"),
        ("monitoring", "Health, readiness, metrics and feedback"),
        ("v2", "Open Inference Protocol (KServe, Triton, MLServer)"),
        ("v1", "KServe's V1 protocol (TensorFlow Serving's REST API)"),
        ("mlflow", "MLflow's scoring server and SageMaker's container contract"),
        ("docs", "This document")]


def component_name(name: str, version: int) -> str:
    """The component of a model version's feature schema."""
    return f"{COMPONENT_PREFIX}{name}.{version}"


def schema_link(name: str, version: int) -> str:
    """Where a model version's feature schema is, as GET /models/<name> shows it."""
    return f"/openapi.json#/components/schemas/{component_name(name, version)}"


def feature_schema(spec: FeatureSpec) -> dict[str, Any]:
    """The JSON Schema of one feature's value, as /predict's validator accepts it."""
    kind = {"number": "number", "integer": "integer", "boolean": "boolean",
            "category": "string"}[spec.type]
    schema: dict[str, Any] = {"type": [kind, "null"] if spec.nullable else kind}
    if spec.type == "category" and not spec.allow_unknown and spec.categories is not None:
        schema["enum"] = [*spec.categories, *([None] if spec.nullable else [])]
    if spec.min is not None and spec.max is not None:
        schema["description"] = f"in training data: {spec.min:g} to {spec.max:g} (not enforced)"
    return schema


def row_schema(manifest: Manifest) -> dict[str, Any]:
    """One row of a model version: an object of exactly its features."""
    features = manifest.features
    return {"title": f"{manifest.ref} features", "type": "object",
            "description": f"A row for model {manifest.ref} ({manifest.task}), as "
                           "/predict's `features` (or an item of `instances`) takes it.",
            "properties": {f.name: feature_schema(f) for f in features},
            "required": [f.name for f in features], "additionalProperties": False}


def model_components(store: ModelStore, listing: dict[str, list[int]]) -> dict[str, Any]:
    """One component per readable model version."""
    components = {}
    for name, versions in listing.items():
        for version in versions:
            try:
                manifest = store.manifest(name, version)
            except ModelLoadError:
                continue  # listed under `unreadable` by GET /models
            components[component_name(name, version)] = row_schema(manifest)
    return components


def component_schemas() -> dict[str, Any]:
    """Every component schema of the generic document."""
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((m, "validation") for m in REQUESTS), *((m, "serialization") for m in ANSWERS)]
    _, top = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = top["$defs"]
    options = schemas["JobOptions"]["properties"]
    schemas["JobUpload"] = {
        "type": "object", "required": ["file"],
        "description": "A multipart upload: the file and the job's options as form fields.",
        "properties": {"file": {"type": "string", "contentMediaType": "application/octet-stream",
                                "description": "CSV or Parquet"}, **options}}
    schemas["JobFromURL"] = {
        "type": "object", "required": ["input_url"], "additionalProperties": False,
        "description": "A file already in the store (TABSERVE_INPUT_URL_PREFIXES), and the "
                       "job's options.",
        "properties": {**schemas["InputSource"]["properties"], **options}}
    return schemas


def without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's schema without its `null` branch: a query parameter is absent instead."""
    branches = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if len(branches) == 1:
        return {**rest, **branches[0]}
    return {k: v for k, v in schema.items() if k != "default" or v is not None}


def error_content(shape: str) -> dict[str, Any]:
    """The content of an error answer: one shape, or "A|B" for either."""
    names = shape.split("|")
    if len(names) == 1:
        return json_of(shape)
    return {"application/json": {"schema": {"anyOf": [ref(n) for n in names]}}}


def responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, (description, content) in op.ok.items():
        answer: dict[str, Any] = {"description": description}
        if content is not None:
            answer["content"] = content
        if status in op.headers:
            answer["headers"] = op.headers[status]
        out[str(status)] = answer
    for status in op.statuses:
        answer = {"description": ERROR_TEXT[status], "content": error_content(op.shape)}
        if status == 401:
            answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 429:
            answer["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        out.setdefault(str(status), answer)
    return out


def operation_object(op: Operation, operation_id: str, options: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {"operationId": operation_id, "summary": op.summary,
                           "tags": [op.tag], "responses": responses(op)}
    if op.description:
        obj["description"] = op.description
    params = list(op.params)
    if op.endpoint == "jobs.create_job":  # the options, also taken as query parameters
        params += [{"name": key, "in": "query", "schema": without_null(schema)}
                   for key, schema in options.items()]
    if params:
        obj["parameters"] = params
    if op.body is not None:
        obj["requestBody"] = {"required": True, "content": op.body}
    if op.public:
        obj["security"] = []
    return obj


def paths(ops: list[Operation], options: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for op in ops:
        seen[op.endpoint] = seen.get(op.endpoint, 0) + 1
        operation_id = op.endpoint.replace(".", "_")
        if seen[op.endpoint] > 1:
            operation_id += f"_{seen[op.endpoint]}"
        out.setdefault(op.path, {})[op.method] = operation_object(op, operation_id, options)
    return out


def build_document() -> dict[str, Any]:
    """The document without per-model components."""
    schemas = component_schemas()
    return {
        "openapi": "3.1.0",
        "info": {"title": "tabserve", "version": tabserve_version(), "description": DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": [{"name": n, "description": d} for n, d in TAGS],
        "paths": paths(operations(), schemas["JobOptions"]["properties"]),
        "components": {
            "schemas": schemas,
            "securitySchemes": {SECURITY: {
                "type": "http", "scheme": "bearer",
                "description": "An API key (`tabserve keys create`); needed only when keys "
                               "are configured."}}},
        "security": [{SECURITY: []}],
    }


class OpenAPIDocument:
    """The document, serialized: built once, its per-model part rebuilt when the model
    store lists other names or versions (its listing is cached for a few seconds)."""

    def __init__(self, store: ModelStore, default_model: str | None = None) -> None:
        self.store, self.default_model = store, default_model
        self._base = build_document()
        self._generic = orjson.dumps(self._base)
        self._with_models: tuple[Any, bytes] = (None, b"")

    def render(self, with_models: bool) -> bytes:
        """The JSON document; with the models' feature schemas when `with_models`."""
        if not with_models:
            return self._generic
        listing = self.store.list_models()
        default = self._default_ref()
        key = (tuple((name, tuple(versions)) for name, versions in listing.items()), default)
        cached_key, payload = self._with_models
        if cached_key != key:
            payload = orjson.dumps(self._models_document(listing, default))
            self._with_models = (key, payload)  # one assignment: threads see old or new
        return payload

    def _models_document(self, listing: dict[str, list[int]],
                         default: tuple[str, int] | None) -> dict[str, Any]:
        base, components = self._base, self._base["components"]
        schemas = {**components["schemas"], **model_components(self.store, listing)}
        paths = base["paths"]
        if default is not None:
            try:
                paths = with_examples(paths, self.store.manifest(*default))
            except ModelLoadError:
                pass  # an unreadable manifest: no examples
        return {**base, "paths": paths, "components": {**components, "schemas": schemas}}

    def _default_ref(self) -> tuple[str, int] | None:
        try:
            return self.store.resolve(None, self.default_model)
        except TabserveError:  # no default model (yet): no examples
            return None
