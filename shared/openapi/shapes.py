"""Pydantic models of the bodies and answers that are checked by hand on the hot path
(/predict, /feedback) or built as plain dicts (answers): for the document only. The hot
validators keep their code; these describe what they accept and give."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from shared.jobs.record import JobStatus
from shared.models.manifest import Manifest
from shared.monitoring.feedback import MAX_ITEMS

Label = str | int | float | bool
SCHEMA_LINK = ("where the version's feature schema is in the OpenAPI document "
               "(/openapi.json#/components/schemas/...)")


class ErrorDetail(BaseModel):
    """One problem: the row (0-based) and field it is in, and what is wrong."""

    row: int | None = None
    field: str | None = None
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(description="a short machine code, e.g. validation_error")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class Error(BaseModel):
    """The one error shape of tabserve's own routes."""

    error: ErrorInfo


class PredictOne(BaseModel):
    """One row: an object of feature name to value (the model's feature schema)."""

    model_config = ConfigDict(extra="forbid")
    features: dict[str, Any]


class PredictMany(BaseModel):
    """Rows, answered in input order (at most TABSERVE_MAX_ONLINE_ROWS)."""

    model_config = ConfigDict(extra="forbid")
    instances: list[dict[str, Any]] = Field(min_length=1)


class PredictRequest(RootModel[PredictOne | PredictMany]):
    """The body of POST /predict: exactly one of `features` or `instances`."""


class ModelRef(BaseModel):
    name: str
    version: int


class PredictionOne(BaseModel):
    """The answer to `features`; `probabilities` (class -> probability) for a classifier."""

    prediction: Label
    probabilities: dict[str, float] | None = None
    prediction_id: str
    model: ModelRef


class PredictionMany(BaseModel):
    """The answer to `instances`: lists in input order; a row's id is `<id>.<row>`."""

    predictions: list[Label]
    probabilities: list[dict[str, float]] | None = None
    prediction_ids: list[str]
    model: ModelRef


class PredictResponse(RootModel[PredictionOne | PredictionMany]):
    """The answer of POST /predict."""


class ModelVersion(Manifest):
    """A version's manifest, with the link to its feature schema."""

    schema_link: str | None = Field(None, alias="schema", description=SCHEMA_LINK)


class AliasChange(BaseModel):
    """One change of an alias, as the model's history keeps it."""

    alias: str
    version: int | None = Field(description="the version it names now (null: removed)")
    previous: int | None
    at: str
    by: str | None = Field(None, description="the API key's name, or who ran the command")


class Lifecycle(BaseModel):
    """A model's aliases (`live` is what an unpinned request gets) and its live version."""

    aliases: dict[str, int]
    live: int | None = Field(description="null when the `live` alias names a version that "
                             "is gone")
    aliases_error: str | None = None


class ModelDetail(Lifecycle):
    name: str
    versions: list[ModelVersion]
    latest: int
    schema_link: str = Field(alias="schema", description=SCHEMA_LINK + " (latest version)")
    history: list[AliasChange]


class CatalogEntry(Lifecycle):
    name: str
    versions: list[int]
    latest: ModelVersion


class AliasRequest(BaseModel):
    """The body of POST /models/{name}/promote and PUT /models/{name}/aliases/{alias}."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)


class AliasResult(Lifecycle):
    """What an alias change did: the version the alias named before, and the model's
    aliases and live version after it."""

    name: str
    alias: str
    version: int | None
    previous: int | None


class UnreadableModel(BaseModel):
    name: str
    version: int
    error: str


class ModelList(BaseModel):
    models: list[CatalogEntry]
    unreadable: list[UnreadableModel]


class Alive(BaseModel):
    status: str


class Check(BaseModel):
    """One dependency's state: `ok` or `unavailable` (with the error)."""

    status: str
    error: str | None = None
    model: str | None = Field(None, description="NAME:VERSION of the default model")


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, Check]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(min_length=1)
    label: Label


class FeedbackRequest(RootModel[list[FeedbackItem]]):
    """Labels for earlier predictions (their ids from /predict or a job's output)."""

    root: list[FeedbackItem] = Field(min_length=1, max_length=MAX_ITEMS)


class FeedbackScore(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str
    version: int
    labels: int


class FeedbackResult(BaseModel):
    accepted: int
    unmatched: list[str]
    duplicates: list[str]
    models: list[FeedbackScore]


class JobProgress(BaseModel):
    rows_done: int
    rows_total: int | None
    rows_failed: int
    fraction: float


class JobErrorInfo(BaseModel):
    code: str
    message: str
    row: int | None = None
    field: str | None = None


class JobParts(BaseModel):
    total: int
    done: int


class JobRecord(BaseModel):
    """A job as the API shows it; `links.result` (and `links.errors`) once it succeeded."""

    id: str
    status: JobStatus
    model: dict[str, Any]
    options: dict[str, Any]
    input: dict[str, Any]
    output: dict[str, Any] | None
    progress: JobProgress
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    attempts: int
    error: JobErrorInfo | None
    links: dict[str, str]
    drift: dict[str, Any] | None = None
    retry: dict[str, Any] | None = None
    parts: JobParts | None = None
    callback: dict[str, Any] | None = Field(
        None, description="a callback_url's delivery: url, state (pending, delivered, "
        "gave_up), attempts, last_status, last_error, last_attempt_at, delivered_at, "
        "next_attempt_at")


class JobList(BaseModel):
    jobs: list[JobRecord]


class ValidationProblem(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] | None = None


class ValidationReport(BaseModel):
    """POST /jobs with validate_only=true: what the submit-time check found (no job)."""

    valid: bool
    model: ModelRef
    format: Literal["csv", "parquet"] | None = None
    size_bytes: int | None = None
    rows_estimate: int | None = None
    columns: list[str] | None = None
    problems: list[ValidationProblem]
