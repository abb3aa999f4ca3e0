"""Loyalty rules and trust rules as pure functions, no I/O.

A **rule** is data: the CloudEvents type that triggers it, conditions over
named *facts* (from the trigger event and from loyalty's own view of the
customer) and one or more **actions** (a follow-up, a discount, a newsletter
enrolment, a referral reward). :func:`parse_rule` validates a rule and names
the rule and the field of every problem; :func:`evaluate` says whether a rule
matches a set of facts and, when it does not, which conditions failed.

The **trust rules** apply to every action, whichever rule asks for it:
:func:`trust_decision` (erasure, do-not-contact, consent, the frequency cap
over a sliding window) and :func:`outside_quiet_hours` (scheduled contacts
move out of quiet hours, in the customer's time zone when known).

Discount arithmetic (:func:`discount_amount`, :func:`redeem_refusal`) and the
deterministic action ids that make each trigger yield its actions once
(:func:`action_id`) live here too.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from crm_contracts.vocabulary import ACTION_CHANNELS, STAGES
from crm_runtime import ids
from crm_runtime.errors import InvalidArgument

CHANNELS = ACTION_CHANNELS


class Purpose(StrEnum):
    """Why we contact the customer; it decides which consent is needed."""

    SERVICE = "service"  # about their own relationship (welcome, thanks, apology)
    PROMOTIONAL = "promotional"  # offers: needs promotional_offers consent, counts in the cap
    NEWSLETTER = "newsletter"  # needs newsletter consent


class Outcome(StrEnum):
    PERFORMED = "performed"
    SUPPRESSED = "suppressed"  # a trust rule stopped it (recorded and published)
    SKIPPED = "skipped"  # nothing to do (already enrolled, already rewarded, not referred)


class Suppression(StrEnum):
    """Why an action was stopped: a trust rule, or a referral that cannot be
    attributed."""

    ERASED = "erased"
    DO_NOT_CONTACT = "do_not_contact"
    NO_PROMOTIONAL_CONSENT = "no_promotional_consent"
    NO_NEWSLETTER_CONSENT = "no_newsletter_consent"
    UNSUBSCRIBED = "unsubscribed"
    FREQUENCY_CAP = "frequency_cap"
    #: The customer signed up with a referral code loyalty never issued (or
    #: whose owner was erased): no referrer can be rewarded.
    UNKNOWN_REFERRAL_CODE = "unknown_referral_code"


class FollowUpStatus(StrEnum):
    SCHEDULED = "scheduled"
    DUE = "due"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


OPEN_FOLLOW_UP = (FollowUpStatus.SCHEDULED.value, FollowUpStatus.DUE.value)

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
    "case.breached": {"kind": "text", "channel": "text", "unit": "text"},
    "case.resolved": {"kind": "text", "channel": "text", "unit": "text", "late": "bool"},
    "survey.response_recorded": {"csat": "int", "nps": "int", "channel": "text",
                                 "touchpoint": "text"},
    "customer.dissatisfaction_signal": {"reason": "text", "score": "int"},
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


@functools.lru_cache(maxsize=256)
def parse_duration(text: str) -> timedelta:
    """``3d``, ``12h``, ``1d12h``, ``30m``, ``0m`` (remembered: a follow-up
    rule's delay is read on every event that triggers it)."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"{text!r} is not a duration like '3d', '12h', '1d6h' or '30m'")
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DiscountTerms(_Strict):
    """What a discount is worth and when it can be used."""

    percent: int | None = Field(default=None, ge=1, le=100, description="Percent off.")
    amount_minor: int | None = Field(default=None, gt=0, description="Fixed amount off.")
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    min_purchase_minor: int = Field(default=0, ge=0)
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
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("follow_up", "discount", "newsletter", "referral_reward") and out.endswith(
                "]"):
            continue  # the discriminator tag pydantic adds to the path
        else:
            out += f".{part}" if out else str(part)
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


# --- trust --------------------------------------------------------------------


@dataclass(frozen=True)
class ContactState:
    """What loyalty knows about whether it may contact a customer."""

    erased: bool = False
    do_not_contact: bool = False
    newsletter_consent: bool = False
    promotional_consent: bool = False


@dataclass(frozen=True)
class TrustPolicy:
    """The trust settings every action is checked against."""

    cap: int = 3  # promotional contacts per customer per window, all rules together
    window: timedelta = timedelta(days=7)
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    default_time_zone: str = "UTC"


def trust_decision(purpose: Purpose, state: ContactState, earlier_promotional: Sequence[datetime],
                   now: datetime, policy: TrustPolicy) -> Suppression | None:
    """None when the action may go ahead, else why it is suppressed.
    ``earlier_promotional`` are the times of promotional contacts performed."""
    if state.erased:
        return Suppression.ERASED
    if state.do_not_contact:
        return Suppression.DO_NOT_CONTACT
    if purpose is Purpose.NEWSLETTER and not state.newsletter_consent:
        return Suppression.NO_NEWSLETTER_CONSENT
    if purpose is Purpose.PROMOTIONAL:
        if not state.promotional_consent:
            return Suppression.NO_PROMOTIONAL_CONSENT
        if not within_cap(earlier_promotional, now, policy):
            return Suppression.FREQUENCY_CAP
    return None


def within_cap(earlier: Sequence[datetime], now: datetime, policy: TrustPolicy) -> bool:
    """True while fewer than ``cap`` contacts fall in the window ending now."""
    recent = sum(1 for at in earlier if now - policy.window < at <= now)
    return recent < policy.cap


def time_zone(name: str, default: str = "UTC") -> tzinfo:
    """The customer's zone when it is a valid IANA name, else the default."""
    for candidate in (name, default):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end


def outside_quiet_hours(due: datetime, zone: tzinfo, start: time, end: time) -> datetime:
    """``due`` if it is outside quiet hours in ``zone``, else the end of those
    quiet hours (the next moment a contact is acceptable)."""
    local = due.astimezone(zone)
    if not in_quiet_hours(local.timetz().replace(tzinfo=None), start, end):
        return due
    day: date = local.date()
    if start > end and local.time() >= start:
        day += timedelta(days=1)  # the evening part: quiet until tomorrow morning
    moved = datetime.combine(day, end, tzinfo=zone)
    # A non-existent local time (a DST gap) normalises forward; never go back.
    return max(moved.astimezone(due.tzinfo), due)


def parse_clock_time(text: str) -> time:
    try:
        return time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time of day like '21:00'") from None


# --- discounts ----------------------------------------------------------------

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud at a till
_CODE = re.compile(rf"^[{CODE_ALPHABET}]{{4}}(?:-[{CODE_ALPHABET}]{{4}}){{3}}$")


_FROM_BASE32 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", CODE_ALPHABET)


def new_code() -> str:
    """A single-use code: 80 random bits from ``secrets``, written as 16
    characters of a 32-letter alphabet (5 bits each, so uniform)."""
    return new_codes(1)[0]


def _code_chars(raw: bytes) -> str:
    """``raw`` in the code alphabet: base32, 5 bits to a character."""
    return base64.b32encode(raw).decode().translate(_FROM_BASE32)


def new_codes(n: int) -> list[str]:
    """``n`` codes from one read of the system's random source."""
    # 10 bytes are 16 characters exactly, so one encoding of all n * 10 bytes
    # gives each code the characters its own 10 bytes would.
    chars = _code_chars(secrets.token_bytes(10 * n))
    return [f"{chars[i:i + 4]}-{chars[i + 4:i + 8]}-{chars[i + 8:i + 12]}-{chars[i + 12:i + 16]}"
            for i in range(0, 16 * n, 16)]


def new_referral_code() -> str:
    """``REF-`` and 10 characters of the code alphabet (50 random bits), from
    one read of the system's random source."""
    return "REF-" + _code_chars(secrets.token_bytes(10))[:10]


def normalise_code(text: str, field: str = "code") -> str:
    code = text.strip().upper().replace(" ", "")
    if len(code) == 16 and "-" not in code:
        code = "-".join(code[i:i + 4] for i in range(0, 16, 4))
    if not _CODE.match(code):
        raise InvalidArgument(field, "is not a discount code (XXXX-XXXX-XXXX-XXXX)")
    return code


@dataclass(frozen=True)
class DiscountState:
    kind: str
    percent: int | None
    amount_minor: int | None
    currency: str
    min_purchase_minor: int
    expires_at: datetime
    redeemed_at: datetime | None = None
    voided_at: datetime | None = None


def discount_amount(d: DiscountState, order_minor: int) -> int:
    """How much comes off an order: a percent rounds down; a fixed amount
    never exceeds the order."""
    if d.kind == "percent":
        assert d.percent is not None
        return order_minor * d.percent // 100
    assert d.amount_minor is not None
    return min(d.amount_minor, order_minor)


def redeem_refusal(d: DiscountState, now: datetime, order_minor: int,
                   order_currency: str) -> str | None:
    """None when the code can be used for this order, else a clear reason."""
    if d.voided_at is not None:
        return "the code was withdrawn"
    if d.redeemed_at is not None:
        return f"the code was already redeemed at {d.redeemed_at.isoformat()}"
    if now >= d.expires_at:
        return f"the code expired at {d.expires_at.isoformat()}"
    if order_currency != d.currency:
        return f"the code is for orders in {d.currency}, not {order_currency}"
    if order_minor < d.min_purchase_minor:
        return (f"the order ({order_minor} {order_currency} minor units) is below the minimum "
                f"purchase of {d.min_purchase_minor}")
    return None


def expiring_notice_at(issued_at: datetime, expires_at: datetime,
                       notice: timedelta) -> datetime | None:
    """When to announce that a discount expires soon; None when its whole
    validity is shorter than the notice."""
    at = expires_at - notice
    return at if at > issued_at else None
