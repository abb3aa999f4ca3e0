"""RegisterCustomer takes the referral code a new customer got from a friend:
its format is checked, and customer.registered carries it, normalised, for the
loyalty service to resolve."""

from __future__ import annotations

import uuid

import grpc
import pytest

from tests.support.customers import customer_events, register
from tests.support.services import Running


async def test_the_code_is_normalised_and_carried_on_customer_registered(svc: Running) -> None:
    c = (await register(svc, referral_code=" ref-ab23 cd45 ef ")).customer
    [(_, data)] = [e for e in await customer_events(svc, c.customer_id, 1)
                      if e[0] == "customer.registered"]
    assert data["referral_code"] == "REF-AB23CD45EF" and data["referred_by"] == ""
    # Registering the same person again changes nothing (no second event).
    email = c.emails[0]
    again = await register(svc, emails=[email], referral_code="REF-ZZZZZZZZZZ")
    assert not again.created and again.customer.customer_id == c.customer_id
    plain = (await register(svc)).customer
    [(_, data)] = await customer_events(svc, plain.customer_id, 1)
    assert data["referral_code"] == ""


@pytest.mark.parametrize("code", ["REF-12345", "REF-AB23CD45E0", "not a code"])
async def test_a_malformed_code_is_invalid_argument(svc: Running, code: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(svc, referral_code=code)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("referral_code:")


async def test_a_code_and_a_referrer_id_together_are_refused(svc: Running) -> None:
    referrer = (await register(svc)).customer
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await register(svc, referral_code="REF-AB23CD45EF",
                       referred_by_customer_id=referrer.customer_id,
                       emails=[f"{uuid.uuid4().hex[:8]}@example.com"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("referral_code:")
