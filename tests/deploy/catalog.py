"""The metric series the product exposes: the runtime's (read from
crm_runtime.metrics' collectors) and the services' domain metrics, plus what
Prometheus itself adds. Dashboards and alert rules may use only these."""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from crm_runtime import metrics as runtime_metrics
from tests.deploy import promql

#: Domain metrics of the services: sample name -> labels besides `service`.
DOMAIN: dict[str, frozenset[str]] = {
    "crm_customers_by_stage": frozenset({"stage"}),
    "crm_stage_changes_total": frozenset({"from_stage", "to_stage"}),
    "crm_interactions_total": frozenset({"channel", "kind"}),
    "crm_cases_open": frozenset(),
    "crm_cases_breached_total": frozenset({"kind", "channel", "milestone", "unit"}),
    "crm_csat_responses_total": frozenset({"channel"}),
    "crm_csat_score_sum": frozenset({"channel"}),
    "crm_nps_responses_total": frozenset({"channel", "category"}),
    "crm_customers_at_risk": frozenset(),
    "crm_erasures_overdue": frozenset({"awaiting"}),
    "crm_contact_decisions_total": frozenset({"caller", "purpose", "decision"}),
    "crm_cases_overdue": frozenset(),
    "crm_cases_paused": frozenset(),
    "crm_loyalty_actions_total": frozenset({"rule", "action_type", "outcome", "reason"}),
    "crm_loyalty_redemptions_total": frozenset({"result"}),
    "crm_loyalty_follow_ups": frozenset({"status"}),
    "crm_loyalty_follow_ups_overdue": frozenset(),
    "crm_loyalty_discounts": frozenset({"state"}),
    "crm_service_cycle_score": frozenset({"cycle", "touchpoint", "source"}),
    "crm_action_plans_overdue": frozenset({"cycle"}),
    "crm_campaigns": frozenset({"state"}),
    "crm_campaign_members_total": frozenset({"campaign", "outcome", "reason"}),
    "crm_campaign_pending": frozenset({"campaign"}),
    "crm_campaign_stalled_seconds": frozenset({"campaign"}),
    "crm_webhook_deliveries_total": frozenset({"webhook", "outcome", "status_code"}),
    "crm_webhook_delivery_latency_seconds_bucket": frozenset({"webhook", "le"}),
    "crm_webhook_backlog": frozenset({"webhook"}),
    "crm_webhook_oldest_pending_seconds": frozenset({"webhook"}),
    "crm_webhook_failed": frozenset({"webhook"}),
}

#: Series Prometheus makes itself (scrape health, alert state).
PROMETHEUS: dict[str, frozenset[str]] = {
    "up": frozenset(),
    "ALERTS": frozenset({"alertname", "alertstate", "severity"}),
}

#: Labels every scraped series gets from Prometheus' target.
TARGET_LABELS = frozenset({"job", "instance"})

_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created")}


def _wrapper_labels(wrapper: MetricWrapperBase) -> frozenset[str]:
    names: tuple[str, ...] = getattr(wrapper, "_labelnames", ())
    return frozenset(names)


def sample_names(wrapper: MetricWrapperBase) -> dict[str, frozenset[str]]:
    """The series names one prometheus_client metric exposes, with labels."""
    out: dict[str, frozenset[str]] = {}
    labels = _wrapper_labels(wrapper)
    for family in wrapper.describe():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def runtime() -> dict[str, frozenset[str]]:
    """Every series of crm_runtime.metrics' collectors."""
    out: dict[str, frozenset[str]] = {}
    for value in vars(runtime_metrics).values():
        if isinstance(value, MetricWrapperBase):
            out.update(sample_names(value))
    return out


def known() -> dict[str, frozenset[str]]:
    """Series name -> labels, for every series dashboards and rules may use."""
    out = {name: labels | TARGET_LABELS for name, labels in runtime().items()}
    out.update({name: labels | {"service"} | TARGET_LABELS for name, labels in DOMAIN.items()})
    out.update({name: labels | TARGET_LABELS for name, labels in PROMETHEUS.items()})
    return out


def markdown_anchors(markdown: str) -> set[str]:
    """GitHub-style anchors of the headings of a Markdown document."""
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            title = line.lstrip("#").strip().lower()
            title = "".join(c for c in title if c.isalnum() or c in " -_")
            anchors.add(title.replace(" ", "-"))
    return anchors


def check_query(expr: str, *, where: str) -> None:
    """Every metric of the query exists, and so does every label it names."""
    known_series = known()
    used = promql.usage(expr)
    unknown = sorted(used.metrics - set(known_series))
    assert not unknown, f"{where}: unknown metric(s) {unknown} in {expr!r}"
    for metric, label in used.matched:
        if metric:
            assert label in known_series[metric], f"{where}: {metric} has no label {label!r}"
    available = set().union(*(known_series[m] for m in used.metrics)) if used.metrics else set()
    missing = sorted(used.grouped - available)
    assert not missing, f"{where}: label(s) {missing} belong to none of {sorted(used.metrics)}"
