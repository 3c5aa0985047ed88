"""The manifest.json that describes one model version."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.models.schema import FeatureSpec, Schema

MANIFEST_FILE = "manifest.json"
# A model file is a plain name inside its version directory: no "/", no "..", no dot file.
MODEL_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*")


class Manifest(BaseModel):
    """Everything known about a model version, written beside its pickle."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    name: str
    version: int
    created_at: str
    task: Literal["classification", "regression"]
    features: list[FeatureSpec]
    target: str | None = None
    classes: list[Any] | None = None
    input_kind: Literal["numpy", "dataframe"] = "numpy"
    label_from_proba: bool = False
    # What /invocations answers by default, as MLflow's log_model(pyfunc_predict_fn=...).
    pyfunc_predict_fn: Literal["predict", "predict_proba"] = "predict"
    model_file: str
    compression: Literal["gzip"] | None = None
    sha256: str
    size_bytes: int
    algorithm: str = ""
    source: str = ""
    library_versions: dict[str, str | None] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    reference: dict[str, Any] = Field(default_factory=dict)
    # HMAC-SHA256 of the other fields and the id of the key that made it (shared/models/signing.py).
    signature: str | None = None
    signing_key_id: str | None = None

    @field_validator("model_file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if not MODEL_FILE_RE.fullmatch(value) or len(value) > 64:
            raise ValueError(f"model_file {value[:64]!r} is not a plain file name")
        return value

    @property
    def schema_(self) -> Schema:
        """The model's input schema."""
        return Schema(features=self.features)

    @property
    def ref(self) -> str:
        """NAME:VERSION."""
        return f"{self.name}:{self.version}"

    def public(self) -> dict[str, Any]:
        """The manifest as the API shows it."""
        return self.model_dump(mode="json")


def read_manifest_data(directory: Path) -> dict[str, Any]:
    """A version directory's manifest.json as read, before validation (what is signed)."""
    data = json.loads((directory / MANIFEST_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError("manifest.json is not a JSON object")
    return data


def read_manifest(directory: Path) -> Manifest:
    """Read and validate a version directory's manifest.json."""
    return Manifest.model_validate(read_manifest_data(directory))


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write manifest.json atomically."""
    tmp = directory / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(directory / MANIFEST_FILE)
