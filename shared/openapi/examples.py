"""Examples in the document from the default model's manifest: a valid row in /predict's,
/invocations', V2 infer's and POST /jobs' bodies, and its name and version in path
parameters, so that "Try it out" (and a schema-driven test tool) starts from a request
that succeeds."""

from __future__ import annotations

import copy
import csv
import io
from typing import Any

from shared.models.manifest import Manifest
from shared.models.schema import FeatureSpec


def example_value(spec: FeatureSpec) -> Any:
    """A value the validator accepts: the middle of the training range, a known category."""
    if spec.type == "boolean":
        return False
    if spec.type == "category":
        return (spec.categories or [""])[0]
    middle = (spec.min + spec.max) / 2 if spec.min is not None and spec.max is not None else 0.0
    return round(middle) if spec.type == "integer" else middle


def example_row(manifest: Manifest) -> dict[str, Any]:
    """One valid row of a model version."""
    return {f.name: example_value(f) for f in manifest.features}


def example_csv(row: dict[str, Any]) -> str:
    """The row as a CSV file with its header."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(row)
    writer.writerow(row.values())
    return out.getvalue()


def request_examples(manifest: Manifest) -> dict[tuple[str, str, str], Any]:
    """(path, method, media type) -> an example body for the model."""
    row = example_row(manifest)
    table = example_csv(row)
    out: dict[tuple[str, str, str], Any] = {
        ("/predict", "post", "application/json"): {"features": row},
        ("/invocations", "post", "application/json"): {"dataframe_records": [row]},
        ("/invocations", "post", "text/csv"): table,
        ("/jobs", "post", "text/csv"): table,
    }
    if all(f.type in ("number", "integer") for f in manifest.features):
        tensor = {"id": "example", "inputs": [{"name": "input-0", "datatype": "FP64",
                                               "shape": [1, len(row)],
                                               "data": [float(v) for v in row.values()]}]}
        for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
            out[(path, "post", "application/json")] = tensor
    return out


def with_examples(paths: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    """The paths with the default model's examples; `paths` itself is left as it is."""
    out = {path: dict(item) for path, item in paths.items()}
    for (path, method, media), body in request_examples(manifest).items():
        operation = out[path][method] = copy.deepcopy(out[path][method])
        operation["requestBody"]["content"][media]["example"] = body
    given = {"name": manifest.name, "version": str(manifest.version)}
    for item in out.values():
        for method, operation in item.items():
            names = {p["name"] for p in operation.get("parameters", [])}
            if names & {"name", "version"}:
                item[method] = operation = copy.deepcopy(operation)
                for param in operation["parameters"]:
                    if param["name"] in given:
                        param["example"] = given[param["name"]]
    return out
