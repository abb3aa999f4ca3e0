"""The rules of campaigns, without I/O: a create request validated field by
field, the states and their commands, the throttle's pages and their due
times, the next run of a recurring campaign, and what loyalty's checks
make of one member."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from crm.loyalty.v1 import loyalty_pb2 as pb
from crm_runtime.errors import FailedPrecondition, InvalidArgument
from services.loyalty import campaigns
from services.loyalty.campaigns import (
    ASK_GATE,
    Action,
    Outcome,
    State,
    Tally,
    Verdict,
    next_page_at,
    next_run_at,
    page_size,
    spec_of,
    transition,
    verdict,
)
from services.loyalty.domain import View
from services.loyalty.rules import DiscountTerms

NOW = datetime(2031, 3, 3, 12, tzinfo=UTC)


def _ts(at: datetime) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(at)
    return t


def _request(**fields: Any) -> pb.CreateCampaignRequest:
    base: dict[str, Any] = {
        "campaign_id": "spring-sale", "name": "Spring sale", "segment": "vip",
        "action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=10))}
    base.update(fields)
    return pb.CreateCampaignRequest(**{k: v for k, v in base.items() if v is not None})


def _refused(request: pb.CreateCampaignRequest, **kw: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        spec_of(request, NOW, **kw)
    return err.value


def test_a_valid_request_with_its_defaults() -> None:
    spec = spec_of(_request(), NOW)
    assert (spec.campaign_id, spec.name, spec.segment) == ("spring-sale", "Spring sale", "vip")
    assert spec.start_at == NOW and spec.members_per_minute is None and spec.every is None
    assert spec.created_by == "api" and not spec.include_late_joiners
    terms = spec.action.terms
    assert isinstance(terms, DiscountTerms)
    assert (terms.percent, terms.currency, terms.valid_days, terms.purpose) == (
        10, "EUR", 30, "promotional")
    assert spec.action.kind == "discount" and spec.action.purpose.value == "promotional"
    assert spec.stated["start_at"] is None  # unset: a retry matches, whenever it comes


@pytest.mark.parametrize(("fields", "field", "problem"), [
    ({"campaign_id": ""}, "campaign_id", "is not an id"),
    ({"campaign_id": "Spring"}, "campaign_id", "is not an id"),
    ({"campaign_id": "a" * 64}, "campaign_id", "is not an id"),
    ({"name": "  "}, "name", "required"),
    ({"segment": ""}, "segment", "required"),
    ({"action": None}, "action", "required"),
    ({"action": pb.CampaignAction()}, "action", "exactly one"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount())}, "action.discount.percent",
     "exactly one of percent or amount_minor"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=10, amount_minor=5))},
     "action.discount.percent", "exactly one"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=101))},
     "action.discount.percent", "less than or equal to 100"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(amount_minor=0))},
     "action.discount.amount_minor", "greater than 0"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=5, currency="eur"))},
     "action.discount.currency", "pattern"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=5, valid_days=731))},
     "action.discount.valid_days", "730"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=5, purpose="x"))},
     "action.discount.purpose", "promotional"),
    ({"action": pb.CampaignAction(discount=pb.CampaignDiscount(percent=5,
                                                               min_purchase_minor=-1))},
     "action.discount.min_purchase_minor", "greater than or equal to 0"),
    ({"action": pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="pigeon", template="call", reason="r"))}, "action.follow_up.channel",
     "is not one of"),
    ({"action": pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="phone", template="Bad Template", reason="r"))}, "action.follow_up.template",
     "pattern"),
    ({"action": pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="phone", template="call", reason=""))}, "action.follow_up.reason", "at least 1"),
    ({"action": pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="phone", template="call", reason="r", delay="soon"))},
     "action.follow_up.delay", "is not a duration"),
    ({"action": pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="phone", template="call", reason="r", purpose="gossip"))},
     "action.follow_up.purpose", "service"),
    ({"action": pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
        list="Monthly", issue="spring"))}, "action.newsletter_issue.list", "pattern"),
    ({"action": pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
        list="monthly", issue=""))}, "action.newsletter_issue.issue", "pattern"),
    ({"action": pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
        list="monthly", issue="spring", channel="fax"))}, "action.newsletter_issue.channel",
     "is not one of"),
    ({"start_at": _ts(NOW - timedelta(minutes=2))}, "start_at", "in the past"),
    ({"start_at": _ts(NOW + timedelta(days=731))}, "start_at", "ahead"),
    ({"members_per_minute": 0}, "members_per_minute", "is not 1 to"),
    ({"members_per_minute": -5}, "members_per_minute", "is not 1 to"),
    ({"members_per_minute": 1_000_001}, "members_per_minute", "is not 1 to"),
    ({"repeat_every": "weekly"}, "repeat_every", "is not a duration"),
    ({"repeat_every": "59m"}, "repeat_every", "shorter than the shortest, 1h"),
    ({"repeat_every": "800d"}, "repeat_every", "longer"),
    ({"repeat_until": _ts(NOW + timedelta(days=9))}, "repeat_until", "only with repeat_every"),
    ({"repeat_every": "1d", "repeat_until": _ts(NOW)}, "repeat_until", "is not after"),
])
def test_each_bad_field_is_named(fields: dict[str, Any], field: str, problem: str) -> None:
    err = _refused(_request(**fields))
    assert err.field == field and problem in err.problem, (err.field, err.problem)


def test_a_drafts_fields_are_named_under_draft_and_it_may_have_no_id() -> None:
    spec = spec_of(_request(campaign_id=""), NOW, where="draft.", draft=True)
    assert spec.campaign_id == ""
    err = _refused(_request(members_per_minute=0), where="draft.", draft=True)
    assert err.field == "draft.members_per_minute"
    err = _refused(_request(campaign_id="Bad!"), where="draft.", draft=True)
    assert err.field == "draft.campaign_id"


def test_a_start_a_moment_ago_is_accepted_and_stated() -> None:
    start = NOW - timedelta(seconds=30)
    spec = spec_of(_request(start_at=_ts(start), repeat_every="1d",
                            repeat_until=_ts(NOW + timedelta(days=7)), members_per_minute=120,
                            include_late_joiners=True, created_by="ana"), NOW)
    assert spec.start_at == start and spec.every == timedelta(days=1)
    assert spec.members_per_minute == 120 and spec.include_late_joiners
    assert spec.stated["start_at"] == start.isoformat() and spec.created_by == "ana"


def test_the_digest_and_the_differing_fields() -> None:
    a = spec_of(_request(), NOW)
    assert a.digest == spec_of(_request(created_by="someone else"), NOW + timedelta(hours=1)).digest
    b = spec_of(_request(name="Other", members_per_minute=60), NOW)
    assert a.digest != b.digest
    assert campaigns.differing(a.stated, b.stated) == ["name", "members_per_minute"]


@pytest.mark.parametrize("action", [
    pb.CampaignAction(discount=pb.CampaignDiscount(amount_minor=500, currency="USD",
                                                   min_purchase_minor=2000, valid_days=7,
                                                   purpose="service", reason="sorry")),
    pb.CampaignAction(follow_up=pb.CampaignFollowUp(channel="phone", template="call",
                                                    reason="check in", purpose="promotional",
                                                    delay="2d")),
    pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(list="monthly",
                                                                issue="spring-2031")),
])
def test_an_action_survives_storage_and_the_wire(action: pb.CampaignAction) -> None:
    stored = campaigns.action_of(action)
    again = Action.from_json(stored.to_json())
    assert again == stored
    assert campaigns.action_of(again.to_pb()) == stored


def test_purposes_and_the_gate() -> None:
    follow_up = campaigns.action_of(pb.CampaignAction(follow_up=pb.CampaignFollowUp(
        channel="phone", template="call", reason="r")))
    issue = campaigns.action_of(pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
        list="monthly", issue="may")))
    assert follow_up.purpose.value == "service" and not follow_up.gated_now
    assert issue.purpose.value == "newsletter" and issue.gated_now
    assert issue.terms.channel == "email"  # type: ignore[union-attr]


# --- states -------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "paused_from", "command", "to", "to_paused_from", "changed"), [
    (State.SCHEDULED, None, "pause", State.PAUSED, State.SCHEDULED, True),
    (State.RUNNING, None, "pause", State.PAUSED, State.RUNNING, True),
    (State.PAUSED, State.RUNNING, "pause", State.PAUSED, State.RUNNING, False),
    (State.PAUSED, State.RUNNING, "resume", State.RUNNING, None, True),
    (State.PAUSED, State.SCHEDULED, "resume", State.SCHEDULED, None, True),
    (State.RUNNING, None, "resume", State.RUNNING, None, False),
    (State.SCHEDULED, None, "resume", State.SCHEDULED, None, False),
    (State.SCHEDULED, None, "cancel", State.CANCELLED, None, True),
    (State.RUNNING, None, "cancel", State.CANCELLED, None, True),
    (State.PAUSED, State.RUNNING, "cancel", State.CANCELLED, None, True),
    (State.CANCELLED, None, "cancel", State.CANCELLED, None, False),
])
def test_transitions(state: State, paused_from: State | None, command: campaigns.Command,
                     to: State, to_paused_from: State | None, changed: bool) -> None:
    t = transition(state, paused_from, command, "c")
    assert (t.state, t.paused_from, t.changed) == (to, to_paused_from, changed)


@pytest.mark.parametrize(("state", "command"), [
    (State.DONE, "pause"), (State.DONE, "resume"), (State.DONE, "cancel"),
    (State.CANCELLED, "pause"), (State.CANCELLED, "resume")])
def test_final_states_refuse_every_command(state: State, command: campaigns.Command) -> None:
    with pytest.raises(FailedPrecondition, match=f"is {state.value}"):
        transition(state, None, command, "c")


# --- throttle and recurrence ---------------------------------------------------------------


@pytest.mark.parametrize(("rate", "page", "gap_s"), [
    (None, 500, 0.0), (1_000_000, 500, 0.03), (30_000, 500, 1.0), (500, 8, 0.96),
    (120, 2, 1.0), (61, 1, 60 / 61), (59, 1, 60 / 59), (1, 1, 60.0)])
def test_pages_and_their_pace(rate: int | None, page: int, gap_s: float) -> None:
    assert page_size(rate) == page
    gap = next_page_at(NOW, page, rate) - NOW
    assert gap == timedelta(seconds=gap_s)


def test_the_next_run() -> None:
    day = timedelta(days=1)
    assert next_run_at(NOW, None, None, NOW) is None
    assert next_run_at(NOW, day, None, NOW + timedelta(minutes=5)) == NOW + day
    # A run that took longer than the period skips the starts it missed.
    assert next_run_at(NOW, day, None, NOW + timedelta(days=2, hours=1)) == NOW + 3 * day
    assert next_run_at(NOW, day, None, NOW + day) == NOW + 2 * day  # strictly after now
    assert next_run_at(NOW, day, NOW + day, NOW + timedelta(hours=1)) == NOW + day
    assert next_run_at(NOW, day, NOW + day - timedelta(seconds=1), NOW) is None
    far = datetime(9999, 12, 30, tzinfo=UTC)
    assert next_run_at(far, timedelta(days=7), None, far) is None  # beyond the calendar


# --- one member -----------------------------------------------------------------------------

DISCOUNT = campaigns.action_of(pb.CampaignAction(discount=pb.CampaignDiscount(percent=10)))
SERVICE = campaigns.action_of(pb.CampaignAction(discount=pb.CampaignDiscount(
    percent=10, purpose="service")))
ISSUE = campaigns.action_of(pb.CampaignAction(newsletter_issue=pb.NewsletterIssueAction(
    list="monthly", issue="may")))


def _view(**fields: Any) -> View:
    return View(customer_id=uuid.uuid4(), **fields)


def test_verdicts() -> None:
    ok = _view(promotional_consent=True, newsletter_consent=True,
               newsletter_consent_at=NOW - timedelta(days=9))
    assert verdict(DISCOUNT, ok, True) is ASK_GATE
    assert verdict(DISCOUNT, ok, False) == Verdict(Outcome.SKIPPED, "left_segment")
    assert verdict(DISCOUNT, _view(erased_at=NOW), True) == Verdict(Outcome.SKIPPED, "erased")
    assert verdict(DISCOUNT, _view(merged_into=uuid.uuid4()), True) == Verdict(
        Outcome.SKIPPED, "merged")
    assert verdict(DISCOUNT, _view(), True) == Verdict(Outcome.SUPPRESSED,
                                                       "no_promotional_consent")
    assert verdict(SERVICE, _view(), True) is ASK_GATE
    assert verdict(SERVICE, _view(do_not_contact=True), True) == Verdict(
        Outcome.SUPPRESSED, "do_not_contact")
    assert verdict(ISSUE, _view(), True) == Verdict(Outcome.SUPPRESSED, "no_newsletter_consent")
    assert verdict(ISSUE, ok, True, ("enrolled", None)) is ASK_GATE
    left = ("unsubscribed", NOW - timedelta(days=1))
    assert verdict(ISSUE, ok, True, left) == Verdict(Outcome.SUPPRESSED, "unsubscribed")
    granted_again = _view(newsletter_consent=True, newsletter_consent_at=NOW)
    assert verdict(ISSUE, granted_again, True, left) is ASK_GATE


def test_a_tally_adds_reasons_to_stored_counts() -> None:
    t = Tally()
    for v in (ASK_GATE, ASK_GATE, Verdict(Outcome.SUPPRESSED, "frequency_cap"),
              Verdict(Outcome.SKIPPED, "left_segment"), Verdict(Outcome.SKIPPED, "erased")):
        t.add(v)
    assert (t.sent, t.suppressed, t.skipped) == (2, 1, 2)
    assert t.plus({"frequency_cap": 3, "do_not_contact": 1}, {}) == (
        {"do_not_contact": 1, "frequency_cap": 4}, {"erased": 1, "left_segment": 1})
