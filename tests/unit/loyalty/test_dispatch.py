"""Loyalty's typed dispatch: one route for every payload class it consumes,
so a consumed run is one batch, and one function per payload class behind it."""

from __future__ import annotations

from typing import cast, get_args

import asyncpg
import pytest

from crm_contracts.customers import CustomerUpdated
from crm_runtime.clock import ManualClock
from crm_runtime.db import Conn
from crm_runtime.events import Envelope
from crm_runtime.service import Subscription
from services.loyalty import commands, handlers
from services.loyalty.rulebook import RuleBook
from services.loyalty.rules import CANCELLING_EVENTS, TRIGGERS


def _context() -> commands.Context:
    return commands.Context(clock=ManualClock(), lanes=1, rules=RuleBook([]))


def test_one_handler_takes_every_consumed_type() -> None:
    route = handlers.on_events(_context(), cast(asyncpg.Pool, None))
    assert set(route.payloads) == set(get_args(commands.LoyaltyInput))
    by_type = Subscription(topics=[], routes=[route]).by_type()
    assert len(by_type) == 16
    assert len(set(map(id, by_type.values()))) == 1  # one run, one batch


def test_each_consumed_class_has_a_function_of_its_own() -> None:
    for payload in commands.CONSUMED:
        assert commands._apply.registry[payload] is not commands._apply.registry[object]
        assert commands._customers.registry[payload] is not commands._customers.registry[object]


def test_every_trigger_and_cancelling_type_is_consumed() -> None:
    consumed = {payload.event_type for payload in commands.CONSUMED}
    assert set(TRIGGERS) <= consumed
    assert set(CANCELLING_EVENTS) <= consumed


async def test_a_type_loyalty_does_not_consume_is_refused_before_any_statement() -> None:
    updated = Envelope(data=CustomerUpdated(customer_id="c", version=2, changed=["name"]),
                       subject="c", source="/crm/customers")
    with pytest.raises(TypeError, match=r"customer\.updated"):
        await commands.on_events(cast(Conn, None), _context(), [updated])
