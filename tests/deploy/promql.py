"""Just enough PromQL reading to list the metrics and labels a query uses
(for checking dashboards and alert rules against the metrics that exist)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{\w+\}|\w+)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TOKEN = re.compile(r"\d[\w.]*|[a-zA-Z_:][a-zA-Z0-9_:]*")
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "atan2", "inf", "nan"}


@dataclass(frozen=True)
class Usage:
    metrics: frozenset[str]
    #: (metric, label) pairs of label matchers, e.g. ("up", "job")
    matched: frozenset[tuple[str, str]]
    #: labels named in by/without/on/ignoring/group_x lists
    grouped: frozenset[str]


def usage(expr: str) -> Usage:
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("5m", text)
    matched = set()
    for m in _SELECTOR.finditer(text):
        for label in _MATCHER.findall(m.group(2)):
            matched.add((m.group(1) or "", label))
    text = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    grouped = {label.strip() for m in _GROUPING.finditer(text)
               for label in m.group(1).split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub("", text)
    metrics = set()
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token[0].isdigit() or token.lower() in KEYWORDS:
            continue
        if text[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        metrics.add(token)
    return Usage(frozenset(metrics), frozenset(matched), frozenset(grouped))
