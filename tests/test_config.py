"""Settings are validated when a process starts: a bad or unknown TABSERVE_* variable stops it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import Settings
from shared.errors import ConfigError
from shared.monitoring import metricsdir
from tests.servers import ROOT, free_port, tabserve_env


def test_unknown_variable_is_refused_with_its_name_and_a_hint():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"TABSERVE_CHUNK_ROW": "100"})
    assert "TABSERVE_CHUNK_ROW " in info.value.message
    assert "did you mean TABSERVE_CHUNK_ROWS?" in info.value.message


def test_variables_that_are_not_settings_are_allowed():
    settings = Settings.from_env({"TABSERVE_REDIS_PASSWORD": "x", "TABSERVE_REDIS_MAXMEMORY": "1gb",
                                  "OTHER_THING": "y"})
    assert settings == Settings()


@pytest.mark.parametrize(("var", "raw", "expected"), [
    ("TABSERVE_CHUNK_ROWS", "lots", "valid integer"),
    ("TABSERVE_MAX_ONLINE_ROWS", "0", "greater than or equal to 1"),
    ("TABSERVE_MONITORING", "maybe", "valid boolean"),
    ("TABSERVE_WORKER_METRICS_PORT", "70000", "less than or equal to 65535"),
    ("TABSERVE_LOG_LEVEL", "loud", "use one of DEBUG"),
    ("TABSERVE_LOG_PAYLOADS", "sometimes", "use off, on or a rate"),
    ("TABSERVE_DATA_DIR", "ftp://host/data", "use a directory or an s3:// URL"),
])
def test_bad_value_is_refused_naming_the_variable(var, raw, expected):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    assert info.value.message.startswith(f"{var}={raw!r}: ")
    assert expected in info.value.message


def test_bad_value_given_directly_is_refused_too():
    with pytest.raises(ConfigError, match="TABSERVE_CHUNK_ROWS='x'"):
        Settings(chunk_rows="x")
    with pytest.raises(ConfigError, match="TABSERVE_CHUNK_ROWS"):
        Settings().with_overrides(chunk_rows=0)


def test_values_are_converted_and_empty_means_default():
    settings = Settings.from_env({
        "TABSERVE_CHUNK_ROWS": "500", "TABSERVE_MONITORING": "off",
        "TABSERVE_PRELOAD_MODEL": "0", "TABSERVE_LOG_LEVEL": "debug",
        "TABSERVE_DEFAULT_MODEL": "", "TABSERVE_LOG_PAYLOADS": "0.25",
    })
    assert (settings.chunk_rows, settings.monitoring, settings.preload_model) == (500, False, False)
    assert settings.log_level == "DEBUG"
    assert settings.default_model is None
    assert settings.payload_sample_rate == 0.25
    assert Settings(log_payloads="on").payload_sample_rate == 1.0
    assert Settings().payload_sample_rate == 0.0


def test_relative_directories_are_made_absolute_at_build_time(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"TABSERVE_ARTIFACTS_DIR": "./models",
                                  "TABSERVE_DATA_DIR": "data", "TABSERVE_STAGING_DIR": "../stage"})
    assert settings.artifacts_dir == tmp_path / "models"
    assert settings.data_dir == str(tmp_path / "data")
    assert settings.staging_dir == str(tmp_path.parent / "stage")
    assert Settings(data_dir="s3://bucket/prefix").data_dir == "s3://bucket/prefix"


def test_direct_construction_does_not_read_the_environment(monkeypatch):
    monkeypatch.setenv("TABSERVE_CHUNK_ROWS", "7")
    monkeypatch.setenv("TABSERVE_NOT_A_SETTING", "1")
    assert Settings().chunk_rows == 25_000
    assert Settings.from_env({"TABSERVE_CHUNK_ROWS": "9"}).chunk_rows == 9


def test_as_env_round_trips_and_settings_are_frozen():
    settings = Settings(chunk_rows=123, monitoring=False, default_model="m:2", bind="0.0.0.0:9")
    assert Settings.from_env(settings.as_env()) == settings
    with pytest.raises(Exception, match="frozen"):
        settings.chunk_rows = 1  # type: ignore[misc]


def _gunicorn_conf(env: dict[str, str]) -> subprocess.CompletedProcess:
    code = "import api.gunicorn_conf as c; print(c.bind, c.workers, c.timeout, c.loglevel)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=tabserve_env(env),
                          capture_output=True, text=True, timeout=60)


def test_gunicorn_conf_takes_bind_workers_and_timeout_from_settings():
    result = _gunicorn_conf({"TABSERVE_BIND": "127.0.0.1:9123", "TABSERVE_WEB_WORKERS": "3",
                             "TABSERVE_WEB_TIMEOUT": "17", "TABSERVE_LOG_LEVEL": "warning"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["127.0.0.1:9123", "3", "17", "warning"]
    default = _gunicorn_conf({})
    assert default.stdout.split()[:3] == ["127.0.0.1:8000", str(os.cpu_count() or 1), "60"]


@pytest.mark.parametrize("command", [
    ["-m", "cli", "api"],
    ["-m", "cli", "worker"],
    # gunicorn started without the CLI reads the same settings and stops the same way.
    ["-m", "gunicorn", "-c", "python:api.gunicorn_conf", "api.wsgi:app"],
])
def test_a_bad_value_stops_the_server_at_start_with_the_message(command, tmp_path):
    env = {"TABSERVE_WEB_WORKERS": "many", "TABSERVE_BIND": f"127.0.0.1:{free_port()}",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")}
    result = subprocess.run([sys.executable, *command], cwd=ROOT, env=tabserve_env(env),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "error: TABSERVE_WEB_WORKERS='many': Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Booting worker" not in result.stderr


def test_an_unknown_variable_stops_tabserve_api_with_a_hint():
    result = subprocess.run([sys.executable, "-m", "cli", "api"], cwd=ROOT,
                            env=tabserve_env({"TABSERVE_WEB_WORKER": "2"}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == ("error: TABSERVE_WEB_WORKER is not a tabserve setting; "
                             "did you mean TABSERVE_WEB_WORKERS?\n")


def test_metrics_dir_made_for_a_run_is_removed_by_its_process_only(tmp_path):
    env: dict[str, str] = {}
    directory = metricsdir.prepare(env, "api")
    assert env[metricsdir.ENV] == str(directory) and directory.is_dir()
    (directory / "counter_1.db").write_bytes(b"x")
    # Another process (a gunicorn worker, a Celery pool child) leaves it in place.
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from shared.monitoring import metricsdir; "
         "print(metricsdir.remove_if_owned(sys.argv[1]))", str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() == "False" and directory.is_dir()
    assert metricsdir.remove_if_owned(directory) is True
    assert not directory.exists()


def test_metrics_dir_given_by_the_deployment_is_emptied_and_kept(tmp_path):
    given = tmp_path / "prom"
    given.mkdir()
    (given / "gauge_livesum_7.db").write_bytes(b"stale")
    env = {metricsdir.ENV: str(given)}
    assert metricsdir.prepare(env, "worker") == Path(given)
    assert list(given.iterdir()) == []
    assert metricsdir.remove_if_owned(given) is False
    assert given.is_dir()
