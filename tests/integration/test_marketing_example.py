"""examples/marketing_consumer.py, the FastStream consumer a marketing team
would write, against the real (Tansu) broker: loyalty events published as the
product publishes them (binary-mode CloudEvents of the contracts' payloads)
reach its typed handlers as equal payloads of the right classes; unknown
types and broken payloads are skipped; a handler that fails leaves its event
uncommitted, so it comes again after a restart; and the file runs as a
script that takes the broker from ``KAFKA_BOOTSTRAP_SERVERS``."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from crm_contracts.base import EventPayload
from crm_contracts.loyalty import (
    DiscountIssued,
    DiscountRedeemed,
    FollowUpDue,
    FollowUpScheduled,
    NewsletterEnrolled,
)
from crm_contracts.topics import LOYALTY
from crm_runtime.events import Envelope
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from examples.marketing_consumer import Contact, GroupTimings, Marketing, create_app
from tests.support.kafka import create_topics, produce, produce_envelopes, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "marketing_consumer.py"
SOURCE = "/crm/loyalty"
PARTITIONS = 3

#: The suite's group timings on Tansu (docs/decisions/0013), in aiokafka's names.
TANSU_TIMINGS = GroupTimings(
    session_timeout_ms=EMBEDDED_BROKER_SETTINGS["consumer_session_timeout_ms"],
    heartbeat_interval_ms=EMBEDDED_BROKER_SETTINGS["consumer_heartbeat_interval_ms"],
    rebalance_timeout_ms=EMBEDDED_BROKER_SETTINGS["consumer_rebalance_timeout_ms"],
    fetch_max_wait_ms=EMBEDDED_BROKER_SETTINGS["consumer_fetch_max_wait_ms"])


class Recording(Marketing):
    """The example's marketing, noting every payload its dispatch receives."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[EventPayload] = []

    async def handle(self, payload: EventPayload) -> None:
        self.received.append(payload)
        await super().handle(payload)


class MailerDown(Recording):
    """Sending a discount code fails every time (the mail service is down)."""

    async def discount_issued(self, event: DiscountIssued) -> None:
        raise ConnectionError("mail service unavailable")


P = TypeVar("P", bound=EventPayload)


def envelope(payload: P, customer: str, topic: str) -> Envelope[P]:
    """The event as the loyalty service publishes it, on ``topic``."""
    return Envelope(data=payload, subject=customer, source=SOURCE, topic_override=topic)


def discount(customer_id: str) -> DiscountIssued:
    return DiscountIssued(
        discount_id=str(uuid.uuid4()), customer_id=customer_id, code="K7QM-2XHD-9PWA-TR4E",
        kind="percent", percent=10, currency="EUR", min_purchase_minor=5000,
        expires_at=datetime(2027, 3, 1, 12, 30, tzinfo=UTC), rule_id="repeat-buyer-discount",
        purpose="promotional", reason="Thank you for buying again")


def enrolment(customer_id: str) -> NewsletterEnrolled:
    return NewsletterEnrolled(customer_id=customer_id, list="monthly",
                              rule_id="newsletter-after-purchase")


def record_like(template: Envelope, *, event_type: str,
                value: bytes) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """A record with ``template``'s headers but another type and value (and id)."""
    headers = [(k, event_type.encode() if k == "ce_type" else
                str(uuid.uuid4()).encode() if k == "ce_id" else v)
               for k, v in template.headers()]
    return template.topic, template.subject.encode(), value, headers


@contextlib.asynccontextmanager
async def offsets_of(bootstrap: str, group: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer that only reads ``group``'s committed offsets (it never
    subscribes, so it does not join the group). aiokafka's admin client
    cannot: its OffsetFetch fails on Tansu."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        yield reader
    finally:
        await reader.stop()


async def committed(reader: AIOKafkaConsumer, topic: str) -> int:
    """Records of ``topic`` its group has committed, over all partitions."""
    offsets = [await reader.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
    return sum(offset or 0 for offset in offsets)


async def test_the_handlers_get_the_typed_payloads_and_skip_what_they_cannot_read(
        broker: TansuBroker, uid: str) -> None:
    bootstrap, topic, group = broker.bootstrap_servers, f"t.loyalty.{uid}", f"marketing-{uid}"
    await create_topics(bootstrap, [topic], PARTITIONS)
    customer = str(uuid.uuid4())
    now = datetime.now(UTC).replace(microsecond=0)
    follow_up = str(uuid.uuid4())
    issued = envelope(discount(customer), customer, topic)
    enrolled = envelope(enrolment(customer), customer, topic)
    scheduled = envelope(FollowUpScheduled(
        follow_up_id=follow_up, customer_id=customer, rule_id="welcome-follow-up",
        rule_version=1, channel="email", template="welcome", reason="Welcome a new customer",
        purpose="service", due_at=now + timedelta(days=1),
        trigger_event_id=str(uuid.uuid4())), customer, topic)
    due = envelope(FollowUpDue(
        follow_up_id=follow_up, customer_id=customer, channel="email", template="welcome",
        reason="Welcome a new customer", purpose="service", due_at=now + timedelta(days=1)),
        customer, topic)
    redeemed = envelope(DiscountRedeemed(
        discount_id=issued.data.discount_id, customer_id=customer, order_id="web-10045",
        discount_minor=1250, currency="EUR", redeemed_at=now), customer, topic)
    # All keyed by the customer: one partition, read in this order.
    await produce_envelopes(bootstrap, [issued, enrolled])
    await produce(bootstrap, [
        record_like(enrolled, event_type="loyalty.points_awarded",  # a type newer than ours
                    value=b'{"customer_id": "%s", "points": 10}' % customer.encode()),
        record_like(issued, event_type="loyalty.discount_issued",  # a broken payload
                    value=b'{"discount_id": "no code, no expiry"}')])
    await produce_envelopes(bootstrap, [scheduled, due, redeemed, issued])  # issued again
    published = 8

    marketing = Recording()
    async with (offsets_of(bootstrap, group) as offsets,
                create_app(bootstrap, marketing, topic=topic, group_id=group,
                           timings=TANSU_TIMINGS)):
        async def all_committed() -> bool:
            return await committed(offsets, topic) == published

        await wait_for(all_committed, timeout=60, what=f"{published} records committed")

    expected = [issued, enrolled, scheduled, due, redeemed]
    assert marketing.received == [e.data for e in expected]
    assert [type(p) for p in marketing.received] == [type(e.data) for e in expected]
    assert marketing.handled == {e.id for e in expected}  # the repeated discount once
    assert marketing.queued == [
        Contact("email", customer, "discount_code",
                {"code": "K7QM-2XHD-9PWA-TR4E", "percent": "10",
                 "expires_at": "2027-03-01T12:30:00+00:00"}),
        Contact("email", customer, "welcome", {"reason": "Welcome a new customer"})]
    assert marketing.newsletters == {"monthly": {customer}}
    assert marketing.planned == {}  # planned, then due


async def test_a_failing_handler_leaves_its_event_uncommitted_until_it_succeeds(
        broker: TansuBroker, uid: str) -> None:
    bootstrap, topic, group = broker.bootstrap_servers, f"t.loyalty.{uid}", f"marketing-{uid}"
    await create_topics(bootstrap, [topic], PARTITIONS)
    customer = str(uuid.uuid4())
    issued = envelope(discount(customer), customer, topic)
    enrolled = envelope(enrolment(customer), customer, topic)
    await produce_envelopes(bootstrap, [issued, enrolled])

    down = MailerDown()
    async with offsets_of(bootstrap, group) as offsets:
        async with create_app(bootstrap, down, topic=topic, group_id=group,
                              timings=TANSU_TIMINGS, retry_delay_s=0.2):
            async def retried() -> bool:
                return len(down.received) >= 2

            await wait_for(retried, timeout=60, what="the failed event delivered again")
        # Stopped while the mail service is down: nothing committed, the
        # enrolment behind the failing event not handled yet.
        assert await committed(offsets, topic) == 0
        assert {type(p) for p in down.received} == {DiscountIssued}
        assert len(down.received) < 10, "retries are spaced out, not a busy loop"
        assert down.handled == set() and down.queued == []

        up = Recording()  # the next run, the mail service back
        async with create_app(bootstrap, up, topic=topic, group_id=group,
                              timings=TANSU_TIMINGS):
            async def all_committed() -> bool:
                return await committed(offsets, topic) == 2

            await wait_for(all_committed, timeout=60, what="both records committed")
    assert up.received == [issued.data, enrolled.data]
    assert [c.template for c in up.queued] == ["discount_code"]
    assert up.newsletters == {"monthly": {customer}}


async def test_it_runs_as_a_script_with_the_broker_from_the_environment(
        own_broker: TansuBroker) -> None:
    bootstrap = own_broker.bootstrap_servers
    await create_topics(bootstrap, [LOYALTY])
    customer = str(uuid.uuid4())
    await produce_envelopes(bootstrap, [envelope(discount(customer), customer, LOYALTY)])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    output: list[str] = []
    wanted = f"queued email discount_code for customer {customer}"
    try:
        deadline = time.monotonic() + 60
        while not any(wanted in line for line in output):
            left = deadline - time.monotonic()
            assert left > 0, "".join(output)
            line = await asyncio.wait_for(proc.stdout.readline(), left)
            assert line, f"the example exited ({await proc.wait()}):\n" + "".join(output)
            output.append(line.decode())
        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, "".join(output) + rest.decode()
    assert "Traceback" not in "".join(output) + rest.decode()


def test_the_example_imports_only_faststream_the_contracts_and_the_standard_library() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    tops = {name.split(".")[0] for name in imported}
    assert tops - sys.stdlib_module_names - {"__future__"} == {"faststream", "crm_contracts"}
