"""Every operation of the HTTP API, as data: path, method, the Flask endpoint that serves it,
its body, its answers and the error statuses it really gives. document.py turns the table
into the OpenAPI document; tests/test_openapi.py checks it covers the app's url_map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.models.store import NAME_RE, VERSION_RE

# The statuses every route may answer before its view runs (api/__init__.py's hooks): a
# header over TABSERVE_MAX_HEADER_BYTES; with authentication on, a missing or wrong key, a
# role without the right, a key over its rate limit.
HEADER = (431,)
AUTH = (401, 403, 429)
BODY = (408, 413)  # a body slower than the minimum rate; larger than its limit

ERROR_TEXT = {
    400: "Bad request: the body is not valid JSON or not the expected shape",
    401: "No valid API key (WWW-Authenticate names the Bearer scheme)",
    403: "The key's role does not allow this",
    404: "Unknown model, job or path",
    408: "The body arrived slower than TABSERVE_UPLOAD_MIN_BYTES_PER_SECOND",
    409: "The job is not in a state that allows this",
    410: "The finished job's file is no longer in storage",
    413: "Too large: the body, or too many rows",
    415: "Unsupported content type",
    422: "Invalid input: each bad row and field is named in `details`",
    429: "Over the key's rate limit or live-job cap (Retry-After says when to retry)",
    431: "A request header longer than TABSERVE_MAX_HEADER_BYTES",
    503: "A dependency is unavailable: the model cannot be loaded, or Redis is down",
    507: "No room to store the upload (TABSERVE_MIN_FREE_BYTES, or the disk is full)",
}


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_of(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": ref(name)}}


def text(media: str) -> dict[str, Any]:
    return {media: {"schema": {"type": "string"}}}


def binary(*medias: str) -> dict[str, Any]:
    return {m: {"schema": {"type": "string", "contentMediaType": m}} for m in medias}


def param(name: str, where: str, schema: dict[str, Any], description: str,
          required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": schema}


MODEL_NAME = {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}
VERSION = {"type": "string", "pattern": f"^{VERSION_RE.pattern}$"}
MODEL_QUERY = param("model", "query", {"type": "string"},
                    "NAME or NAME:VERSION (a bare NAME is its latest version); default: "
                    "TABSERVE_DEFAULT_MODEL or the recorded default")
NAME_PATH = param("name", "path", MODEL_NAME, "the model's name")
VERSION_PATH = param("version", "path", VERSION, "the model's version")
ALIAS_PATH = param("alias", "path", {"type": "string"}, "the alias, e.g. live or champion")
JOB_PATH = param("job_id", "path", {"type": "string"}, "the job's id")
PREFER = param("Prefer", "header", {"type": "string"},
               "`respond-async`: run the rows as a job and answer 202 (rows over "
               "TABSERVE_MAX_ONLINE_ROWS always do)")
IDEMPOTENCY_KEY = param("Idempotency-Key", "header",
                        {"type": "string", "minLength": 1, "maxLength": 255,
                         "pattern": "^[\\x20-\\x7e]+$"},
                        "a retried request with the same key and body gets the same job "
                        "(for the job's TTL, per API key owner); another body: 422")
CONTENT_DISPOSITION = param("Content-Disposition", "header", {"type": "string"},
                            'a raw body\'s file name: attachment; filename="big.csv" (the '
                            "download is then big-predictions.csv)")
LOCATION = {"description": "/jobs/{id}", "schema": {"type": "string"}}
ASYNC_HEADERS = {"Location": LOCATION, "Preference-Applied": {
    "description": "respond-async, when the request asked for it", "schema": {"type": "string"}}}
ASYNC_TEXT = ("With `Prefer: respond-async`, or more rows than TABSERVE_MAX_ONLINE_ROWS, the "
              "rows are validated and run as a job of the resolved model version (Parquet "
              "input, JSON lines result): 202, the job, `Location: /jobs/{id}`. 403 when the "
              "key's role may not submit jobs; 429 at its live-job cap; 507 without room.")


@dataclass(frozen=True)
class Operation:
    """One method on one path. `ok`: success status -> (description, content or None);
    `errors`: the error statuses besides the hooks' (HEADER, and AUTH unless public);
    `shape`: the error body's component (each protocol answers in its own)."""

    method: str
    path: str
    endpoint: str
    summary: str
    tag: str
    ok: Mapping[int, tuple[str, dict[str, Any] | None]]
    errors: tuple[int, ...] = ()
    body: dict[str, Any] | None = None
    params: tuple[dict[str, Any], ...] = ()
    public: bool = False
    shape: str = "Error"
    description: str = ""
    headers: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def statuses(self) -> tuple[int, ...]:
        hooks = HEADER if self.public else HEADER + AUTH
        return tuple(sorted(set(self.errors) | set(hooks)))


def _ops_core() -> list[Operation]:
    predict_errors = (400, 404, 415, 422, 503, 507) + BODY
    return [
        Operation("post", "/predict", "predict.predict", "Predict one row or many", "predict",
                  {200: ("Predictions in input order", json_of("PredictResponse")),
                   202: ("Run as a job", json_of("JobRecord"))},
                  predict_errors, json_of("PredictRequest"), (MODEL_QUERY, PREFER),
                  description="`features` is one row of the model's feature schema "
                  "(components `Features.<name>.<version>`; GET /models/{name} links it). "
                  + ASYNC_TEXT, headers={202: ASYNC_HEADERS}),
        Operation("get", "/models", "models.list_models", "Every model and its latest "
                  "manifest", "models", {200: ("The models", json_of("ModelList"))}),
        Operation("get", "/models/{name}", "models.get_model", "A model's versions",
                  "models", {200: ("Every version's manifest, each with a `schema` link",
                                   json_of("ModelDetail"))},
                  (404, 422, 503), params=(NAME_PATH,)),
        Operation("post", "/models/{name}/promote", "models.promote", "Make a version live "
                  "(admin): unpinned requests get it within seconds; a rollback is a promote",
                  "models", {200: ("The change", json_of("AliasResult"))},
                  (400, 404, 409, 415, 422, 503) + BODY, json_of("AliasRequest"),
                  (NAME_PATH,)),
        Operation("put", "/models/{name}/aliases/{alias}", "models.put_alias", "Point an "
                  "alias at a version (admin); requests pin it as NAME@ALIAS", "models",
                  {200: ("The change", json_of("AliasResult"))},
                  (400, 404, 409, 415, 422, 503) + BODY, json_of("AliasRequest"),
                  (NAME_PATH, ALIAS_PATH)),
        Operation("delete", "/models/{name}/aliases/{alias}", "models.delete_alias",
                  "Remove an alias (admin; `live` can only be moved)", "models",
                  {200: ("The change", json_of("AliasResult"))}, (404, 409, 422, 503),
                  params=(NAME_PATH, ALIAS_PATH)),
        Operation("post", "/feedback", "feedback.post_feedback", "Labels for earlier "
                  "predictions", "monitoring",
                  {200: ("What was counted", json_of("FeedbackResult"))},
                  (400, 415, 422, 503) + BODY, json_of("FeedbackRequest")),
        Operation("get", "/healthz", "health.healthz", "Alive", "monitoring",
                  {200: ("Alive", json_of("Alive"))}, public=True),
        Operation("get", "/readyz", "health.readyz", "Ready to serve predictions",
                  "monitoring", {200: ("Ready", json_of("Readiness")),
                                 503: ("Not ready: the default model does not load",
                                       json_of("Readiness"))}, public=True),
        Operation("get", "/metrics", "metrics.metrics", "Prometheus metrics", "monitoring",
                  {200: ("Prometheus text exposition", text("text/plain"))},
                  description="Public with TABSERVE_METRICS_PUBLIC=1."),
        Operation("get", "/openapi.json", "openapi.document", "This document", "docs",
                  {200: ("The OpenAPI document", {"application/json": {
                      "schema": {"type": "object"}}})}, public=True,
                  description="Public. The per-model feature schemas are included only for a "
                  "caller whose key may read models (anyone while authentication is off)."),
        Operation("get", "/docs", "openapi.docs", "This document, browsable (Swagger UI)",
                  "docs", {200: ("An HTML page", text("text/html"))}, public=True),
        Operation("get", "/", "ui.index", "The web page: models, a prediction form, uploads "
                  "and recent jobs", "docs", {200: ("An HTML page", text("text/html"))},
                  public=True),
    ]


def _ops_jobs() -> list[Operation]:
    job = json_of("JobRecord")
    upload = {"multipart/form-data": {"schema": ref("JobUpload")},
              "application/json": {"schema": ref("JobFromURL")},
              **binary("text/csv", "application/vnd.apache.parquet")}
    outputs = binary("text/csv", "application/vnd.apache.parquet", "application/x-ndjson")
    return [
        Operation("post", "/jobs", "jobs.create_job", "Submit a file to score", "jobs",
                  {202: ("Accepted and queued (or, with an Idempotency-Key seen before, the "
                         "job it made)", job),
                   200: ("validate_only=true: what the check found; no job, nothing stored",
                         json_of("ValidationReport"))},
                  (400, 403, 404, 409, 415, 422, 503, 507) + BODY, upload,
                  (IDEMPOTENCY_KEY, CONTENT_DISPOSITION),
                  description="The options are form fields or query parameters (both: the "
                  "form wins). 403 `input_url_forbidden`: an input_url outside "
                  "TABSERVE_INPUT_URL_PREFIXES. 429 also when the key has "
                  "TABSERVE_MAX_LIVE_JOBS_PER_KEY live jobs. Idempotency-Key: 400 unless 1 "
                  "to 255 printable ASCII characters; 422 `idempotency_key_reused` for the "
                  "same key with another file or options; 409 "
                  "`idempotency_key_in_progress` while a concurrent request with the key "
                  "is still being accepted. A text/csv body of "
                  "TABSERVE_STREAM_UPLOAD_MIN_BYTES or more (no Idempotency-Key, options in "
                  "the query) is queued once its first MiB is checked and scored while the "
                  "rest arrives: the 202 then shows the job running; a body that ends short "
                  "fails it with `upload_interrupted`.",
                  headers={202: {"Location": LOCATION, "Idempotent-Replayed": {
                      "description": "true: an earlier request with this Idempotency-Key "
                      "made this job", "schema": {"type": "string"}}}}),
        Operation("get", "/jobs", "jobs.list_jobs", "Recent jobs (the key's own; every job "
                  "for admin)", "jobs", {200: ("The jobs, newest first", json_of("JobList"))},
                  (422, 503),
                  params=(param("limit", "query", {"type": "integer", "minimum": 1,
                                                   "maximum": 1000, "default": 50},
                                "how many"),
                          param("status", "query", ref("JobStatus"), "only jobs in it"))),
        Operation("get", "/jobs/{job_id}", "jobs.get_job", "A job's status and progress",
                  "jobs", {200: ("The job", job)}, (404, 503), params=(JOB_PATH,)),
        Operation("get", "/jobs/{job_id}/result", "jobs.get_result", "Download the output",
                  "jobs", {200: ("The output file, as an attachment", outputs)},
                  (404, 409, 410, 503), params=(JOB_PATH,),
                  description="409 until the job has succeeded."),
        Operation("get", "/jobs/{job_id}/errors", "jobs.get_errors", "Download the skipped "
                  "rows (on_error=skip)", "jobs",
                  {200: ("row,field,message", binary("text/csv"))},
                  (404, 409, 410, 503), params=(JOB_PATH,)),
        Operation("delete", "/jobs/{job_id}", "jobs.delete_job", "Cancel a live job, or "
                  "delete a finished one and its files", "jobs",
                  {200: ("Cancelled: the record", job), 204: ("Deleted", None)},
                  (404, 503), params=(JOB_PATH,)),
    ]


def _ops_mlflow() -> list[Operation]:
    check = json_of("Check")
    ping = {200: ("The default model loads", check), 503: ("It does not", check)}
    return [
        Operation("post", "/invocations", "mlflow.invocations", "MLflow's (and SageMaker's) "
                  "scoring protocol", "mlflow",
                  {200: ("Labels, or class probabilities", json_of("MlflowResponse")),
                   202: ("Run as a job", json_of("JobRecord"))},
                  (400, 404, 415, 422, 503, 507) + BODY,
                  {"application/json": {"schema": ref("MlflowRequest")},
                   "text/csv": {"schema": {"type": "string"}}}, (MODEL_QUERY, PREFER),
                  shape="MlflowError", description=ASYNC_TEXT,
                  headers={200: {"X-Prediction-Id": {"schema": {"type": "string"},
                                                     "description": "for /feedback"}},
                           202: ASYNC_HEADERS}),
        Operation("get", "/ping", "mlflow.ping", "SageMaker's health check", "mlflow", ping,
                  public=True, shape="MlflowError"),
        Operation("get", "/health", "mlflow.ping", "MLflow's health check", "mlflow", ping,
                  public=True, shape="MlflowError"),
        Operation("get", "/version", "mlflow.version", "The tabserve version", "mlflow",
                  {200: ("The version", text("text/plain"))}, public=True,
                  shape="MlflowError"),
    ]


def _ops_v2() -> list[Operation]:
    name_version = (NAME_PATH, VERSION_PATH)
    infer_body = {"application/json": {"schema": ref("V2InferRequest")},
                  **binary("application/octet-stream")}
    infer_answer = {**json_of("V2InferResponse"), **binary("application/octet-stream")}
    ops = [
        Operation("get", "/v2", "v2.server_metadata", "Server metadata", "v2",
                  {200: ("Metadata", json_of("V2ServerMetadata"))}),
        Operation("get", "/v2/health/live", "v2.live", "Live", "v2",
                  {200: ("Live", json_of("V2Live"))}, public=True),
        Operation("get", "/v2/health/ready", "v2.ready", "Ready", "v2",
                  {200: ("Ready", json_of("V2Ready")), 503: ("Not ready", json_of("V2Ready"))},
                  public=True),
        Operation("post", "/v2/repository/index", "v2.repository_index", "Every model "
                  "version", "v2", {200: ("The index", json_of("V2RepositoryIndex"))}),
        Operation("post", "/v2/repository/models/{name}/load", "v2.load_model", "Load a "
                  "model in the answering worker (admin)", "v2",
                  {200: ("Loaded", json_of("V2Empty"))}, (404, 422, 503), params=(NAME_PATH,)),
        Operation("post", "/v2/repository/models/{name}/unload", "v2.unload_model",
                  "Refused: every worker loads a model on first use", "v2",
                  {}, (400,), params=(NAME_PATH,)),
    ]
    for suffix, params in (("", (NAME_PATH,)), ("/versions/{version}", name_version)):
        base = "/v2/models/{name}" + suffix
        ops += [
            Operation("get", base, "v2.model_metadata", "Model metadata", "v2",
                      {200: ("Inputs (one per feature) and outputs",
                             json_of("V2ModelMetadata"))}, (404, 422, 503), params=params),
            Operation("get", base + "/ready", "v2.model_ready", "Load and report ready",
                      "v2", {200: ("Ready", json_of("V2ModelReady"))}, (404, 422, 503),
                      params=params),
            Operation("post", base + "/infer", "v2.infer", "Inference", "v2",
                      {200: ("Outputs (binary data after the JSON header when asked)",
                             infer_answer)},
                      (400, 404, 415, 422, 503) + BODY, infer_body, params,
                      headers={200: {"Inference-Header-Content-Length": {
                          "schema": {"type": "integer"},
                          "description": "with binary outputs: the JSON header's length"}}}),
        ]
    ops = [replace(o, shape="V2Error") for o in ops]
    rest = param("rest", "path", {"type": "string"}, "any other V2 path")
    for method in ("get", "post"):
        # A path the router cannot match at all (a line break in it) is answered by the
        # app, in tabserve's shape; any other, by the V2 blueprint, in V2's.
        ops.append(Operation(method, "/v2/{rest}", "v2.unknown", "Any other V2 path: not "
                             "served", "v2", {}, (404,), params=(rest,), shape="V2Error|Error"))
    return ops


def _ops_v1() -> list[Operation]:
    name = param("name", "path", {"type": "string"},
                 "NAME, NAME:VERSION or NAME@ALIAS (a bare NAME is its live version)")
    ops = [
        Operation("get", "/v1/models", "v1.list_models", "Every model's name", "v1",
                  {200: ("The names", json_of("V1ModelList"))}),
        Operation("get", "/v1/models/{name}", "v1.model_ready", "Load and report ready", "v1",
                  {200: ("Ready", json_of("V1ModelReady"))}, (404, 422, 503), params=(name,)),
        Operation("post", "/v1/models/{name}:predict", "v1.predict", "Predict", "v1",
                  {200: ("Labels, or class probabilities", json_of("V1PredictResponse"))},
                  (400, 404, 415, 422, 503) + BODY, json_of("V1PredictRequest"), (name,),
                  description="Rows as /invocations takes them under `instances`; the same "
                  "validation and row limit as /predict (413 over it)."),
    ]
    ops = [replace(o, shape="V1Error") for o in ops]
    rest = param("rest", "path", {"type": "string"}, "any other V1 path")
    for method in ("get", "post"):
        ops.append(Operation(method, "/v1/{rest}", "v1.unknown", "Any other V1 path "
                             "(:explain): not served", "v1", {}, (404,), params=(rest,),
                             shape="V1Error|Error"))
    return ops


def operations() -> list[Operation]:
    """Every operation of the API."""
    return _ops_core() + _ops_jobs() + _ops_mlflow() + _ops_v2() + _ops_v1()
