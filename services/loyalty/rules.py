"""The rule language, as pure functions (no I/O): what a loyalty rule says
and when it matches.

A **rule** is data: the CloudEvents type that triggers it, conditions over
named *facts* (from the trigger event and from loyalty's own view of the
customer: :func:`facts_of`) and one or more **actions** (a follow-up, a
discount, a newsletter enrolment, a referral reward). :func:`parse_rule`
validates a rule and names the rule and the field of every problem;
:func:`evaluate` says whether a rule matches a set of facts and, when it does
not, which conditions failed. Each trigger yields each of its actions once:
their ids are deterministic (:func:`action_id`).

The shipped rules are ``rules.yaml``; :mod:`services.loyalty.rulebook` keeps
each process's rules current.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from crm_contracts.base import EventPayload
from crm_contracts.money import MAX_AMOUNT_MINOR
from crm_contracts.vocabulary import STAGES
from crm_runtime import ids
from crm_runtime.errors import InvalidArgument
from services.loyalty.domain import CHANNELS, Purpose, View

# --- facts ------------------------------------------------------------------

#: Fact kinds: "text", "int", "bool", "list" (of text).
FactKind = Literal["text", "int", "bool", "list"]

#: Facts about the customer, known for every trigger (loyalty's own view).
CUSTOMER_FACTS: dict[str, FactKind] = {
    "stage": "text",
    "purchase_count": "int",
    "segments": "list",
    "days_since_last_purchase": "int",
    "referred": "bool",
    "at_risk": "bool",
    "preferred_channel": "text",
    "newsletter_consent": "bool",
    "promotional_consent": "bool",
}

#: Trigger event types a rule may name, and the facts each event brings.
TRIGGERS: dict[str, dict[str, FactKind]] = {
    "customer.registered": {"source": "text"},
    "customer.stage_changed": {"from_stage": "text", "to_stage": "text", "cause": "text"},
    "customer.won_back": {},
    "customer.purchase_recorded": {"amount_minor": "int", "currency": "text"},
    "customer.consent_changed": {"purpose": "text", "granted": "bool"},
    # newly_at_risk: false when the customer was at risk already (new reasons).
    "customer.at_risk": {"reasons": "list", "newly_at_risk": "bool"},
    "customer.risk_cleared": {},
    "interaction.recorded": {"channel": "text", "kind": "text", "direction": "text",
                             "outcome": "text", "amount_minor": "int", "currency": "text",
                             "touchpoint": "text", "unit": "text"},
    "case.breached": {"kind": "text", "channel": "text", "unit": "text", "milestone": "text"},
    "case.resolved": {"kind": "text", "channel": "text", "unit": "text", "late": "bool"},
    "survey.response_recorded": {"csat": "int", "nps": "int", "channel": "text",
                                 "touchpoint": "text"},
    "customer.dissatisfaction_signal": {"reason": "text", "score": "int"},
    # A change of segment membership loyalty had not seen (the latest per
    # customer and segment; services/loyalty/memberships.py).
    "customer.segment_entered": {"segment": "text", "cause": "text"},
    "customer.segment_left": {"segment": "text", "cause": "text"},
}

#: Event types a follow-up may be cancelled by (``cancel_on``): it got what it was for.
CANCELLING_EVENTS = ("customer.won_back", "customer.risk_cleared", "customer.purchase_recorded",
                     "customer.stage_changed", "case.resolved", "interaction.recorded",
                     "survey.response_recorded")


def fact_value_ok(kind: FactKind, value: Any) -> bool:
    """Whether ``value`` has the type of a fact of ``kind`` (None: unknown)."""
    if value is None:
        return True
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"text": str, "bool": bool}[kind])


def facts_for(trigger: str) -> dict[str, FactKind]:
    return {**CUSTOMER_FACTS, **TRIGGERS[trigger]}


def facts_of(view: View, data: EventPayload | None, now: datetime,
             trigger: str | None = None) -> dict[str, Any]:
    """The facts rules are evaluated on: the customer's, then the event's."""
    facts: dict[str, Any] = {
        "stage": view.stage,
        "purchase_count": view.purchase_count,
        "segments": view.segments,
        "days_since_last_purchase": (now - view.last_purchase_at).days
        if view.last_purchase_at else None,
        "referred": view.referred_by is not None,
        "at_risk": view.at_risk,
        "preferred_channel": view.preferred_channel,
        "newsletter_consent": view.newsletter_consent,
        "promotional_consent": view.promotional_consent,
    }
    if data is not None:
        for name in TRIGGERS.get(trigger or data.event_type, {}):
            value = getattr(data, name, None)
            facts[name] = list(value) if isinstance(value, list | tuple) else value
    return facts


# --- conditions ---------------------------------------------------------------

_OPS_BY_KIND: dict[str, tuple[str, ...]] = {
    "text": ("eq", "ne", "in", "not_in"),
    "int": ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"),
    "bool": ("eq", "ne"),
    "list": ("includes", "includes_any", "excludes"),
}


@dataclass(frozen=True)
class Check:
    """One compiled condition: ``fact <op> operand``."""

    fact: str
    op: str
    operand: Any

    def describe(self) -> str:
        return f"{self.fact} {self.op} {self.operand!r}"


def _check_operand(kind: str, op: str, operand: Any, where: str) -> Any:
    many = op in ("in", "not_in", "includes_any")
    scalar = "text" if kind == "list" else kind
    values = operand if many else [operand]
    if many and (not isinstance(operand, list) or not operand):
        raise InvalidArgument(where, f"'{op}' needs a non-empty list, got {operand!r}")
    for value in values:
        ok = {"text": isinstance(value, str),
              "int": isinstance(value, int) and not isinstance(value, bool),
              "bool": isinstance(value, bool)}[scalar]
        if not ok:
            expected = {"text": "a string", "int": "an integer", "bool": "true or false"}[scalar]
            raise InvalidArgument(where, f"expected {expected}, got {value!r}")
    return tuple(values) if many else operand


def compile_conditions(trigger: str, when: Mapping[str, Any], where: str = "when"
                       ) -> tuple[Check, ...]:
    """Validate ``when`` against the facts of ``trigger``.

    A condition is ``fact: value`` (equals), ``fact: [a, b]`` (one of) or
    ``fact: {op: operand, ...}`` with ops eq, ne, in, not_in, gt, gte, lt, lte
    (numbers) and includes, includes_any, excludes (lists such as segments)."""
    known = facts_for(trigger)
    checks: list[Check] = []
    for fact, spec in when.items():
        at = f"{where}.{fact}"
        if fact not in known:
            raise InvalidArgument(at, f"unknown fact for trigger {trigger!r}; known: "
                                      f"{sorted(known)}")
        kind = known[fact]
        if isinstance(spec, dict):
            if not spec:
                raise InvalidArgument(at, "needs at least one operator")
            pairs = list(spec.items())
        elif isinstance(spec, list):
            pairs = [("includes_any" if kind == "list" else "in", spec)]
        else:
            pairs = [("includes" if kind == "list" else "eq", spec)]
        for op, operand in pairs:
            if op not in _OPS_BY_KIND[kind]:
                raise InvalidArgument(f"{at}.{op}", f"operator not allowed on a {kind} fact; "
                                                    f"use one of {list(_OPS_BY_KIND[kind])}")
            value = _check_operand(kind, op, operand, f"{at}.{op}")
            if fact in ("stage", "from_stage", "to_stage"):
                for stage in value if isinstance(value, tuple) else (value,):
                    if stage not in STAGES:
                        raise InvalidArgument(f"{at}.{op}", f"{stage!r} is not one of "
                                                            f"{list(STAGES)}")
            checks.append(Check(fact, op, value))
    return tuple(checks)


def _holds(check: Check, value: Any) -> bool:
    op, operand = check.op, check.operand
    if op == "eq":
        return bool(value == operand)
    if op == "ne":
        return bool(value != operand)
    if op == "in":
        return value in operand
    if op == "not_in":
        return value not in operand
    if op == "gt":
        return bool(value > operand)
    if op == "gte":
        return bool(value >= operand)
    if op == "lt":
        return bool(value < operand)
    if op == "lte":
        return bool(value <= operand)
    if op == "includes":
        return operand in value
    if op == "includes_any":
        return any(v in value for v in operand)
    if op == "excludes":
        return operand not in value
    raise AssertionError(f"unknown operator {op}")


def failed_checks(checks: Iterable[Check], facts: Mapping[str, Any]) -> list[str]:
    """The conditions that do not hold; a fact that is unknown (absent or
    None) fails every condition on it."""
    failed = []
    for check in checks:
        value = facts.get(check.fact)
        if value is None:
            failed.append(f"{check.describe()} (fact unknown)")
        elif not _holds(check, value):
            failed.append(f"{check.describe()} (is {value!r})")
    return failed


# --- rules --------------------------------------------------------------------

_SLUG = r"^[a-z][a-z0-9_-]{0,62}$"
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


#: The longest delay a follow-up may have (two years, as a discount's
#: validity): a due time must stay a date the calendar and PostgreSQL hold.
MAX_DELAY = timedelta(days=730)


@functools.lru_cache(maxsize=256)
def parse_duration(text: str) -> timedelta:
    """``3d``, ``12h``, ``1d12h``, ``30m``, ``0m``, at most :data:`MAX_DELAY`
    (remembered: a follow-up rule's delay is read on every event that
    triggers it)."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"{text!r} is not a duration like '3d', '12h', '1d6h' or '30m'")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    try:
        duration = timedelta(days=days, hours=hours, minutes=minutes)
    except OverflowError:
        duration = MAX_DELAY + timedelta(days=1)
    if duration > MAX_DELAY:
        raise ValueError(f"{text.strip()!r} is longer than the longest delay "
                         f"({MAX_DELAY.days}d)")
    return duration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiscountTerms(_Strict):
    """What a discount is worth and when it can be used."""

    percent: int | None = Field(default=None, ge=1, le=100, description="Percent off.")
    amount_minor: int | None = Field(default=None, gt=0, le=MAX_AMOUNT_MINOR,
                                     description="Fixed amount off.")
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    min_purchase_minor: int = Field(default=0, ge=0, le=MAX_AMOUNT_MINOR)
    valid_days: int = Field(default=30, ge=1, le=730)
    purpose: Literal["promotional", "service"] = "promotional"
    reason: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _one_kind(self) -> DiscountTerms:
        if (self.percent is None) == (self.amount_minor is None):
            raise ValueError("give exactly one of percent or amount_minor")
        return self

    @property
    def kind(self) -> str:
        return "percent" if self.percent is not None else "fixed"


class FollowUpAction(_Strict):
    type: Literal["follow_up"]
    delay: str = Field(default="0m", description="After the trigger: '3d', '12h', '30m'.")
    channel: str
    template: str = Field(pattern=_SLUG)
    reason: str = Field(min_length=1, max_length=200)
    purpose: Purpose = Purpose.SERVICE
    list: str = Field(default="", description="Newsletter follow-ups: the list.")
    cancel_on: tuple[str, ...] = Field(
        default=(), description="Event types that make the follow-up moot (it is cancelled).")

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value not in CHANNELS:
            raise ValueError(f"{value!r} is not one of {list(CHANNELS)}")
        return value

    @field_validator("cancel_on")
    @classmethod
    def _cancel_on(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for t in value:
            if t not in CANCELLING_EVENTS:
                raise ValueError(f"{t!r} is not one of {list(CANCELLING_EVENTS)}")
        return value

    @property
    def delay_td(self) -> timedelta:
        return parse_duration(self.delay)


class DiscountAction(DiscountTerms):
    type: Literal["discount"]


class NewsletterAction(_Strict):
    type: Literal["newsletter"]
    list: str = Field(pattern=_SLUG)


class ReferralRewardAction(_Strict):
    """A discount for the customer who referred the trigger's customer, once
    per referred customer."""

    type: Literal["referral_reward"]
    discount: DiscountTerms


Action = Annotated[FollowUpAction | DiscountAction | NewsletterAction | ReferralRewardAction,
                   Field(discriminator="type")]


def action_purpose(action: Action) -> Purpose:
    if isinstance(action, FollowUpAction):
        return action.purpose
    if isinstance(action, DiscountAction):
        return Purpose(action.purpose)
    if isinstance(action, ReferralRewardAction):
        return Purpose(action.discount.purpose)
    return Purpose.NEWSLETTER


class Rule(_Strict):
    """A rule as written in rules.yaml or sent to UpsertRule."""

    id: str = Field(pattern=_SLUG)
    description: str = Field(default="", max_length=500)
    enabled: bool = True
    trigger: str
    when: dict[str, Any] = Field(default_factory=dict)
    actions: list[Action] = Field(min_length=1, max_length=10)

    @field_validator("trigger")
    @classmethod
    def _trigger(cls, value: str) -> str:
        if value not in TRIGGERS:
            raise ValueError(f"{value!r} is not a trigger; one of {sorted(TRIGGERS)}")
        return value

    @cached_property
    def compiled(self) -> tuple[Check, ...]:
        """The conditions, compiled once per rule object."""
        return compile_conditions(self.trigger, self.when)

    def checks(self) -> tuple[Check, ...]:
        return self.compiled

    def definition(self) -> dict[str, Any]:
        """The JSON form stored and returned by the API."""
        return self.model_dump(mode="json", exclude_defaults=False)


def parse_rule(data: Any, where: str = "rule") -> Rule:
    """Validate one rule; errors are :class:`InvalidArgument` naming the rule
    and the field (``rules[2] (repeat-buyer).actions[0].percent``)."""
    if not isinstance(data, dict):
        raise InvalidArgument(where, f"a rule is a mapping, got {type(data).__name__}")
    name = data.get("id")
    label = f"{where} ({name})" if isinstance(name, str) and name else where
    try:
        rule = Rule.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidArgument(f"{label}.{_loc(err['loc'])}".rstrip("."),
                              err["msg"].removeprefix("Value error, ")) from None
    compile_conditions(rule.trigger, rule.when, f"{label}.when")
    return rule


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    after_index = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif after_index and part in ("follow_up", "discount", "newsletter", "referral_reward"):
            pass  # the discriminator tag pydantic adds to the path (not a field named so)
        else:
            out += f".{part}" if out else str(part)
        after_index = isinstance(part, int)
    return out


def parse_rule_file(document: Any) -> list[Rule]:
    """Validate a rules document ``{rules: [...]}``; rule ids must be unique."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise InvalidArgument("rules", "the file must be a mapping with a 'rules' list")
    extra = set(document) - {"rules", "version"}
    if extra:
        raise InvalidArgument(sorted(extra)[0], "unknown top-level key; expected 'rules'")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(document["rules"]):
        rule = parse_rule(item, f"rules[{i}]")
        if rule.id in seen:
            raise InvalidArgument(f"rules[{i}] ({rule.id}).id", "duplicate rule id")
        seen.add(rule.id)
        rules.append(rule)
    return rules


def matches(rule: Rule, facts: Mapping[str, Any]) -> bool:
    """Whether an enabled rule's conditions all hold (the hot path: no
    explanations built; :func:`evaluate` gives them)."""
    if not rule.enabled:
        return False
    for check in rule.checks():
        value = facts.get(check.fact)
        if value is None or not _holds(check, value):
            return False
    return True


@dataclass(frozen=True)
class Evaluation:
    rule: Rule
    matched: bool
    failed: list[str]


def evaluate(rule: Rule, facts: Mapping[str, Any]) -> Evaluation:
    failed = failed_checks(rule.checks(), facts)
    return Evaluation(rule, rule.enabled and not failed,
                      failed if rule.enabled else ["rule is disabled", *failed])


_ACTION_NAMESPACE = uuid.UUID("6f1d7a52-3c2b-4e7e-9d55-2a0c6f0c1b10")


def action_id(rule_id: str, trigger_event_id: str, index: int) -> uuid.UUID:
    """The same (rule, trigger event, action) always gets the same id, so a
    redelivered trigger cannot yield its action twice."""
    return ids.uuid5(_ACTION_NAMESPACE, f"{rule_id}\x1f{trigger_event_id}\x1f{index}")
