"""Monitoring end to end: a real Prometheus scraping a real API (two gunicorn workers) and a
real worker process; drift and accuracy as the metrics show them."""

from __future__ import annotations

import io
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import psutil
import pytest
import redis
import requests
import yaml

from shared import keys
from shared.monitoring.predictions import lookup_online_prediction
from tests.jobclient import submit, wait_job
from tests.servers import (
    ApiServer,
    Process,
    WorkerProcess,
    free_port,
    tabserve_env,
    wait_until,
)
from tests.test_monitoring_files import PROMETHEUS, alert_rules, as_promql, dashboard_exprs


@pytest.fixture(scope="module")
def stack(base_settings, redis_server, tmp_path_factory):
    """API (2 gunicorn workers) and one worker, on their own Redis database and queue."""
    tmp = tmp_path_factory.mktemp("monitoring")
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/5", queue_name="monitoring",
        worker_metrics_port=free_port(), drift_window=400, drift_interval_seconds=0,
        data_dir=str(tmp / "data"), log_payloads="on")
    env = tabserve_env(settings.as_env())
    api = ApiServer(env, tmp, workers=2)
    worker = WorkerProcess(env, tmp, "monitoring")
    yield api, worker, settings, tmp
    worker.stop()
    api.stop()


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {series: value}."""
    text = requests.get(url, timeout=10).text
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


def value(series: dict[str, float], name: str, **labels: str) -> float | None:
    """The value of the one series of `name` whose labels include `labels`."""
    for key, v in series.items():
        metric, _, rest = key.partition("{")
        if metric == name and all(f'{k}="{val}"' in rest for k, val in labels.items()):
            return v
    return None


def test_api_metrics_sum_over_gunicorn_workers(stack, demo_rows):
    api, *_ = stack
    before = value(scrape(api.url + "/metrics"), "tabserve_http_requests_total",
                   route="/predict", method="POST", status="200") or 0
    for i in range(40):
        r = requests.post(api.url + "/predict", json={"features": demo_rows[i]}, timeout=10)
        assert r.status_code == 200
    assert len(psutil.Process(api.pid).children()) == 2
    after = value(scrape(api.url + "/metrics"), "tabserve_http_requests_total",
                  route="/predict", method="POST", status="200")
    assert after - before == 40  # both workers' requests, not one worker's share


def _drift(series, feature: str) -> float:
    return value(series, "tabserve_feature_drift_psi", model="breast-cancer", version="1",
                 feature=feature)


def test_drift_psi_low_for_training_data_high_for_shifted_features(stack, demo_data):
    api, *_ = stack
    names, X = demo_data
    rng = np.random.default_rng(7)
    shifted = ["mean radius", "worst area", "mean symmetry"]

    def post(batch: list[dict]) -> int:
        return requests.post(api.url + "/predict", json={"instances": batch},
                             timeout=30).status_code

    def send(rows: np.ndarray) -> None:
        # Four at a time, so that both gunicorn workers take a share: each process keeps its
        # own window (400 rows here), and the gauge shows the PSI of the windows summed.
        batches = [[dict(zip(names, r.tolist(), strict=True)) for r in rows[i:i + 50]]
                   for i in range(0, len(rows), 50)]
        with ThreadPoolExecutor(4) as pool:
            assert set(pool.map(post, batches)) == {200}

    send(X[rng.integers(0, len(X), 1600)])
    # the windows are fed off the request path, a fraction of a second later
    wait_until(lambda: all(_drift(scrape(api.url + "/metrics"), n) is not None for n in names),
               10, "drift gauges")
    # Once every process has published the windows summed, training-like rows show no drift.
    wait_until(lambda: max(_drift(scrape(api.url + "/metrics"), n) for n in names) < 0.1, 10,
               "PSI under 0.1 for every feature")

    moved = X[rng.integers(0, len(X), 1600)].copy()
    for name in shifted:
        moved[:, names.index(name)] *= 1.6
    send(moved)

    def high() -> set[str]:
        series = scrape(api.url + "/metrics")
        return {n for n in names if _drift(series, n) > 0.25}

    try:
        wait_until(lambda: high() == set(shifted), 10, "PSI over 0.25 for the shifted features")
    finally:
        series = scrape(api.url + "/metrics")
        print({n: _drift(series, n) for n in names})


def test_drift_of_a_short_burst_shows_within_two_intervals(base_settings, redis_server,
                                                          demo_rows, tmp_path):
    """A few rows, then a burst, all within one interval, then nothing: the gauge appears on
    the drift timer (before, the first publish was spent on too few rows and the next one
    waited for a request after the interval)."""
    interval = 3
    settings = base_settings.with_overrides(
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/6", drift_interval_seconds=interval,
        data_dir=str(tmp_path / "data"))
    api = ApiServer(tabserve_env(settings.as_env()), tmp_path, workers=1)
    try:
        for row in demo_rows[:5]:
            assert requests.post(api.url + "/predict", json={"features": row},
                                 timeout=10).status_code == 200
        # The first publish has found 5 rows (its post to the shared counts shows it).
        client = redis.Redis.from_url(settings.redis_url)
        wait_until(lambda: client.exists("tabserve:drift:breast-cancer:1"), interval,
                   "the first drift publish")
        burst = requests.post(api.url + "/predict", json={"instances": demo_rows[5:305]},
                              timeout=30)
        assert burst.status_code == 200
        wait_until(lambda: _drift(scrape(api.url + "/metrics"), "mean radius") is not None,
                   2 * interval, "the drift series after the burst")
    finally:
        api.stop()


def test_a_job_records_its_own_drift(stack, demo_data):
    api, *_ = stack
    names, X = demo_data
    frame = pd.DataFrame(np.tile(X, (3, 1)), columns=names)
    frame["mean texture"] += 10
    job = submit(api.url, frame.to_csv(index=False).encode(), "csv").json()
    done = wait_job(api.url, job["id"])
    assert done["status"] == "succeeded"
    psi = done["drift"]["features"]
    assert psi["mean texture"] > 0.25
    assert max(v for k, v in psi.items() if k != "mean texture") < 0.1
    assert done["drift"]["prediction"] < 0.25


def test_feedback_moves_the_accuracy_gauge(stack, demo_rows, demo_data):
    api, worker, settings, _ = stack
    import redis

    redis.Redis.from_url(settings.redis_url).delete(keys.feedback_window("breast-cancer", "1"))
    redis.Redis.from_url(settings.redis_url).delete("tabserve:feedback:breast-cancer:1")
    single = requests.post(api.url + "/predict", json={"features": demo_rows[0]},
                           timeout=10).json()
    many = requests.post(api.url + "/predict", json={"instances": demo_rows[1:10]},
                         timeout=10).json()
    names, X = demo_data
    job = submit(api.url, pd.DataFrame(X[:10], columns=names).to_csv(index=False).encode(),
                 "csv").json()
    wait_job(api.url, job["id"])
    result = pd.read_csv(io.BytesIO(requests.get(f"{api.url}/jobs/{job['id']}/result",
                                                 timeout=10).content))
    items = [(single["prediction_id"], single["prediction"])]
    items += list(zip(many["prediction_ids"], many["predictions"], strict=True))
    items += list(zip(result["prediction_id"], result["prediction"].tolist(), strict=True))
    # 20 labels: 15 agree with the prediction, 5 do not -> accuracy 0.75
    feedback = [{"prediction_id": pid, "label": (1 - int(p)) if i % 4 == 0 else int(p)}
                for i, (pid, p) in enumerate(items)]
    client = redis.Redis.from_url(settings.redis_url)
    online = [single["prediction_id"], many["prediction_ids"][0].partition(".")[0]]
    # online predictions reach Redis off the request path
    wait_until(lambda: all(lookup_online_prediction(client, i) for i in online), 10,
               "the online predictions in Redis")
    r = requests.post(api.url + "/feedback", json=feedback, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 20 and r.json()["unmatched"] == []
    series = scrape(api.url + "/metrics")
    assert value(series, "tabserve_accuracy", model="breast-cancer", version="1") == 0.75
    assert value(series, "tabserve_holdout_accuracy", model="breast-cancer", version="1") > 0.9
    bad = requests.post(api.url + "/feedback", json=[{"prediction_id": "nope", "label": 1},
                                                     {"id": 3}], timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["row"] == 1
    unknown = requests.post(api.url + "/feedback", json=[{"prediction_id": "ab" * 16,
                                                          "label": 1}], timeout=10)
    assert unknown.json() == {"accepted": 0, "unmatched": ["ab" * 16], "duplicates": [],
                              "models": []}


@pytest.fixture(scope="module")
def prometheus(stack):
    api, worker, settings, tmp = stack
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: run 'make setup' (Debian package prometheus)"
    rules = tmp / "alerts.yml"
    shutil.copy(PROMETHEUS / "alerts.yml", rules)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "tabserve-api", "static_configs": [
                {"targets": [api.url.removeprefix("http://")]}]},
            {"job_name": "tabserve-worker", "static_configs": [
                {"targets": [f"127.0.0.1:{settings.worker_metrics_port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = Process([binary, f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}"],
                   tabserve_env({}), tmp / "prometheus.log")
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(url + "/-/ready", timeout=2).ok, 60, "prometheus")
    yield url
    proc.stop()


def query(url: str, expr: str) -> dict:
    r = requests.get(url + "/api/v1/query", params={"query": expr}, timeout=10)
    return r.json()


def test_prometheus_sees_requests_predictions_and_jobs(prometheus, stack, demo_rows):
    api, *_ = stack
    for row in demo_rows[:5]:
        requests.post(api.url + "/predict", json={"features": row}, timeout=10)
    job = submit(api.url, b",".join(n.encode() for n in demo_rows[0]) + b"\n" + b",".join(
        str(v).encode() for v in demo_rows[0].values()) + b"\n", "csv").json()
    wait_job(api.url, job["id"])

    def nonzero(expr: str) -> bool:
        result = query(prometheus, expr)["data"]["result"]
        return bool(result) and all(float(s["value"][1]) > 0 for s in result)

    for expr in ['up{job="tabserve-api"}', 'up{job="tabserve-worker"}',
                 'sum(tabserve_http_requests_total{route="/predict"})',
                 'sum(tabserve_rows_predicted_total{path="online"})',
                 'sum(tabserve_rows_predicted_total{path="batch"})',
                 'sum(tabserve_jobs_total{status="succeeded"})',
                 "tabserve_workers_active", "tabserve_process_resident_memory_bytes",
                 "tabserve_model_info"]:
        wait_until(lambda e=expr: nonzero(e), 30, f"Prometheus to report {expr}", interval=0.5)


def test_every_dashboard_and_alert_expression_evaluates(prometheus):
    exprs = [as_promql(e) for e in dashboard_exprs()] + [r["expr"] for r in alert_rules()]
    assert len(exprs) > 20
    for expr in exprs:
        answer = query(prometheus, expr)
        assert answer["status"] == "success", (expr, answer)
    rules = requests.get(prometheus + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert all(r["health"] in ("ok", "unknown") for g in rules for r in g["rules"])


def test_payload_audit_log_when_turned_on(stack, demo_rows):
    api, *_ = stack
    r = requests.post(api.url + "/predict", json={"features": demo_rows[3]}, timeout=10)
    pid = r.json()["prediction_id"]
    wait_until(lambda: pid in api.log(), 10, "the payload log line")
    line = next(json.loads(x) for x in api.log().splitlines() if pid in x and "inputs" in x)
    assert line["logger"] == "tabserve.payloads"
    assert line["inputs"] == [demo_rows[3]]
    assert line["outputs"]["prediction"] == r.json()["prediction"]
