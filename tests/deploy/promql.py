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


_SET_OPERATOR = re.compile(r"\b(and|or|unless)\b")
_TRAILING_COMPARISON = re.compile(
    r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?\s*$",
    re.IGNORECASE)
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
_MATCHING = re.compile(r"^\s*(?:on|ignoring)\s*\([^)]*\)", re.IGNORECASE)


def _top_level(expr: str) -> str:
    """``expr`` with every string, and everything inside brackets, blanked
    out (same length), so what is left is the top level of the expression."""
    out = list(_STRING.sub(lambda m: " " * len(m.group()), expr))
    depth = 0
    for i, c in enumerate(out):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth:
            out[i] = " "
    return "".join(out)


def operands(expr: str) -> list[str]:
    """The series an alert expression compares: split at the top-level set
    operators (and, or, unless) and strip each part's trailing comparison with
    a number, e.g. ``a / b > 0.05 and c >= 5`` gives ``["a / b", "c"]``."""
    top = _top_level(expr)
    parts, start = [], 0
    for m in _SET_OPERATOR.finditer(top):
        parts.append(expr[start:m.start()])
        start = m.end()
    parts.append(expr[start:])
    out = []
    for part in parts:
        stripped = _TRAILING_COMPARISON.sub("", _MATCHING.sub("", part)).strip()
        if _COMPARISON.search(_top_level(stripped)):
            raise ValueError(f"cannot strip the comparison of {part.strip()!r}")
        out.append(stripped)
    return out
