"""The monitoring files: Prometheus config and alerts (checked by promtool), Grafana dashboard.

promtool comes from Debian's `prometheus` package (`scripts/system-deps.sh prometheus`); without
it these tests fail rather than skip, so a machine that lacks it cannot pass unnoticed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from shared.monitoring import metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "tabserve.json"
RULES_IN_CONTAINER = "/etc/prometheus/alerts.yml"
API_KEY_IN_CONTAINER = "/run/secrets/prometheus_api_key"

METRIC_NAME = re.compile(r"\btabserve_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(tabserve_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
TARGET_LABELS = {"job", "instance"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail (not skip) when it is not installed."""
    path = shutil.which("promtool")
    assert path, ("promtool not found: install Debian's prometheus package "
                  "(`scripts/system-deps.sh prometheus` or `apt-get install prometheus`)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]


def as_promql(expr: str) -> str:
    """A Grafana query with its variables replaced by values that make it plain PromQL."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def defined_series() -> dict[str, set[str]]:
    """Each series name that shared/monitoring/metrics.py exposes, with the labels it may carry."""
    series: dict[str, set[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            labels = set(obj._labelnames)
            for family in obj.describe():
                for suffix in SUFFIXES[family.type]:
                    extra = {"le"} if suffix == "_bucket" else set()
                    series[family.name + suffix] = labels | extra
    for family in metrics.QueueCollector(tuple).describe():
        series[family.name] = set()
    return series


def test_alert_rules_pass_promtool_check():
    proc = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests_pass():
    proc = promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_config_passes_promtool_check(tmp_path):
    config = (PROMETHEUS / "prometheus.yml").read_text()
    assert load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"] == [RULES_IN_CONTAINER]
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    local = tmp_path / "prometheus.yml"
    # The API key it scrapes with is a compose secret in the container: a file here.
    (tmp_path / "api-key").write_text("tsk_promtool\n")
    local.write_text(config.replace(RULES_IN_CONTAINER, str(tmp_path / "alerts.yml"))
                     .replace(API_KEY_IN_CONTAINER, str(tmp_path / "api-key")))
    proc = promtool("check", "config", str(local))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_api_and_every_worker_replica():
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tabserve-api"]["static_configs"] == [{"targets": ["api:8000"]}]
    [dns] = jobs["tabserve-worker"]["dns_sd_configs"]
    assert (dns["names"], dns["type"], dns["port"]) == (["worker"], "A", 9808)


def test_every_expression_parses(tmp_path):
    exprs = [as_promql(e) for e in dashboard_exprs()] + [r["expr"] for r in alert_rules()]
    assert all("$" not in e for e in exprs)
    rules = [{"record": f"tabserve_check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_series_queried_is_defined():
    queries = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    queries += [v["definition"] for v in dashboard()["templating"]["list"]]
    used = {name for query in queries for name in METRIC_NAME.findall(query)}
    assert len(used) >= 20
    assert used - set(defined_series()) == set()


@pytest.mark.parametrize("path", [PROMETHEUS / "alerts.yml", PROMETHEUS / "alerts_test.yml",
                                  DASHBOARD], ids=lambda p: p.name)
def test_every_metric_named_in_the_files_is_defined(path):
    # Prose (annotations, descriptions) may name a histogram by its family name.
    families = {obj.describe()[0].name for obj in vars(metrics).values()
                if isinstance(obj, MetricWrapperBase)}
    used = set(METRIC_NAME.findall(path.read_text()))
    assert used - set(defined_series()) - families == set()


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_label_matchers_name_labels_the_metric_has(source):
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    series = defined_series()
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            labels = set(MATCHER.findall(matchers))
            assert labels <= series[name] | TARGET_LABELS, (name, labels)


def test_every_alert_has_for_severity_summary_and_description():
    rules = alert_rules()
    assert len(rules) >= 7
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    cases = [case for test in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case.get("exp_alerts") for case in mine), f"{rule['alert']} never fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{rule['alert']} always fires"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards():
    [source] = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert (source["type"], source["uid"], source["url"]) == (
        "prometheus", "prometheus", "http://prometheus:9090")
    [provider] = load_yaml(GRAFANA / "provisioning" / "dashboards" / "tabserve.yml")["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_uses_the_provisioned_datasource_only():
    assert "DS_PROMETHEUS" not in DASHBOARD.read_text()
    board = dashboard()
    assert board["schemaVersion"] >= 39
    refs = [p["datasource"] for p in dashboard_panels() if p["type"] != "row"]
    refs += [t["datasource"] for p in dashboard_panels() for t in p.get("targets", [])]
    refs += [v["datasource"] for v in board["templating"]["list"]]
    assert refs and all(ref == {"type": "prometheus", "uid": "prometheus"} for ref in refs)


def test_dashboard_panels_have_unique_ids_and_queries():
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]
