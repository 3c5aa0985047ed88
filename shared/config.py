"""Settings: every TABSERVE_* environment variable, read and validated once at an entry point."""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from shared.errors import ConfigError

PREFIX = "TABSERVE_"
# TABSERVE_* names that are not settings: read by docker-compose (the Redis password and
# memory limit) or kept for a client of the HTTP API.
NON_SETTINGS = frozenset({
    "TABSERVE_REDIS_PASSWORD", "TABSERVE_REDIS_MAXMEMORY", "TABSERVE_URL", "TABSERVE_API_KEY",
})
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_PAYLOADS_OFF = ("", "off", "0", "false", "no")
_PAYLOADS_ON = ("on", "all", "true", "yes")


class Settings(BaseSettings):
    """Process-wide configuration, validated when built.

    `Settings.from_env()` reads the environment; `Settings(field=value, ...)` takes only the
    values given and the defaults, so a test's settings do not depend on its environment.
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid",
                                      env_ignore_empty=True, validate_default=True)

    artifacts_dir: Path = Path("./artifacts")
    data_dir: str = "./data"
    redis_url: str = "redis://127.0.0.1:6379/0"
    default_model: str | None = None
    # Models: an HMAC key file outside the artifacts directory (docs/security.md), and whether
    # a model pickled by another scikit-learn/XGBoost version than installed may be loaded.
    model_signing_key_file: Path | None = None
    allow_version_mismatch: bool = False
    # A new version written by train or import becomes live at once (today's behaviour before
    # aliases) instead of waiting for `tabserve promote`; a model's first version always does.
    auto_promote: bool = False
    max_online_rows: int = Field(1000, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    max_header_bytes: int = Field(8 * 1024, ge=256)  # one request header's name and value
    max_upload_bytes: int = Field(2 * 1024 * 1024 * 1024, ge=1)
    log_level: str = "INFO"
    chunk_rows: int = Field(25_000, ge=1)
    max_line_bytes: int = Field(8 * 1024 * 1024, ge=1024)  # the longest CSV row a job reads
    part_rows: int = Field(500_000, ge=0)  # 0: never cut a job into parts
    # A file's open segments (a Parquet output's; on S3 any output's and the errors file's)
    # are closed, and a checkpoint recorded, at the first chunk's end past this size (on S3
    # at least 5 MiB for CSV and JSON lines, joined by copies; shared.jobs.segments,
    # streams); 0: at every chunk's end.
    segment_bytes: int = Field(4 * 1024 * 1024, ge=0)
    worker_threads: int = Field(0, ge=0)
    # The CPU priority (nice) of a worker's pool processes, which score (0: as the API's;
    # 10 lets /predict on the same machine go first, at the jobs' expense: bench.contention).
    worker_nice: int = Field(0, ge=0, le=19)
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=1)
    visibility_timeout_seconds: int = Field(300, ge=1)
    # Disk: uploads are refused (507) while the data or staging directory has less free
    # than this left after the upload (0: no reserve); a failed job's files go this long
    # after it failed (its record stays for job_ttl_seconds); storage is swept this often.
    min_free_bytes: int = Field(1 << 30, ge=0)
    failed_job_grace_seconds: int = Field(3600, ge=0)
    sweep_interval_seconds: int = Field(600, ge=1)
    # A running attempt renews its lease every third of this; a lease gone for this long
    # sends the job (or part) to its next attempt.
    job_lease_seconds: int = Field(30, ge=1)
    job_max_attempts: int = Field(3, ge=1)
    job_time_limit_seconds: int = Field(6 * 3600, ge=1)  # a job's option may ask for another
    job_time_limit_max_seconds: int = Field(24 * 3600, ge=1)
    queue_name: str = Field("tabserve", min_length=1)
    model_threads: int = Field(1, ge=1)
    preload_model: bool = True
    monitoring: bool = True
    access_log: bool = True
    # Plain scoring requests answered without Flask's request context (api/fastpath.py).
    online_fast_path: bool = True
    worker_metrics_port: int = Field(9808, ge=0, le=65535)
    worker_metrics_bind: str = "127.0.0.1"
    drift_window: int = Field(10_000, ge=1)
    drift_interval_seconds: int = Field(10, ge=0)
    feedback_window: int = Field(1000, ge=1)
    prediction_ttl_seconds: int = Field(7 * 24 * 3600, ge=1)
    prediction_log_max_memory_percent: int = Field(80, ge=0, le=100)
    log_payloads: str = "off"
    s3_endpoint_url: str | None = None
    input_url_prefixes: str = ""
    staging_dir: str | None = None
    # authentication (shared/security): on when either is set
    api_keys: str = ""  # name:role:sha256-hex, comma-separated
    api_keys_file: Path | None = None  # kept by `tabserve keys`, re-read when it changes
    metrics_public: bool = False  # /metrics without a key (a Prometheus without a token)
    rate_limit_requests: int = Field(60_000, ge=0)  # per key per window; 0: no limit
    rate_limit_window_seconds: int = Field(60, ge=1)
    max_live_jobs_per_key: int = Field(20, ge=0)  # queued and running; 0: no cap
    # A client's refused job submissions (4xx): this many at once, then each answered no
    # sooner than the bucket refills at the rate (0: never delayed; shared/security/refusals.py).
    job_refusal_burst: int = Field(10, ge=0)
    job_refusals_per_second: float = Field(1.0, ge=0)
    # Job callbacks (shared/jobs/callbacks.py): the hosts a callback_url may name (host or
    # host:port, comma-separated; empty: callbacks off) and the file holding the HMAC key
    # that signs them (required when hosts are set).
    callback_hosts: str = ""
    callback_secret_file: Path | None = None
    # limits on what a client sends
    max_json_depth: int = Field(32, ge=2)
    max_json_number_chars: int = Field(1000, ge=24)
    max_form_parts: int = Field(32, ge=2)  # multipart parts of a job upload
    max_job_rows: int = Field(5_000_000, ge=1)  # rows of one job's input
    max_input_columns: int = Field(10_000, ge=1)  # or 4 per feature and 100 more
    max_parquet_row_group_bytes: int = Field(1 << 30, ge=1)  # uncompressed, per row group
    max_parquet_metadata_bytes: int = Field(16 << 20, ge=1024)  # a Parquet file's footer
    # gunicorn (api/gunicorn_conf.py)
    bind: str = "127.0.0.1:8000"
    web_workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    web_timeout: int = Field(60, ge=0)  # 0: no timeout, as in gunicorn
    # gevent: one event loop per worker process, keep-alive connections taking turns
    # (api/gevent_worker.py); gthread: web_threads threads per process.
    web_worker_class: str = "gevent"
    # Threads per gthread worker: a slow client holds one thread, not the process. Under
    # gevent, it sizes the refusal hold's slots (api/__init__.py) as under gthread.
    web_threads: int = Field(64, ge=1, le=1024)
    # A request body slower than this, once upload_grace_seconds have passed, is cut with a 408.
    upload_min_bytes_per_second: int = Field(64 * 1024, ge=0)  # 0: no minimum
    upload_grace_seconds: float = Field(10.0, gt=0)
    # A raw-body CSV upload at least this large is queued once its start is checked and
    # scored as it arrives (shared.jobs.arrival); 0: every job waits for its whole file.
    stream_upload_min_bytes: int = Field(8 << 20, ge=0)
    # Such a job fails (upload_interrupted) when its file stops growing for this long.
    upload_stall_seconds: float = Field(120.0, gt=0)
    # The API's Redis calls: short timeouts, and a circuit that opens after so many failures
    # in a row and lets one probe through after redis_circuit_open_seconds (workers keep 5 s).
    api_redis_timeout_seconds: float = Field(0.5, gt=0)
    redis_circuit_failures: int = Field(3, ge=1)
    redis_circuit_open_seconds: float = Field(5.0, gt=0)
    extra: Mapping[str, str] = Field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, values)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any,
                                   *_: Any, **__: Any) -> tuple[Any, ...]:
        # Only the given values: the environment is read by from_env alone.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from TABSERVE_* variables (os.environ by default).

        Raises ConfigError naming the variable when one is unknown or its value is invalid.
        """
        env = os.environ if environ is None else environ
        check_names(env)
        values = dict(_EnvironSource(cls, env)())
        values.pop("extra", None)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        """A validated copy with some fields changed (tests, CLI flags)."""
        return type(self)(**{**self.model_dump(), **changes})

    def as_env(self) -> dict[str, str]:
        """The settings as TABSERVE_* variables, for child processes."""
        env = {}
        for name, value in self.model_dump(exclude={"extra"}).items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[PREFIX + name.upper()] = str(value)
        return env

    @property
    def payload_sample_rate(self) -> float:
        """Share of requests whose inputs and outputs are logged (log_payloads as a rate)."""
        raw = self.log_payloads.strip().lower()
        if raw in _PAYLOADS_OFF:
            return 0.0
        if raw in _PAYLOADS_ON:
            return 1.0
        return min(max(float(raw), 0.0), 1.0)

    @field_validator("artifacts_dir", "model_signing_key_file")
    @classmethod
    def _absolute_path(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        # Resolved once, here: a server's cwd (Flask's send_file resolves against the app's
        # package) and a worker's may differ from the one the relative path was written for.
        return Path(os.path.abspath(value))

    @field_validator("data_dir", "staging_dir")
    @classmethod
    def _absolute_dir(cls, value: str | None) -> str | None:
        if value is None or value.startswith("s3://"):
            return value
        if "://" in value:
            raise ValueError("use a directory or an s3:// URL")
        return os.path.abspath(value)

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_apart(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # The keys file holds credentials: never where models or job files are written.
        if value is None:
            return None
        value = Path(os.path.abspath(value))
        for name in ("artifacts_dir", "data_dir", "staging_dir"):
            folder = info.data.get(name)
            if folder and "://" not in str(folder) and value.is_relative_to(folder):
                raise ValueError(f"keep the keys file outside {name} ({folder})")
        return value

    @field_validator("callback_secret_file")
    @classmethod
    def _callback_secret(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        hosts = str(info.data.get("callback_hosts") or "").strip()
        if value is None:
            if hosts:
                raise ValueError("required when TABSERVE_CALLBACK_HOSTS is set: a file "
                                 "holding the key that signs job callbacks")
            return None
        value = Path(os.path.abspath(value))
        try:
            secret = value.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the file: {exc.strerror}") from None
        if len(secret) < 16:
            raise ValueError("the key in the file must be at least 16 bytes")
        return value

    @property
    def callback_host_list(self) -> list[str]:
        """The hosts (host or host:port, lower case) a job's callback_url may name."""
        return [h.strip().lower() for h in self.callback_hosts.split(",") if h.strip()]

    @property
    def api_worker_class(self) -> str:
        """The API's gunicorn worker class: web_worker_class, except gthread whenever the data
        directory is an S3 bucket. s3fs calls its own asyncio loop from a thread of its own,
        which under gevent is a greenlet on the caller's thread, where asyncio then refuses
        the call ("Calling sync() from within a running loop")."""
        if self.web_worker_class == "gevent" and self.data_dir.startswith("s3://"):
            return "gthread"
        return self.web_worker_class

    @property
    def auth_enabled(self) -> bool:
        """Whether requests need an API key (keys given, or a keys file named)."""
        return bool(self.api_keys.strip()) or self.api_keys_file is not None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        return _one_of(value.strip().upper(), _LOG_LEVELS)

    @field_validator("web_worker_class")
    @classmethod
    def _known_worker_class(cls, value: str) -> str:
        return _one_of(value.strip().lower(), WORKER_CLASSES)

    @field_validator("log_payloads")
    @classmethod
    def _payload_rate(cls, value: str) -> str:
        raw = value.strip().lower()
        if raw in _PAYLOADS_OFF or raw in _PAYLOADS_ON:
            return value
        try:
            float(raw)
        except ValueError:
            raise ValueError("use off, on or a rate from 0 to 1") from None
        return value


def _one_of(value: str, choices: Collection[str]) -> str:
    if value not in choices:
        raise ValueError(f"use one of {', '.join(choices)}")
    return value


# TABSERVE_WEB_WORKER_CLASS -> gunicorn's worker_class
WORKER_CLASSES = {"gevent": "api.gevent_worker.GeventWorker", "gthread": "gthread"}


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty,
                              self.env_parse_none_str)


def setting_names() -> list[str]:
    """Every TABSERVE_* variable that is a setting."""
    return [PREFIX + name.upper() for name in Settings.model_fields if name != "extra"]


def check_names(environ: Mapping[str, str]) -> None:
    """Refuse a TABSERVE_* variable that is neither a setting nor a known non-setting."""
    known = set(setting_names()) | NON_SETTINGS
    for var in sorted(environ):
        if var.upper().startswith(PREFIX) and var.upper() not in known:
            close = difflib.get_close_matches(var.upper(), sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{var} is not a tabserve setting{hint}")


def _describe(exc: ValidationError, values: Mapping[str, Any]) -> str:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        var = PREFIX + field.upper()
        if field in values:
            var = f"{var}={values[field]!r}"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{var}: {message}")
    return "; ".join(problems)

