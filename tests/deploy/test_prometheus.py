"""deploy/prometheus/: promtool accepts the scrape configuration and the alert
rules, the rules' unit tests pass, and the rules use only metrics that exist
and link to a runbook section of docs/operations.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from crm_runtime.settings import SERVICES, Settings
from tests.deploy import promql
from tests.deploy.catalog import check_query, markdown_anchors
from tests.deploy.conftest import ROOT, run_promtool

PROMETHEUS = ROOT / "deploy" / "prometheus"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
OPERATIONS = ROOT / "docs" / "operations.md"
#: The alerts operators asked for (issue "Operators and integrators").
REQUIRED_ALERTS = {"CrmServiceDown", "CrmGrpcErrorRateHigh", "CrmConsumerLagGrowing",
                   "CrmOutboxOldestAgeHigh", "CrmDeadLettersAppearing", "CrmCaseBreachRateHigh"}


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROMETHEUS / "rules.yml").read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", "rules.yml", cwd=PROMETHEUS)
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_promtool_accepts_the_configuration(promtool: str) -> None:
    """Also loads the rule files the configuration names."""
    run_promtool(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)


def test_promtool_accepts_the_kubernetes_configuration(promtool: str, tmp_path: Path) -> None:
    """Debian builds Prometheus without Kubernetes discovery, so its promtool
    refuses ``kubernetes_sd_configs``: everything else of the file (relabel
    rules, rule files) is checked with the discovery swapped for static targets."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text(
        encoding="utf-8"))
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": ["pod:9101"]}]
    config["rule_files"] = [str(PROMETHEUS / f) for f in config["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    run_promtool(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)


def test_kubernetes_scrape_config_keeps_the_service_pods_and_names_the_job() -> None:
    """The relabelling matches the labels and port names of deploy/k8s/base, and
    sets job from app.kubernetes.io/name, as the rules and dashboards expect."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text(
        encoding="utf-8"))
    (job,) = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
    relabel = job["relabel_configs"]
    keeps = {r["source_labels"][0]: r["regex"] for r in relabel if r.get("action") == "keep"}
    targets = {r["target_label"]: r["source_labels"][0] for r in relabel
               if "target_label" in r}
    assert targets["job"] == "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    assert "service" not in targets
    assert config["rule_files"] == ["rules.yml"]
    defaults = Settings()
    for name in SERVICES:
        docs = list(yaml.safe_load_all((K8S_BASE / f"{name}.yaml").read_text(encoding="utf-8")))
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == name
        for meta, regex in keeps.items():
            if meta.startswith("__meta_kubernetes_pod_label_"):
                key = {"part_of": "app.kubernetes.io/part-of",
                       "component": "app.kubernetes.io/component"}[
                    meta.removeprefix("__meta_kubernetes_pod_label_app_kubernetes_io_")]
                assert labels[key] == regex, (name, key)
        ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"]
                 for p in c.get("ports", [])}
        assert ports[keeps["__meta_kubernetes_pod_container_port_name"]] == \
            defaults.metrics_port(name)


def test_rule_unit_tests_pass(promtool: str) -> None:
    """rules.test.yml: every alert fires on its scenario, not on its twin."""
    run_promtool(promtool, "test", "rules", "rules.test.yml", cwd=PROMETHEUS)
    cases = yaml.safe_load((PROMETHEUS / "rules.test.yml").read_text(encoding="utf-8"))["tests"]
    tested = {t["alertname"] for case in cases
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert tested == {r["alert"] for r in alert_rules()}, "every alert needs a firing test"


def test_the_required_alerts_exist_with_severity_and_runbook() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_each_runbook_url_points_to_a_section_of_the_operations_doc() -> None:
    anchors = markdown_anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/operations.md", url
        assert anchor == rule["alert"].lower(), f"{rule['alert']}: one section per alert"
        assert anchor in anchors, f"{url}: no such heading in docs/operations.md"


def test_rules_use_only_known_metrics_and_labels() -> None:
    for rule in alert_rules():
        check_query(rule["expr"], where=rule["alert"])


def test_scrape_config_covers_every_service_on_its_metrics_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    defaults = Settings()
    for name in SERVICES:
        (static,) = jobs[name]["static_configs"]
        assert static["targets"] == [f"{name}:{defaults.metrics_port(name)}"]
        assert "service" not in static.get("labels", {}), \
            "a target label `service` would clash with the metrics' own label"
    assert config["rule_files"] == ["rules.yml"]


@pytest.mark.parametrize(("expr", "metrics", "grouped"), [
    ('sum by (service) (rate(crm_grpc_requests_total{code=~"A|B"}[5m]))',
     {"crm_grpc_requests_total"}, {"service"}),
    ("histogram_quantile(0.99, sum by (le, topic) (rate(x_bucket[$__rate_interval])))",
     {"x_bucket"}, {"le", "topic"}),
    ("a unless a offset 10m or max(b) / clamp_min(c, 1) > 0.1e3",
     {"a", "b", "c"}, set()),
    ('count by (alertname) (ALERTS{alertstate="firing"}) * on (job) group_left up',
     {"ALERTS", "up"}, {"alertname", "job"}),
])
def test_query_reader(expr: str, metrics: set[str], grouped: set[str]) -> None:
    used = promql.usage(expr)
    assert used.metrics == metrics
    assert used.grouped == grouped


@pytest.mark.parametrize(("expr", "operands"), [
    ("up == 0", ["up"]),
    ('sum by (s) (rate(x{code=~"A|B"}[5m])) / sum by (s) (rate(x[5m])) > 0.05\n'
     "and\nsum by (s) (rate(x[5m])) > 0.05",
     ['sum by (s) (rate(x{code=~"A|B"}[5m])) / sum by (s) (rate(x[5m]))',
      "sum by (s) (rate(x[5m]))"]),
    ("sum(increase(a[10m])) > 0 or sum(a unless a offset 10m)",
     ["sum(increase(a[10m]))", "sum(a unless a offset 10m)"]),
    ('x{l="a or b > 1"} >= bool 1e3 unless on (job) y', ['x{l="a or b > 1"}', "y"]),
])
def test_alert_operands(expr: str, operands: list[str]) -> None:
    """tests/deploy/test_prometheus_live.py queries what each alert compares."""
    assert promql.operands(expr) == operands


def test_alert_operands_refuse_what_they_cannot_strip() -> None:
    with pytest.raises(ValueError, match="cannot strip"):
        promql.operands("a > b")
