"""After an erasure, nothing the product keeps can give the customer away: a
customer with data in every service (contacts, cases, a callback, survey
comments, loyalty notes, a refused ingested contact) is erased, and every
table of every service schema and every topic the product writes (the
dead-letter topics included) is searched for their email, phone and name.

The ingest topic is the one exception, by design: it holds what the channels
wrote, and its retention bounds it (docs/operations.md, "Personal data in
topics"); the test checks the exception is real, so it stays a documented
one rather than an accident."""

from __future__ import annotations

import random
import uuid

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm.loyalty.v1 import loyalty_pb2 as lpb
from crm_contracts.interactions import ContactReceived
from crm_contracts.topics import INTERACTIONS_INGEST
from crm_runtime import sealing
from crm_runtime.consumer import dlq_topic
from crm_runtime.events import Envelope
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty.app import SPEC as LOYALTY
from tests.integration.loyalty.conftest import Trio
from tests.support.erasures import status_when
from tests.support.kafka import dead_letter, produce_envelopes, read_topic
from tests.support.loyalty import profile_when, stub

SCHEMAS = (CUSTOMERS.schema, INTERACTIONS.schema, LOYALTY.schema)


def _text(column: str, data_type: str, udt: str) -> str:
    """The column as text a search can read (bytea as its bytes)."""
    if data_type == "bytea":
        return f"encode({column}, 'escape')"
    if udt == "_bytea":
        return f"array_to_string(ARRAY(SELECT encode(b, 'escape') FROM unnest({column}) b), ' ')"
    return f"{column}::text"


async def _tables_holding(dsn: str, needles: list[str]) -> dict[str, list[str]]:
    """Per needle, the ``schema.table`` of every service schema whose rows hold it."""
    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            """SELECT c.table_schema, c.table_name, c.column_name, c.data_type, c.udt_name
                 FROM information_schema.columns c
                 JOIN information_schema.tables t USING (table_schema, table_name)
                WHERE c.table_schema = ANY($1::text[]) AND t.table_type = 'BASE TABLE'
                ORDER BY 1, 2, c.ordinal_position""", list(SCHEMAS))
        tables: dict[str, list[str]] = {}
        for c in columns:
            tables.setdefault(f'"{c["table_schema"]}"."{c["table_name"]}"', []).append(
                _text(f'"{c["column_name"]}"', c["data_type"], c["udt_name"]))
        assert len(tables) > 20, tables.keys()  # every service's tables, runtime ones included
        found: dict[str, list[str]] = {n: [] for n in needles}
        for table, texts in tables.items():
            row = f"concat_ws(' ', {', '.join(texts)})"
            for needle in needles:
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table} "
                                       f"WHERE {row} ILIKE '%' || $1 || '%')", needle):
                    found[needle].append(table)
        return found
    finally:
        await conn.close()


async def _topics_holding(bootstrap: str, needles: list[str]) -> dict[str, list[str]]:
    """Per needle, the topics (every one on the broker) with a record whose
    key, value or headers hold it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
    finally:
        await admin.close()
    found: dict[str, list[str]] = {n: [] for n in needles}
    for topic in topics:
        blobs = [b"\0".join([r.key or b"", r.value or b"", *(v for _, v in r.headers)]).lower()
                 for r in await read_topic(bootstrap, topic, expect=0, timeout=5, settle=0.3)]
        for needle in needles:
            if any(needle.lower().encode() in blob for blob in blobs):
                found[needle].append(topic)
    return found


async def test_an_erased_customer_is_in_no_table_and_no_topic_the_product_writes(
        trio: Trio, database_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    name = f"Zoe-{tag} Quintana"
    email = f"zoe.{tag}@example.com"
    digits = "6" + "".join(random.choice("0123456789") for _ in range(8))
    phone = f"+34{digits}"
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    interactions = interactions_pb2_grpc.InteractionsStub(trio.interactions.channel)
    cmd, imd = trio.customers.metadata, trio.interactions.metadata
    reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name=name, emails=[email], phones=[phone]), metadata=cmd)
    cid = reply.customer.customer_id
    for purpose in ("surveys", "newsletter", "promotional_offers"):
        await customers.SetConsent(cpb.SetConsentRequest(
            customer_id=cid, purpose=purpose, granted=True, source="web"), metadata=cmd)

    # Personal data in every service, through every door that takes it.
    await interactions.RecordInteraction(ipb.RecordInteractionRequest(
        customer_id=cid, idempotency_key=f"note-{tag}", channel="phone", kind="inquiry",
        notes=f"{name} asked to be written at {email}"), metadata=imd)
    case = await interactions.OpenCase(ipb.OpenCaseRequest(
        customer_id=cid, kind="complaint", channel="phone", idempotency_key=f"case-{tag}",
        summary=f"{name}: the parcel arrived broken"), metadata=imd)
    await interactions.TransferCase(ipb.TransferCaseRequest(
        case_id=case.case_id, to_unit="returns", reason=f"{name} wants a refund"), metadata=imd)
    await interactions.ResolveCase(ipb.ResolveCaseRequest(
        case_id=case.case_id, resolution=f"refunded {name}, confirmed at {phone}"), metadata=imd)
    await interactions.ReopenCase(ipb.ReopenCaseRequest(
        case_id=case.case_id, reason=f"{name} called again"), metadata=imd)
    await interactions.RequestCallback(ipb.RequestCallbackRequest(
        customer_id=cid, phone=phone, idempotency_key=f"call-{tag}",
        summary=f"call {name} after six"), metadata=imd)
    await interactions.RecordSurveyResponse(ipb.RecordSurveyResponseRequest(
        customer_id=cid, touchpoint="delivery", channel="web", idempotency_key=f"sv-{tag}",
        answers=[ipb.SurveyAnswer(question="How was it?", csat=2,
                                  comment=f"I am {name}, write to {email}")]), metadata=imd)
    follow_up = (await profile_when(trio.loyalty, cid, lambda p: p.follow_ups,
                                    "the welcome follow-up")).follow_ups[0]
    await stub(trio.loyalty).CompleteFollowUp(lpb.CompleteFollowUpRequest(
        follow_up_id=follow_up.follow_up_id, outcome="contacted",
        note=f"spoke with {name} on {phone}"), metadata=trio.loyalty.metadata)
    # A contact a channel sent that the service refused: a dead letter.
    refused = Envelope(data=ContactReceived(
        idempotency_key=f"pos-{tag}", customer_id=cid, contact_email=email, contact_phone=phone,
        channel="in_person", kind="teleport", occurred_at=trio.loyalty.clock.now(),
        notes=f"{name} at the till"), subject=cid, source="/test/pos")
    bootstrap = trio.customers.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    await produce_envelopes(bootstrap, [refused])
    dead = await dead_letter(bootstrap, dlq_topic(INTERACTIONS_INGEST), refused.id)
    assert dict(dead.headers)[sealing.SEALED_HEADER] == sealing.CIPHER

    needles = [email, phone, digits, f"Zoe-{tag}"]
    before = await _tables_holding(database_url, needles)
    assert all(before.values()), before  # the search finds what is there

    await customers.EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid), metadata=cmd)
    await status_when(trio.customers, cid, lambda s: s.complete, "every service acknowledged")

    assert await _tables_holding(database_url, needles) == {n: [] for n in needles}
    in_topics = await _topics_holding(bootstrap, needles)
    # Only the ingest topic the channels write holds the refused contact.
    assert in_topics == {email: [INTERACTIONS_INGEST], phone: [INTERACTIONS_INGEST],
                         digits: [INTERACTIONS_INGEST], f"Zoe-{tag}": [INTERACTIONS_INGEST]}
