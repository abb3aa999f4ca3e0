"""The customers domain as pure functions: stage machine and identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crm_contracts.contact_points import normalise_email, normalise_phone
from crm_contracts.vocabulary import Stage
from crm_runtime.errors import InvalidArgument
from services.customers.domain import (
    Identity,
    StageCause,
    age_band,
    normalise_external_id,
    normalise_referral_code,
    stage_after_churn,
    stage_after_closing,
    stage_after_purchase,
)

WINDOW = timedelta(days=365)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_first_purchase_makes_one_time_and_second_repeat() -> None:
    first = stage_after_purchase(Stage.POTENTIAL, 0)
    assert first is not None and first.to_stage is Stage.ONE_TIME
    assert first.cause is StageCause.PURCHASE and not first.won_back
    second = stage_after_purchase(Stage.ONE_TIME, 1)
    assert second is not None and second.to_stage is Stage.REPEAT
    assert stage_after_purchase(Stage.REPEAT, 5) is None


def test_former_customer_buying_again_is_won_back_as_repeat() -> None:
    change = stage_after_purchase(Stage.FORMER, 1)
    assert change is not None
    assert (change.to_stage, change.won_back) == (Stage.REPEAT, True)


def test_churn_only_after_the_window_and_only_for_buyers() -> None:
    assert stage_after_churn(Stage.ONE_TIME, T0, T0 + WINDOW - timedelta(seconds=1),
                             WINDOW) is None
    change = stage_after_churn(Stage.REPEAT, T0, T0 + WINDOW, WINDOW)
    assert change is not None and change.to_stage is Stage.FORMER
    assert change.cause is StageCause.CHURN_WINDOW
    assert stage_after_churn(Stage.POTENTIAL, None, T0 + 10 * WINDOW, WINDOW) is None
    assert stage_after_churn(Stage.FORMER, T0, T0 + 10 * WINDOW, WINDOW) is None


def test_closing_makes_former_once() -> None:
    change = stage_after_closing(Stage.REPEAT)
    assert change is not None and change.cause is StageCause.CLOSED
    assert stage_after_closing(Stage.FORMER) is None


Step = st.one_of(st.just(("purchase", 0)), st.integers(0, 800).map(lambda d: ("wait", d)))


@given(st.lists(Step, max_size=40), st.sampled_from([Stage.POTENTIAL]))
def test_any_sequence_of_purchases_and_clock_advances_gives_a_valid_stage(
        steps: list[tuple[str, int]], start: Stage) -> None:
    stage, purchases, now, last = start, 0, T0, None
    ever_former = False
    for action, days in steps:
        if action == "purchase":
            change = stage_after_purchase(stage, purchases)
            purchases += 1
            last = now
            if change is not None:
                assert change.from_stage is stage
                if change.won_back:
                    assert stage is Stage.FORMER
                stage = change.to_stage
        else:
            now += timedelta(days=days)
            change = stage_after_churn(stage, last, now, WINDOW)
            if change is not None:
                stage = change.to_stage
                ever_former = True
        # Invariants: the stage agrees with the purchase count and recency.
        if purchases == 0:
            assert stage is Stage.POTENTIAL
        elif stage is Stage.FORMER:
            assert last is not None and now - last >= WINDOW
        elif stage is Stage.ONE_TIME:
            assert purchases == 1 and not ever_former
        else:
            assert stage is Stage.REPEAT and (purchases >= 2 or ever_former)


def test_identity_is_normalised_and_deduplicated() -> None:
    identity = Identity.parse(["Ana@Example.COM", "ana@example.com"], ["+34 911 23 45 67"],
                              ["POS:1234"])
    assert identity.emails == ("ana@example.com",)
    assert identity.phones == ("+34911234567",)
    assert identity.external_ids == ("pos:1234",)


@pytest.mark.parametrize(("call", "field"), [
    (lambda: normalise_email("not-an-email", "emails[0]"), "emails[0]"),
    (lambda: normalise_phone("911234567", "phones[1]"), "phones[1]"),
    (lambda: normalise_phone("+1 000", "phones[0]"), "phones[0]"),
    (lambda: normalise_external_id("1234", "external_ids[0]"), "external_ids[0]"),
])
def test_bad_identifiers_name_the_field(call: object, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        call()  # type: ignore[operator]
    assert err.value.field == field


def test_age_band() -> None:
    assert age_band(2000, 2030) == "25-34"
    assert age_band(None, 2030) == ""
    assert age_band(1950, 2030) == "65+"


@pytest.mark.parametrize("typed", ["REF-AB23CD45EF", "ref-ab23cd45ef", " REF AB23 CD45 EF ",
                                   "AB23CD45EF", "ab23-cd45-ef", "REFAB23CD45EF"])
def test_a_referral_code_is_read_however_it_was_typed(typed: str) -> None:
    assert normalise_referral_code(typed) == "REF-AB23CD45EF"


@pytest.mark.parametrize("typed", ["", "REF-", "REF-AB23CD45E", "REF-AB23CD45EFG",
                                   "REF-AB23CD45E0", "REF-AB23CD45EI", "XYZ-AB23CD45EF",
                                   "REF-AB23CD45E!", "ab23cd45ef" * 20])
def test_a_malformed_referral_code_is_refused_naming_the_field(typed: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        normalise_referral_code(typed)
    assert err.value.field == "referral_code"


def test_every_code_loyalty_issues_is_a_valid_referral_code() -> None:
    """The format is a contract between the two services: customers checks the
    codes loyalty generates (GetLoyaltyProfile's referral_code)."""
    from services.loyalty.domain import new_referral_code

    for _ in range(500):
        code = new_referral_code()
        assert normalise_referral_code(code) == code
        assert normalise_referral_code(code.lower().replace("-", " ")) == code
