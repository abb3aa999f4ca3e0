"""Segment membership published as customer.segment_entered / segment_left:
by the commands that change what a filter reads, by a segment's pass over
every customer when it is defined, redefined or deleted, and by the daily
pass of a filter that reads the time; merges and erasures included.

Every segment here filters on a socio-economic band of the test's own, so the
customers of the other tests of the package are in none of them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from crm.customers.v1 import customers_pb2 as pb
from crm_contracts.interactions import SurveyResponseRecorded
from crm_contracts.topics import CUSTOMERS
from crm_runtime import scheduler
from crm_runtime.events import Envelope
from services.customers import memberships
from tests.support.customers import get, purchase_event, register, stub
from tests.support.kafka import produce_envelopes, read_topic, wait_for
from tests.support.services import Running

Event = tuple[str, dict[str, Any]]
SEGMENT_TYPES = ("customer.segment_entered", "customer.segment_left")


def _bootstrap(svc: Running) -> str:
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    return bootstrap


async def _events(svc: Running, ids: list[str], done: Callable[[list[Event]], bool],
                  what: str) -> dict[str, list[Event]]:
    """(type, data) of each customer's events on crm.customers.v1, once
    ``done`` says each customer's are all there."""
    found: dict[str, list[Event]] = {}

    async def ready() -> bool:
        records = await read_topic(_bootstrap(svc), CUSTOMERS, expect=0, timeout=5, settle=0.3)
        found.clear()
        for cid in ids:
            found[cid] = [(dict(r.headers)["ce_type"].decode(), json.loads(r.value))
                          for r in records if r.key == cid.encode()]
        return all(done(events) for events in found.values())

    await wait_for(ready, timeout=30, what=what)
    return found


def _changes(events: list[Event]) -> list[tuple[str, str, str]]:
    """(entered|left, segment, cause) of the segment events, in order."""
    return [(t.removeprefix("customer.segment_"), d["segment"], d["cause"])
            for t, d in events if t in SEGMENT_TYPES]


async def _until_all(svc: Running, ids: list[str], marker: str
                     ) -> dict[str, list[tuple[str, str, str]]]:
    """Each customer's segment changes published before their last
    ``marker`` event, once it is there (same key, same partition: nothing
    published before it is still to come)."""
    events = await _events(svc, ids, lambda es: any(t == marker for t, _ in es),
                           f"{marker} of {len(ids)} customers")
    return {cid: _changes(es[:max(i for i, (t, _) in enumerate(es) if t == marker)])
            for cid, es in events.items()}


async def _until(svc: Running, customer_id: str, marker: str) -> list[tuple[str, str, str]]:
    return (await _until_all(svc, [customer_id], marker))[customer_id]


async def _rename(svc: Running, customer_id: str) -> None:
    """A change no segment reads, whose customer.updated is a marker."""
    version = (await get(svc, customer_id)).version
    await stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
        customer_id=customer_id, expected_version=version,
        display_name=f"renamed {uuid.uuid4().hex[:6]}"), metadata=svc.metadata)


async def _define(svc: Running, name: str, definition: dict[str, Any]) -> None:
    await stub(svc).DefineSegment(pb.DefineSegmentRequest(
        name=name, filter_json=json.dumps(definition)), metadata=svc.metadata)


async def _buy(svc: Running, customer_id: str, amount: int) -> None:
    await stub(svc).RecordPurchase(pb.RecordPurchaseRequest(
        customer_id=customer_id, purchase_id=str(uuid.uuid4()),
        amount=pb.Money(amount_minor=amount, currency="EUR")), metadata=svc.metadata)


async def _consent(svc: Running, customer_id: str, purpose: str, granted: bool) -> None:
    await stub(svc).SetConsent(pb.SetConsentRequest(
        customer_id=customer_id, purpose=purpose, granted=granted), metadata=svc.metadata)


async def _members(svc: Running, segment: str) -> dict[str, Any]:
    """The stored members of a segment (customer id -> since)."""
    pool = svc.runner.pool
    assert pool is not None
    rows = await pool.fetch("SELECT customer_id, since FROM segment_members WHERE segment = $1",
                            segment)
    return {str(r["customer_id"]): r["since"] for r in rows}


async def _pass_done(svc: Running, segment: str, *, repeats: bool = False) -> None:
    """Move the clock past the pass's start and wait until its last page
    committed (no page left; a filter reading the time has its next pass
    scheduled a day later)."""
    pool = svc.runner.pool
    assert pool is not None
    svc.clock.advance(memberships.SETTLE)
    after = svc.clock.now()

    async def done() -> bool:
        due = await pool.fetchval(
            "SELECT due_at FROM scheduled_work WHERE kind = $1 AND item_key = $2",
            memberships.EVALUATE, segment)
        return due is None if not repeats else (due is not None and due > after)

    await wait_for(done, what=f"the pass of {segment}")


async def test_commands_publish_each_change_once(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"vip-{tag}"
    await _define(svc, name, {"all": [
        {"field": "profile.socio_economic_band", "op": "=", "value": tag},
        {"field": "total_spent.EUR", "op": ">=", "value": 10000},
        {"field": "do_not_contact", "op": "=", "value": False}]})
    c = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    cid = c.customer_id
    now = svc.clock.now()
    await _buy(svc, cid, 6000)
    assert await _members(svc, name) == {}
    # Over the threshold through the consumed event: entered once.
    await produce_envelopes(_bootstrap(svc), [purchase_event(cid, 5000, svc.clock.now())])

    async def counted(n: int) -> bool:
        return (await get(svc, cid)).purchase_count == n

    await wait_for(lambda: counted(2), what="the second purchase")
    assert list(await _members(svc, name)) == [cid]
    # A purchase that changes no membership publishes nothing.
    await _buy(svc, cid, 100)
    # Do-not-contact takes them out.
    await _consent(svc, cid, "do_not_contact", True)
    assert await _members(svc, name) == {}
    await _rename(svc, cid)
    assert await _until(svc, cid, "customer.updated") == [
        ("entered", name, "purchase"), ("left", name, "consent")]
    events = (await _events(svc, [cid], lambda es: True, "the events"))[cid]
    entered = next(d for t, d in events if t == "customer.segment_entered")
    assert datetime.fromisoformat(entered.pop("changed_at")) == now
    assert entered == {"customer_id": cid, "segment": name, "cause": "purchase"}

    # A profile change takes another one out.
    d = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    await _buy(svc, d.customer_id, 12000)
    version = (await get(svc, d.customer_id)).version
    await stub(svc).UpdateCustomer(pb.UpdateCustomerRequest(
        customer_id=d.customer_id, expected_version=version,
        profile=pb.Profile(socio_economic_band=f"other-{tag}")), metadata=svc.metadata)
    await _rename(svc, d.customer_id)
    assert await _until(svc, d.customer_id, "customer.updated") == [
        ("entered", name, "purchase"), ("left", name, "profile")]
    assert await _members(svc, name) == {}


async def test_registration_survey_and_stage_changes_are_evaluated(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    band = {"field": "profile.socio_economic_band", "op": "=", "value": tag}
    await _define(svc, f"all-{tag}", band)
    await _define(svc, f"unhappy-{tag}", {"all": [band, {"field": "last_csat", "op": "<=",
                                                         "value": 2}]})
    await _define(svc, f"closed-{tag}", {"all": [band, {"field": "stage", "op": "=",
                                                        "value": "former"}]})
    reply = await stub(svc).RegisterCustomers(pb.RegisterCustomersRequest(customers=[
        pb.RegisterCustomerRequest(emails=[f"{i}-{tag}@example.com"],
                                   profile=pb.Profile(socio_economic_band=tag))
        for i in range(2)]), metadata=svc.metadata)
    a, b = (r.customer.customer_id for r in reply.results)
    assert sorted(await _members(svc, f"all-{tag}")) == sorted([a, b])
    survey = Envelope(data=SurveyResponseRecorded(
        survey_response_id=str(uuid.uuid4()), customer_id=a, csat=1,
        occurred_at=svc.clock.now()), subject=a, source="/crm/interactions")
    await produce_envelopes(_bootstrap(svc), [survey])

    async def scored() -> bool:
        return (await get(svc, a)).last_csat == 1

    await wait_for(scored, what="the survey answer applied")
    await stub(svc).CloseRelationship(pb.CloseRelationshipRequest(
        customer_id=a, reason="moving"), metadata=svc.metadata)
    await _rename(svc, a)
    await _rename(svc, b)
    assert await _until_all(svc, [a, b], "customer.updated") == {
        a: [("entered", f"all-{tag}", "registered"), ("entered", f"unhappy-{tag}", "survey"),
            ("entered", f"closed-{tag}", "stage")],
        b: [("entered", f"all-{tag}", "registered")]}


async def test_a_definition_evaluates_everyone_page_by_page(
        svc: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memberships, "PAGE_SIZE", 3)
    tag = uuid.uuid4().hex[:8]
    name = f"young-{tag}"
    people = [(await register(svc, profile=pb.Profile(
        socio_economic_band=tag, birth_year=1980 + 2 * i))).customer.customer_id
        for i in range(10)]

    def born_from(year: int) -> dict[str, Any]:
        return {"all": [{"field": "profile.socio_economic_band", "op": "=", "value": tag},
                        {"field": "profile.birth_year", "op": ">=", "value": year}]}

    await _define(svc, name, born_from(1990))
    assert await _members(svc, name) == {}  # the pass waits for every replica's cache
    await _pass_done(svc, name)
    assert sorted(await _members(svc, name)) == sorted(people[5:])
    # Redefined: only the differences.
    await _define(svc, name, born_from(1994))
    await _pass_done(svc, name)
    assert sorted(await _members(svc, name)) == sorted(people[7:])
    for cid in people:
        await _rename(svc, cid)
    entered, left = ("entered", name, "segment_defined"), ("left", name, "segment_defined")
    assert await _until_all(svc, people, "customer.updated") == {
        cid: [] if i < 5 else [entered, left] if i < 7 else [entered]
        for i, cid in enumerate(people)}


async def test_a_deleted_segment_is_left_by_everyone(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"gone-{tag}"
    await _define(svc, name, {"field": "profile.socio_economic_band", "op": "=", "value": tag})
    c = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    assert list(await _members(svc, name)) == [c.customer_id]
    pool = svc.runner.pool
    assert pool is not None
    async with pool.acquire() as conn, conn.transaction():  # as an operator would
        await conn.execute("DELETE FROM segments WHERE name = $1", name)
        await scheduler.schedule(conn, memberships.EVALUATE, name, svc.clock.now(),
                                 {"after": None})
    await _pass_done(svc, name)
    assert await _members(svc, name) == {}
    await _rename(svc, c.customer_id)
    assert await _until(svc, c.customer_id, "customer.updated") == [
        ("entered", name, "registered"), ("left", name, "segment_deleted")]


async def test_a_filter_on_time_is_evaluated_again_every_day(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"settled-{tag}"
    c = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer
    await _define(svc, name, {"all": [
        {"field": "profile.socio_economic_band", "op": "=", "value": tag},
        {"field": "days_since_registered", "op": ">=", "value": 2}]})
    await _pass_done(svc, name, repeats=True)
    assert await _members(svc, name) == {}
    svc.clock.advance(timedelta(days=2))

    async def entered() -> bool:
        return list(await _members(svc, name)) == [c.customer_id]

    await wait_for(entered, what="the daily pass")
    await _rename(svc, c.customer_id)
    assert await _until(svc, c.customer_id, "customer.updated") == [
        ("entered", name, "schedule")]


async def test_a_merge_and_an_erasure(svc: Running) -> None:
    tag = uuid.uuid4().hex[:8]
    band = {"field": "profile.socio_economic_band", "op": "=", "value": tag}
    await _define(svc, f"band-{tag}", band)
    await _define(svc, f"loyal-{tag}", {"all": [band, {"field": "purchase_count", "op": ">=",
                                                       "value": 2}]})
    a = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer.customer_id
    b = (await register(svc, profile=pb.Profile(socio_economic_band=tag))).customer.customer_id
    await _buy(svc, a, 100)
    await _buy(svc, b, 100)
    await stub(svc).MergeCustomers(pb.MergeCustomersRequest(
        survivor_customer_id=a, merged_customer_id=b), metadata=svc.metadata)
    assert list(await _members(svc, f"band-{tag}")) == [a]
    assert list(await _members(svc, f"loyal-{tag}")) == [a]
    # The merged id leaves its segments; the survivor enters what it now matches.
    await _rename(svc, a)
    assert await _until(svc, a, "customer.updated") == [
        ("entered", f"band-{tag}", "registered"), ("entered", f"loyal-{tag}", "merge")]
    events = await _events(svc, [b], lambda es: len(_changes(es)) == 2, "b's changes")
    assert _changes(events[b]) == [("entered", f"band-{tag}", "registered"),
                                   ("left", f"band-{tag}", "merge")]

    await stub(svc).EraseCustomer(pb.EraseCustomerRequest(customer_id=a), metadata=svc.metadata)
    assert await _members(svc, f"band-{tag}") == {}
    assert await _members(svc, f"loyal-{tag}") == {}
    # No segment_left: customer.erased tells every consumer to forget them.
    assert [c for c in await _until(svc, a, "customer.erased") if c[0] == "left"] == []
