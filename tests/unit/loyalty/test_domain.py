"""The loyalty domain as pure functions: rule validation and matching,
loyalty's own trust rules (consent, do-not-contact; the cap and quiet hours
are the contact gate's, tests/unit/customers/test_gate.py) and discount
arithmetic."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_runtime.errors import InvalidArgument
from services.loyalty.domain import (
    CODE_ALPHABET,
    ContactState,
    DiscountState,
    Purpose,
    Suppression,
    discount_amount,
    expiring_notice_at,
    new_code,
    new_codes,
    new_referral_code,
    normalise_code,
    redeem_refusal,
    trust_decision,
)
from services.loyalty.rulebook import load_file
from services.loyalty.rules import action_id, evaluate, parse_duration, parse_rule, parse_rule_file
from services.loyalty.settings import DEFAULT_RULES_FILE

T0 = datetime(2031, 3, 1, 12, tzinfo=UTC)


def _rule(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "r1", "trigger": "customer.stage_changed",
        "actions": [{"type": "discount", "percent": 10}]}
    return {**base, **fields}


# --- rules --------------------------------------------------------------------


def test_shipped_rules_file_is_valid_and_covers_the_domain() -> None:
    rules = {r.id: r for r in load_file(DEFAULT_RULES_FILE)}
    triggers = {r.trigger for r in rules.values()}
    assert {"customer.registered", "customer.stage_changed", "case.breached", "case.resolved",
            "customer.at_risk", "customer.consent_changed"} <= triggers
    kinds = {a.type for r in rules.values() for a in r.actions}
    assert kinds == {"follow_up", "discount", "newsletter", "referral_reward"}


def test_conditions_match_on_event_and_customer_facts() -> None:
    rule = parse_rule(_rule(when={"from_stage": "one_time", "to_stage": ["repeat"],
                                  "segments": {"includes_any": ["vip", "gold"]},
                                  "days_since_last_purchase": {"lte": 30}}))
    facts = {"from_stage": "one_time", "to_stage": "repeat", "segments": ["gold"],
             "days_since_last_purchase": 3}
    assert evaluate(rule, facts).matched
    miss = evaluate(rule, {**facts, "segments": ["basic"], "days_since_last_purchase": 90})
    assert not miss.matched
    assert [f.split(" ")[0] for f in miss.failed] == ["segments", "days_since_last_purchase"]


def test_unknown_fact_fails_and_disabled_rule_never_matches() -> None:
    rule = parse_rule(_rule(trigger="survey.response_recorded", when={"csat": {"lte": 2}}))
    result = evaluate(rule, {"csat": None})
    assert not result.matched and "fact unknown" in result.failed[0]
    assert evaluate(rule, {"csat": 1}).matched
    off = parse_rule(_rule(trigger="survey.response_recorded", when={"csat": {"lte": 2}},
                           enabled=False))
    assert not evaluate(off, {"csat": 1}).matched


def test_score_thresholds_and_amounts() -> None:
    rule = parse_rule(_rule(trigger="interaction.recorded",
                            when={"kind": "purchase", "amount_minor": {"gte": 5000, "lt": 20000},
                                  "channel": {"not_in": ["phone"]}}))
    assert evaluate(rule, {"kind": "purchase", "amount_minor": 5000, "channel": "web"}).matched
    assert not evaluate(rule, {"kind": "purchase", "amount_minor": 20000,
                               "channel": "web"}).matched
    assert not evaluate(rule, {"kind": "purchase", "amount_minor": 6000,
                               "channel": "phone"}).matched


@pytest.mark.parametrize(("rule", "field"), [
    (_rule(trigger="customer.nonsense"), "rule (r1).trigger"),
    (_rule(when={"colour": "red"}), "rule (r1).when.colour"),
    (_rule(when={"to_stage": "vip"}), "rule (r1).when.to_stage.eq"),
    (_rule(when={"purchase_count": {"gte": "two"}}), "rule (r1).when.purchase_count.gte"),
    (_rule(when={"stage": {"gte": 3}}), "rule (r1).when.stage.gte"),
    (_rule(actions=[]), "rule (r1).actions"),
    (_rule(actions=[{"type": "discount", "percent": 10, "amount_minor": 100}]),
     "rule (r1).actions[0]"),
    (_rule(actions=[{"type": "discount", "percent": 120}]), "rule (r1).actions[0].percent"),
    (_rule(actions=[{"type": "follow_up", "channel": "pigeon", "template": "t",
                     "reason": "x"}]), "rule (r1).actions[0].channel"),
    (_rule(actions=[{"type": "follow_up", "channel": "email", "template": "t", "reason": "x",
                     "delay": "soon"}]), "rule (r1).actions[0].delay"),
    (_rule(actions=[{"type": "teleport"}]), "rule (r1).actions[0]"),
    (_rule(id="Bad Id"), "rule (Bad Id).id"),
])
def test_invalid_rules_name_the_rule_and_the_field(rule: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_rule(rule)
    assert err.value.field == field, err.value


def test_rule_file_needs_unique_ids_and_names_the_position() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_rule_file({"rules": [_rule(), _rule()]})
    assert err.value.field == "rules[1] (r1).id"
    with pytest.raises(InvalidArgument) as err:
        parse_rule_file({"rules": [_rule(), _rule(id="r2", when={"x": 1})]})
    assert err.value.field == "rules[1] (r2).when.x"
    with pytest.raises(InvalidArgument):
        parse_rule_file(["not", "a", "mapping"])


def test_durations() -> None:
    assert parse_duration("3d") == timedelta(days=3)
    assert parse_duration("1d12h30m") == timedelta(days=1, hours=12, minutes=30)
    assert parse_duration("0m") == timedelta(0)
    for bad in ("", "3", "h", "3 days", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    # At most two years: a due time stays a date the calendar holds.
    assert parse_duration("730d") == timedelta(days=730)
    for too_long in ("731d", "730d1m", "1000000d", "99999999999999999999d", "9999999999h"):
        with pytest.raises(ValueError, match="longest delay"):
            parse_duration(too_long)


def test_action_ids_are_deterministic_per_rule_trigger_and_index() -> None:
    a = action_id("r1", "ev-1", 0)
    assert a == action_id("r1", "ev-1", 0)
    assert len({a, action_id("r1", "ev-1", 1), action_id("r2", "ev-1", 0),
                action_id("r1", "ev-2", 0)}) == 4


# --- trust --------------------------------------------------------------------

OK = ContactState(newsletter_consent=True, promotional_consent=True)


def test_do_not_contact_and_erasure_stop_everything() -> None:
    for state, reason in ((ContactState(erased=True), Suppression.ERASED),
                          (ContactState(do_not_contact=True, newsletter_consent=True,
                                        promotional_consent=True),
                           Suppression.DO_NOT_CONTACT)):
        for purpose in Purpose:
            assert trust_decision(purpose, state) is reason


def test_consent_is_needed_for_promotional_and_newsletter_but_not_service() -> None:
    none = ContactState()
    assert trust_decision(Purpose.SERVICE, none) is None
    assert trust_decision(Purpose.PROMOTIONAL, none) is Suppression.NO_PROMOTIONAL_CONSENT
    assert trust_decision(Purpose.NEWSLETTER, none) is Suppression.NO_NEWSLETTER_CONSENT
    assert trust_decision(Purpose.NEWSLETTER, OK) is None
    assert trust_decision(Purpose.PROMOTIONAL, OK) is None


def test_the_gate_knows_promotional_contacts_by_their_consent_purpose() -> None:
    assert [p.gate_purpose for p in Purpose] == ["service", "promotional_offers", "newsletter"]


# --- discounts ----------------------------------------------------------------


def _discount(**fields: object) -> DiscountState:
    base: dict[str, object] = dict(kind="percent", percent=10, amount_minor=None,
                                   currency="EUR", min_purchase_minor=0,
                                   expires_at=T0 + timedelta(days=30))
    return DiscountState(**{**base, **fields})  # type: ignore[arg-type]


def test_discount_amounts() -> None:
    assert discount_amount(_discount(), 12345) == 1234
    fixed = _discount(kind="fixed", percent=None, amount_minor=1000)
    assert discount_amount(fixed, 5000) == 1000
    assert discount_amount(fixed, 600) == 600


def test_refusals_say_why() -> None:
    d = _discount(min_purchase_minor=2000)
    assert redeem_refusal(d, T0, 5000, "EUR") is None
    assert "expired" in (redeem_refusal(d, T0 + timedelta(days=30), 5000, "EUR") or "")
    assert "already redeemed" in (redeem_refusal(_discount(redeemed_at=T0), T0, 5000, "EUR")
                                  or "")
    assert "withdrawn" in (redeem_refusal(_discount(voided_at=T0), T0, 5000, "EUR") or "")
    assert "EUR" in (redeem_refusal(d, T0, 5000, "USD") or "")
    assert "minimum" in (redeem_refusal(d, T0, 1999, "EUR") or "")


def test_codes_are_random_well_formed_and_normalised() -> None:
    codes = {new_code() for _ in range(1000)}
    assert len(codes) == 1000
    code = codes.pop()
    assert normalise_code(code.lower()) == code
    assert normalise_code(code.replace("-", "")) == code
    for bad in ("", "ABCD", "OOOO-0000-1111-IIII", code + "-X"):
        with pytest.raises(InvalidArgument):
            normalise_code(bad)


def test_codes_drawn_together_are_each_their_own_ten_random_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """new_codes encodes all the bytes at once; each code is still the code
    alphabet's base32 of its own 10 bytes, in four groups of four."""
    raw = bytes(range(200, 256)) + bytes(range(0, 256, 3))[:84]  # 140 bytes: 14 codes
    monkeypatch.setattr(secrets, "token_bytes", lambda n: raw[:n])
    codes = new_codes(14)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    for i, code in enumerate(codes):
        chunk = int.from_bytes(raw[10 * i:10 * i + 10], "big")
        chars = "".join(CODE_ALPHABET[alphabet.index(b)] for b in (
            alphabet[(chunk >> (75 - 5 * k)) & 31] for k in range(16)))
        assert code == "-".join(chars[j:j + 4] for j in range(0, 16, 4))
        assert normalise_code(code) == code
    assert len(set(codes)) == 14


def test_referral_codes_use_every_character_of_the_alphabet_at_random() -> None:
    codes = [new_referral_code() for _ in range(2000)]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(rf"REF-[{CODE_ALPHABET}]{{10}}", c) for c in codes)
    for position in range(4, 14):  # each position takes every character
        assert {c[position] for c in codes} == set(CODE_ALPHABET)


def test_expiry_notice_only_when_validity_is_longer() -> None:
    notice = timedelta(days=3)
    assert expiring_notice_at(T0, T0 + timedelta(days=30), notice) == T0 + timedelta(days=27)
    assert expiring_notice_at(T0, T0 + timedelta(days=2), notice) is None


def test_fact_values_are_type_checked() -> None:
    from services.loyalty.rules import fact_value_ok

    assert fact_value_ok("int", 3) and not fact_value_ok("int", True)
    assert not fact_value_ok("int", "3") and fact_value_ok("int", None)
    assert fact_value_ok("list", ["vip"]) and not fact_value_ok("list", "vip")
    assert fact_value_ok("bool", False) and not fact_value_ok("text", 1)


RULES = st.sampled_from([
    {"stage": "repeat"}, {"purchase_count": {"gte": 2, "lt": 5}},
    {"segments": {"includes_any": ["vip", "gold"]}, "referred": True},
    {"days_since_last_purchase": {"gt": 30}}, {"stage": {"not_in": ["former"]}},
])
FACTS = st.fixed_dictionaries({
    "stage": st.sampled_from(["potential", "one_time", "repeat", "former"]),
    "purchase_count": st.integers(0, 9),
    "segments": st.lists(st.sampled_from(["vip", "gold", "basic"]), max_size=3),
    "referred": st.booleans(),
    "days_since_last_purchase": st.one_of(st.none(), st.integers(0, 400)),
})


@given(RULES, FACTS, st.booleans())
def test_fast_match_agrees_with_the_explaining_evaluation(
        when: dict[str, object], facts: dict[str, object], enabled: bool) -> None:
    from services.loyalty.rules import matches

    rule = parse_rule(_rule(when=when, enabled=enabled))
    result = evaluate(rule, facts)
    assert matches(rule, facts) == result.matched
    assert result.matched == (not result.failed)
