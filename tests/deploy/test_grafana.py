"""deploy/grafana/: the dashboards parse, every panel has a query, the
queries are valid PromQL (promtool) and use only metrics that exist; the
provisioning files point at the dashboards and at Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from crm_runtime import metrics as runtime_metrics
from tests.deploy import catalog
from tests.deploy.catalog import check_query
from tests.deploy.conftest import ROOT, run_promtool

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
#: Grafana's interval variables, replaced by a duration to check the PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h",
                     "$service": ".*"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows keep their panels inside
    return out


def queries() -> list[tuple[str, str]]:
    """(where, expr) of every query of every dashboard."""
    found = []
    for path in DASHBOARDS:
        for panel in panels(json.loads(path.read_text(encoding="utf-8"))):
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    return found


def test_the_operations_and_service_boards_exist() -> None:
    assert [p.name for p in DASHBOARDS] == ["crm-operations.json", "crm-service.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_parses_and_every_panel_has_a_query(path: Path) -> None:
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr", "").strip() for t in targets), \
            f"{panel['title']}: a panel needs a query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in targets:
            for name in _variables_used(target["expr"]):
                assert name in variables or name.startswith("__"), \
                    f"{panel['title']}: ${name} is not a variable of the dashboard"


def _variables_used(expr: str) -> set[str]:
    return set(re.findall(r"\$\{?(\w+)", expr))


def test_dashboards_use_only_known_metrics_and_labels() -> None:
    for where, expr in queries():
        check_query(expr, where=where)


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool has no query checker: check them as recording rules."""
    rules = []
    for i, (_, expr) in enumerate(queries()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = run_promtool(promtool, "check", "rules", "queries.yml", cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in out


def test_the_boards_cover_what_operators_asked_for() -> None:
    used = {json.loads(p.read_text(encoding="utf-8"))["uid"]: " ".join(
        t["expr"] for panel in panels(json.loads(p.read_text(encoding="utf-8")))
        for t in panel.get("targets", [])) for p in DASHBOARDS}
    for metric in ("crm_messages_consumed_total", "crm_messages_published_total",
                   "crm_consumer_lag", "crm_handler_duration_seconds_bucket",
                   "crm_outbox_backlog", "crm_outbox_oldest_age_seconds",
                   "crm_messages_dead_lettered_total", "crm_grpc_requests_total",
                   "crm_grpc_request_duration_seconds_bucket"):
        assert metric in used["crm-operations"], metric
    for metric in catalog.DOMAIN:
        assert metric in used["crm-service"], metric


def test_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    provider = load_yaml(GRAFANA / "provisioning/dashboards/crm.yml")
    (entry,) = provider["providers"]
    assert entry["options"]["path"] == "/etc/grafana/dashboards"  # see compose.yaml
    source = load_yaml(GRAFANA / "provisioning/datasources/prometheus.yml")
    (datasource,) = source["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_the_runtime_metrics_are_registered_with_prometheus_client() -> None:
    """catalog.runtime() lists crm_runtime.metrics' collectors: all of them
    are in the registry /metrics serves."""
    registered = {family.name for family in REGISTRY.collect()}
    described = {family.name for value in vars(runtime_metrics).values()
                 if isinstance(value, MetricWrapperBase)
                 for family in value.describe()}
    assert described and described <= registered


def test_the_domain_metrics_exist_in_the_services() -> None:
    """The domain metrics the boards and rules rely on are defined by the
    services, with at least the labels used."""
    from services.customers import metrics as customers
    from services.interactions import metrics as interactions
    from services.loyalty import metrics as loyalty

    defined: dict[str, frozenset[str]] = {}
    for module in (customers, interactions, loyalty):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                defined.update(catalog.sample_names(value))
        for gauge in getattr(module, "GAUGES", []):
            defined[gauge.name] = frozenset({"service", *gauge.labels})
    for name, labels in catalog.DOMAIN.items():
        assert name in defined, f"{name} is defined by no service"
        assert labels | {"service"} <= defined[name], f"{name}: labels {sorted(defined[name])}"
