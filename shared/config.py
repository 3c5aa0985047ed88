"""Settings: every TABSERVE_* environment variable, read once at an entry point."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

PREFIX = "TABSERVE_"


@dataclass(frozen=True)
class Settings:
    """Process-wide configuration; build with `Settings.from_env()` or directly in tests."""

    artifacts_dir: Path = Path("./artifacts")
    data_dir: str = "./data"
    redis_url: str = "redis://127.0.0.1:6379/0"
    default_model: str | None = None
    max_online_rows: int = 1000
    max_body_bytes: int = 10 * 1024 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024 * 1024
    log_level: str = "INFO"
    chunk_rows: int = 25_000
    max_line_bytes: int = 8 * 1024 * 1024  # the longest CSV row a job reads
    part_rows: int = 500_000
    worker_threads: int = 0
    job_ttl_seconds: int = 7 * 24 * 3600
    visibility_timeout_seconds: int = 300
    queue_name: str = "tabserve"
    model_threads: int = 1
    preload_model: bool = True
    monitoring: bool = True
    access_log: bool = True
    worker_metrics_port: int = 9808
    worker_metrics_bind: str = "127.0.0.1"
    drift_window: int = 10_000
    drift_interval_seconds: int = 10
    feedback_window: int = 1000
    prediction_ttl_seconds: int = 7 * 24 * 3600
    prediction_log_max_memory_percent: int = 80
    log_payloads: str = "off"
    s3_endpoint_url: str | None = None
    input_url_prefixes: str = ""
    staging_dir: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from TABSERVE_* variables (os.environ by default)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, f.type)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests, CLI flags)."""
        return replace(self, **changes)

    def as_env(self) -> dict[str, str]:
        """The settings as TABSERVE_* variables, for child processes."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[PREFIX + f.name.upper()] = str(value)
        return env


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name: str, raw: str, type_name: Any) -> Any:
    type_name = str(type_name)
    var = PREFIX + name.upper()
    try:
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("bool"):
            low = raw.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(raw)
        if type_name.startswith("Path"):
            return Path(raw)
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a valid {type_name.split(' ')[0]}") from None
    return raw
