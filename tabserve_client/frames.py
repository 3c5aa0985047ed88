"""The DataFrame paths: pandas and pyarrow are imported here, only when a DataFrame is used."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

CONTENT_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet",
                 "jsonl": "application/x-ndjson"}


def is_frame(value: Any) -> bool:
    """Whether value is a pandas DataFrame (without importing pandas when it is not loaded)."""
    return type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas")


def frame_rows(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as JSON objects (NaN and missing values as null)."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def frame_to_parquet(frame: Any) -> Path:
    """The DataFrame written to a temporary Parquet file (the caller deletes it)."""
    fd, name = tempfile.mkstemp(prefix="tabserve-", suffix=".parquet")
    os.close(fd)
    try:
        frame.to_parquet(name, index=False)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def read_frame(path: Path, content_type: str) -> Any:
    """A downloaded result or errors file as a DataFrame, by its content type."""
    import pandas as pd

    kind = content_type.split(";")[0].strip()
    if kind == CONTENT_TYPES["parquet"]:
        return pd.read_parquet(path)
    if kind == CONTENT_TYPES["jsonl"]:
        return pd.read_json(path, lines=True)
    return pd.read_csv(path)


def temp_path(content_type: str) -> Path:
    """A temporary file name for a download of this content type."""
    kind = content_type.split(";")[0].strip()
    suffix = next((f".{fmt}" for fmt, ct in CONTENT_TYPES.items() if ct == kind), ".bin")
    fd, name = tempfile.mkstemp(prefix="tabserve-", suffix=suffix)
    os.close(fd)
    return Path(name)
