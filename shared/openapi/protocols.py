"""Pydantic models of the protocol endpoints' bodies and answers (Open Inference Protocol
V2, KServe's V1, MLflow's scoring server), for the document only: shared/online/v2.py,
v1.py and mlflow.py parse the bodies by hand."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

Datatype = Literal["FP64", "FP32", "INT64", "INT32", "BOOL", "BYTES"]


class V2Error(BaseModel):
    """The V2 protocol's error shape."""

    error: str


class V2InputTensor(BaseModel):
    """One input: `data` (row-major) or, in binary mode, `parameters.binary_data_size`."""

    name: str
    datatype: Datatype
    shape: list[int] = Field(min_length=1)
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2RequestedOutput(BaseModel):
    name: Literal["predict", "predict_proba"]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """One [N, F] tensor (features in schema order) or one [N] tensor per feature."""

    id: str | None = None
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None
    parameters: dict[str, Any] | None = None


class V2OutputTensor(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    """`parameters.prediction_id` is the id /feedback takes (rows `ID.0`, `ID.1`, ...)."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2OutputTensor]
    parameters: dict[str, Any] | None = None


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]
    parameters: dict[str, Any] | None = None


class V2ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


class V2RepositoryEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str


class V2RepositoryIndex(RootModel[list[V2RepositoryEntry]]):
    """Every model version in the artifacts directory."""


class V2Empty(BaseModel):
    """An empty object: done."""

    model_config = ConfigDict(extra="forbid")


class MlflowError(BaseModel):
    """MLflow's error shape (`BAD_REQUEST`, `RESOURCE_DOES_NOT_EXIST`, ...)."""

    error_code: str
    message: str


class MlflowParams(BaseModel):
    model_config = ConfigDict(extra="allow")
    predict_method: Literal["predict", "predict_proba"] | None = None


class DataframeSplit(BaseModel):
    """pandas' `to_json(orient="split")`; without `columns`, values in feature order."""

    columns: list[str] | None = None
    data: list[list[Any]]
    index: list[Any] | None = None


class MlflowSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataframe_split: DataframeSplit
    params: MlflowParams | None = None


class MlflowRecords(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataframe_records: list[dict[str, Any]]
    params: MlflowParams | None = None


class MlflowInstances(BaseModel):
    """Objects, arrays in the model's feature order, or an object of columns."""

    model_config = ConfigDict(extra="forbid")
    instances: list[Any] | dict[str, list[Any]]
    params: MlflowParams | None = None


class MlflowInputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] | dict[str, list[Any]]
    params: MlflowParams | None = None


class MlflowRequest(RootModel[MlflowSplit | MlflowRecords | MlflowInstances | MlflowInputs]):
    """A JSON body of POST /invocations: exactly one of the four input keys."""


class MlflowResponse(BaseModel):
    """Labels (`predict`) or one array of class probabilities per row (`predict_proba`)."""

    predictions: list[Any]


class V1Error(BaseModel):
    """KServe V1's error shape."""

    error: str


class V1Instances(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[dict[str, Any] | list[Any]] = Field(min_length=1)


class V1Inputs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[dict[str, Any] | list[Any]] = Field(min_length=1)


class V1PredictRequest(RootModel[V1Instances | V1Inputs]):
    """KServe's V1 body: rows under `instances` (or `inputs`), each an object of feature
    values or an array of values in the model's feature order."""


class V1PredictResponse(BaseModel):
    """Labels, or one array of class probabilities per row for a model whose manifest sets
    `pyfunc_predict_fn` to `predict_proba` (as /invocations answers)."""

    predictions: list[Any]


class V1ModelReady(BaseModel):
    name: str
    ready: bool
    version: str


class V1ModelList(BaseModel):
    models: list[str]
