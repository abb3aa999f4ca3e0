"""Who the customer is and what stage of the relationship they are in.

Pure rules, no I/O: identity normalisation (lower-case email, E.164 phone,
``system:id`` external ids), the relationship-stage machine and the value
objects the store and the API exchange. Every stage change is returned as a
:class:`StageChange` carrying its cause, so the caller records it and
publishes it in the same transaction.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm_contracts.contact_points import normalise_email, normalise_phone
from crm_contracts.money import check_amount_minor
from crm_contracts.vocabulary import CONTACT_CHANNELS, PURCHASE_IMPORTANCE, Stage
from crm_runtime.errors import InvalidArgument


class StageCause(StrEnum):
    PURCHASE = "purchase"
    CHURN_WINDOW = "churn_window"
    CLOSED = "closed"
    MERGED = "merged"


class BuyerType(StrEnum):
    PERSON = "person"
    COMPANY = "company"


class ProductKnowledge(StrEnum):
    NOVICE = "novice"
    INFORMED = "informed"
    EXPERT = "expert"


CHANNELS = CONTACT_CHANNELS

DEFAULT_CHURN_WINDOW = timedelta(days=365)


@dataclass(frozen=True)
class StageChange:
    from_stage: Stage
    to_stage: Stage
    cause: StageCause
    won_back: bool = False


def stage_after_purchase(stage: Stage, purchases_before: int) -> StageChange | None:
    """The stage a purchase moves a customer to, or None if it stays.

    A former customer who buys again is won back and becomes ``repeat`` (they
    have bought before); otherwise the count of earlier purchases decides."""
    if stage is Stage.FORMER:
        return StageChange(stage, Stage.REPEAT, StageCause.PURCHASE, won_back=True)
    target = Stage.ONE_TIME if purchases_before == 0 else Stage.REPEAT
    if target == stage:
        return None
    return StageChange(stage, target, StageCause.PURCHASE)


def stage_after_churn(stage: Stage, last_purchase_at: datetime | None, now: datetime,
                      window: timedelta) -> StageChange | None:
    """Former when the churn window passed since the last purchase. Customers
    who never bought (potential) have nothing to stop doing and stay."""
    if stage in (Stage.FORMER, Stage.POTENTIAL) or last_purchase_at is None:
        return None
    if now - last_purchase_at < window:
        return None
    return StageChange(stage, Stage.FORMER, StageCause.CHURN_WINDOW)


def stage_after_closing(stage: Stage) -> StageChange | None:
    if stage is Stage.FORMER:
        return None
    return StageChange(stage, Stage.FORMER, StageCause.CLOSED)


def stage_after_merge(survivor: Stage, merged: Stage, purchases: int) -> Stage:
    """Stage of the merged record: former only if both were former; otherwise
    what the combined purchase count says."""
    if survivor is Stage.FORMER and merged is Stage.FORMER:
        return Stage.FORMER
    if purchases == 0:
        return Stage.POTENTIAL
    return Stage.ONE_TIME if purchases == 1 else Stage.REPEAT


# --- satisfaction risk ------------------------------------------------------

#: How long a dissatisfaction signal keeps a customer at risk.
RISK_WINDOW = timedelta(days=90)


def risk_reasons(signals: list[tuple[str, datetime]], now: datetime,
                 window: timedelta = RISK_WINDOW) -> tuple[str, ...]:
    """Distinct reasons of the signals still inside the window, sorted."""
    return tuple(sorted({reason for reason, at in signals if now - at < window}))


def is_recovery(csat: int | None, nps: int | None) -> bool:
    """A survey answer that says the customer is satisfied again: every score
    given is good (CSAT 4-5, NPS 7-10) and at least one was given."""
    if csat is None and nps is None:
        return False
    return (csat is None or csat >= 4) and (nps is None or nps >= 7)


def churn_due(last_purchase_at: datetime, window: timedelta) -> datetime | None:
    """When the churn window of a customer ends; None when the calendar
    cannot hold it (a last purchase stored as ``infinity`` before event times
    were checked): such a customer never churns."""
    return plus(last_purchase_at, window)


def plus(at: datetime, delta: timedelta) -> datetime | None:
    """``at + delta``, or None past the end of the calendar."""
    try:
        return at + delta
    except OverflowError:
        return None


def age_band(birth_year: int | None, today_year: int) -> str:
    """Age band for segmentation (e.g. ``25-34``); empty when unknown."""
    if not birth_year:
        return ""
    age = today_year - birth_year
    for low, high in ((0, 17), (18, 24), (25, 34), (35, 44), (45, 54), (55, 64)):
        if low <= age <= high:
            return f"{low}-{high}"
    return "65+"


# --- identity -------------------------------------------------------------

_EXTERNAL_ID = re.compile(r"^[a-z][a-z0-9_.-]{0,31}:[^\s]{1,128}$")


def normalise_external_id(value: str, field: str = "external_ids") -> str:
    """``system:id`` with a lower-case system name, e.g. ``pos:1234``."""
    system, sep, ident = value.strip().partition(":")
    candidate = f"{system.lower()}{sep}{ident}"
    if not _EXTERNAL_ID.match(candidate):
        raise InvalidArgument(field, f"{value!r} must look like 'system:id' (e.g. 'pos:1234')")
    return candidate


#: Referral codes as the loyalty service issues them (GetLoyaltyProfile's
#: ``referral_code``): ``REF-`` and 10 characters of an alphabet without 0/O
#: and 1/I. The format is part of the contract; a unit test checks that the
#: codes loyalty generates pass :func:`normalise_referral_code`.
REFERRAL_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
_REFERRAL_CODE = re.compile(rf"^REF-[{REFERRAL_CODE_ALPHABET}]{{10}}$")


def normalise_referral_code(value: str, field: str = "referral_code") -> str:
    """A referral code typed by a person (a sign-up form's "Got a code from a
    friend?"), in its canonical form ``REF-XXXXXXXXXX``: case, spaces and
    dashes do not matter and the ``REF`` prefix may be left out. Only the
    format is checked here; which customer the code belongs to only the
    loyalty service knows."""
    raw = "".join(value.split()).replace("-", "").upper()
    if len(raw) == 13 and raw.startswith("REF"):
        raw = raw[3:]
    code = f"REF-{raw}"
    if not _REFERRAL_CODE.match(code):
        raise InvalidArgument(field, "is not a referral code: REF- and 10 letters or digits "
                                     "(no 0, O, 1 or I), e.g. REF-AB23CD45EF")
    return code


@dataclass(frozen=True)
class Identity:
    """The identifiers a customer can be found by; all normalised."""

    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    external_ids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, emails: list[str], phones: list[str], external_ids: list[str]) -> Identity:
        return cls(
            emails=_unique(normalise_email(e, f"emails[{i}]") for i, e in enumerate(emails)),
            phones=_unique(normalise_phone(p, f"phones[{i}]") for i, p in enumerate(phones)),
            external_ids=_unique(normalise_external_id(x, f"external_ids[{i}]")
                                 for i, x in enumerate(external_ids)),
        )

    def keys(self) -> list[tuple[str, str]]:
        """(kind, value) pairs, the unique keys registration deduplicates on."""
        return ([("email", e) for e in self.emails] + [("phone", p) for p in self.phones]
                + [("external", x) for x in self.external_ids])

    def is_empty(self) -> bool:
        return not self.keys()


def _unique(values: object) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for v in values:  # type: ignore[attr-defined]
        seen.setdefault(v, None)
    return tuple(seen)


def check_money(amount_minor: int, currency: str, field: str = "amount") -> str:
    """The currency's code, once the amount is 0 to the per-purchase maximum
    (:data:`crm_contracts.money.MAX_AMOUNT_MINOR`); ``InvalidArgument``
    (:class:`~crm_contracts.money.OutOfRange` for the amount) otherwise."""
    check_amount_minor(amount_minor, f"{field}.amount_minor" if field else "amount_minor")
    code = currency.strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise InvalidArgument(f"{field}.currency" if field else "currency",
                              f"{currency!r} is not an ISO 4217 code like 'EUR'")
    return code


# --- profile ----------------------------------------------------------------

def check_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """Validate the segmentation attributes; returns the stored form."""
    importance = profile.get("purchase_importance")
    if isinstance(importance, str):
        profile = {**profile, "purchase_importance": importance.strip().lower()}
    out = {k: v for k, v in profile.items() if v not in ("", 0, None, [])}
    out.pop("age_band", None)  # derived, never stored
    year = out.get("birth_year")
    if year is not None and not 1900 <= int(year) <= datetime.now().year:
        raise InvalidArgument("profile.birth_year", f"{year} is not a plausible birth year")
    for key, allowed in (("buyer_type", [b.value for b in BuyerType]),
                         ("product_knowledge", [k.value for k in ProductKnowledge]),
                         ("preferred_channel", list(CHANNELS)),
                         ("purchase_importance", list(PURCHASE_IMPORTANCE))):
        if key in out and out[key] not in allowed:
            raise InvalidArgument(f"profile.{key}", f"{out[key]!r} is not one of {allowed}")
    if out.get("buyer_type") == "company" and not out.get("company_name"):
        raise InvalidArgument("profile.company_name", "required when buyer_type is 'company'")
    tz = out.get("time_zone")
    if tz:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument("profile.time_zone",
                                  f"{tz!r} is not an IANA time zone") from None
    return out


# --- what is held about a customer ---------------------------------------------

@dataclass
class ConsentRecord:
    purpose: str
    granted: bool
    at: datetime
    source: str


@dataclass
class CustomerRecord:
    customer_id: uuid.UUID
    display_name: str
    profile: dict[str, Any]
    stage: Stage
    purchase_count: int
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    do_not_contact: bool
    version: int
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    erased_at: datetime | None
    merged_into: uuid.UUID | None = None
    at_risk: bool = False
    risk_reasons: list[str] = field(default_factory=list)
    last_csat: int | None = None
    last_nps: int | None = None
    last_survey_at: datetime | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    external_ids: list[str] = field(default_factory=list)
    spend: dict[str, int] = field(default_factory=dict)
    consents: list[ConsentRecord] = field(default_factory=list)
    links: list[tuple[str, uuid.UUID, str]] = field(default_factory=list)  # (as, other, role)


Row = Mapping[str, Any]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def export_document(rec: CustomerRecord, *, history: Sequence[Row], purchases: Sequence[Row],
                    links: Sequence[Row], risk_signals: Sequence[Row],
                    aliases: Sequence[uuid.UUID], segments: Sequence[Row],
                    contacts: Sequence[Row] = ()) -> dict[str, Any]:
    """The data-subject export of a customer: their record and the rows held
    about them (as the store reads them), one JSON-ready document.
    ``segments``: the stored memberships (``segment``, ``since``), listed by
    name as ``segments`` and with their times as ``segment_memberships``."""
    cid = rec.customer_id
    return {
        "customer_id": str(cid), "display_name": rec.display_name,
        "emails": rec.emails, "phones": rec.phones, "external_ids": rec.external_ids,
        "profile": rec.profile, "stage": rec.stage.value, "purchase_count": rec.purchase_count,
        "first_purchase_at": _iso(rec.first_purchase_at),
        "last_purchase_at": _iso(rec.last_purchase_at),
        "total_spent": [{"currency": c, "amount_minor": a} for c, a in rec.spend.items()],
        "do_not_contact": rec.do_not_contact,
        "consents": [{"purpose": c.purpose, "granted": c.granted, "at": _iso(c.at),
                      "source": c.source} for c in rec.consents],
        "purchases": [{"purchase_id": p["purchase_id"], "amount_minor": p["amount_minor"],
                       "currency": p["currency"], "occurred_at": _iso(p["occurred_at"]),
                       "causing_event_id": p["causing_event_id"]} for p in purchases],
        "stage_history": [{"from": h["from_stage"], "to": h["to_stage"], "cause": h["cause"],
                           "causing_event_id": h["causing_event_id"], "at": _iso(h["at"])}
                          for h in history],
        "links": [{"as": "requester" if link["requester_id"] == cid else "decision_maker",
                   "other_customer_id": str(link["decision_maker_id"]
                                            if link["requester_id"] == cid
                                            else link["requester_id"]),
                   "role": link["role"], "created_at": _iso(link["created_at"])}
                  for link in links],
        "merged_aliases": [str(a) for a in aliases],
        "at_risk": rec.at_risk, "risk_reasons": rec.risk_reasons,
        "risk_signals": [{"reason": r["reason"], "occurred_at": _iso(r["occurred_at"]),
                          "event_id": r["event_id"]} for r in risk_signals],
        "last_csat": rec.last_csat, "last_nps": rec.last_nps,
        "last_survey_at": _iso(rec.last_survey_at),
        "segments": [m["segment"] for m in segments],
        "segment_memberships": [{"segment": m["segment"], "since": _iso(m["since"])}
                                for m in segments],
        "contacts": [{"contact_id": c["contact_id"], "purpose": c["purpose"],
                      "channel": c["channel"], "service": c["service"], "at": _iso(c["at"]),
                      "recorded_at": _iso(c["recorded_at"])} for c in contacts],
        "created_at": _iso(rec.created_at), "updated_at": _iso(rec.updated_at),
        "closed_at": _iso(rec.closed_at), "erased_at": _iso(rec.erased_at),
        "version": rec.version,
    }
