"""A marketing system's consumer of ``crm.loyalty.v1``, written with FastStream.

What a Python team outside the CRM would write: it imports FastStream, the
CRM's contracts package (``pip install ./contracts``) and the standard
library, nothing else of the CRM. Every record is a CloudEvent in Kafka binary
content mode: the event type is the ``ce_type`` header, the payload the JSON
value. The payload is read with the contracts' model of its type and handed
to one typed method per event type; a type this consumer does not know (a
newer one) is skipped.

Delivery is at least once. The subscriber commits a record's offset only
after the handler returned (``AckPolicy.NACK_ON_ERROR``); when the handler
raises, the consumer seeks back and the record comes again, a little later.
A redelivered event has the same ``ce_id``, and :class:`Marketing` skips the
ids it has handled.

Run it with ``KAFKA_BOOTSTRAP_SERVERS`` set to the broker (``make run``
prints it and keeps it in ``.local/stack.json``)::

    python examples/marketing_consumer.py
    faststream run examples.marketing_consumer:app   # the same app
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import TypedDict

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from crm_contracts.base import EventPayload, payload_class
from crm_contracts.loyalty import (  # importing the module registers the crm.loyalty.v1 types
    DiscountExpiring,
    DiscountIssued,
    FollowUpCancelled,
    FollowUpCompleted,
    FollowUpDue,
    FollowUpScheduled,
    NewsletterEnrolled,
    NewsletterUnsubscribed,
)
from crm_contracts.topics import LOYALTY

logger = logging.getLogger(__name__)

#: Marketing's own consumer group: its offsets are its own, apart from the CRM's.
GROUP_ID = "marketing-loyalty"


@dataclass(frozen=True)
class Contact:
    """A message marketing queues for a customer (a real system hands it to
    its mailer or its call list)."""

    channel: str
    customer_id: str
    template: str
    values: dict[str, str] = field(default_factory=dict)


class Marketing:
    """What marketing does with each loyalty event. Everything stays in
    memory here; a real system writes the effects of an event and its id to
    its database in one transaction."""

    def __init__(self) -> None:
        self.queued: list[Contact] = []
        self.newsletters: dict[str, set[str]] = {}
        self.planned: dict[str, FollowUpScheduled] = {}
        self.handled: set[str] = set()

    async def receive(self, event_id: str, payload: EventPayload) -> None:
        """Handle an event once: a redelivery (the same ``ce_id``) is skipped.
        The id counts as handled only once its handler returned."""
        if event_id in self.handled:
            logger.info("event %s already handled", event_id)
            return
        await self.handle(payload)
        self.handled.add(event_id)

    async def handle(self, payload: EventPayload) -> None:
        """Hand the payload to the method of its class."""
        match payload:
            case DiscountIssued():
                await self.discount_issued(payload)
            case DiscountExpiring():
                await self.discount_expiring(payload)
            case NewsletterEnrolled():
                await self.newsletter_enrolled(payload)
            case NewsletterUnsubscribed():
                await self.newsletter_unsubscribed(payload)
            case FollowUpScheduled():
                await self.follow_up_scheduled(payload)
            case FollowUpDue():
                await self.follow_up_due(payload)
            case FollowUpCancelled() | FollowUpCompleted():
                self.planned.pop(payload.follow_up_id, None)
            case _:  # redeemed discounts, suppressed actions, referrals: reports only
                logger.debug("nothing to do for %s", payload.event_type)

    async def discount_issued(self, event: DiscountIssued) -> None:
        values = {"code": event.code, "expires_at": event.expires_at.isoformat()}
        if event.percent is not None:
            values["percent"] = str(event.percent)
        if event.amount_minor is not None:
            values |= {"amount_minor": str(event.amount_minor), "currency": event.currency}
        self._queue(Contact("email", event.customer_id, "discount_code", values))

    async def discount_expiring(self, event: DiscountExpiring) -> None:
        self._queue(Contact("email", event.customer_id, "discount_reminder",
                            {"code": event.code, "expires_at": event.expires_at.isoformat()}))

    async def newsletter_enrolled(self, event: NewsletterEnrolled) -> None:
        self.newsletters.setdefault(event.list, set()).add(event.customer_id)
        logger.info("customer %s joins newsletter %s", event.customer_id, event.list)

    async def newsletter_unsubscribed(self, event: NewsletterUnsubscribed) -> None:
        # Takes effect at once: nothing more is sent on this list.
        self.newsletters.get(event.list, set()).discard(event.customer_id)
        logger.info("customer %s leaves newsletter %s (%s)", event.customer_id, event.list,
                    event.reason)

    async def follow_up_scheduled(self, event: FollowUpScheduled) -> None:
        self.planned[event.follow_up_id] = event
        logger.info("planned %s %s for customer %s at %s", event.channel, event.template,
                    event.customer_id, event.due_at.isoformat())

    async def follow_up_due(self, event: FollowUpDue) -> None:
        self.planned.pop(event.follow_up_id, None)
        self._queue(Contact(event.channel, event.customer_id, event.template,
                            {"reason": event.reason}))

    def _queue(self, contact: Contact) -> None:
        self.queued.append(contact)
        logger.info("queued %s %s for customer %s", contact.channel, contact.template,
                    contact.customer_id)


class GroupTimings(TypedDict, total=False):
    """Consumer-group timings, as aiokafka names them. Its defaults suit
    Apache Kafka; the CRM's embedded development broker (Tansu) joins and
    rejoins a group faster with short ones (see docs/integration.md)."""

    session_timeout_ms: int
    heartbeat_interval_ms: int
    rebalance_timeout_ms: int
    fetch_max_wait_ms: int


def create_app(bootstrap_servers: str, marketing: Marketing, *, topic: str = LOYALTY,
               group_id: str = GROUP_ID, timings: GroupTimings | None = None,
               retry_delay_s: float = 1.0) -> FastStream:
    """The FastStream app feeding ``topic`` to ``marketing``. When a handler
    fails, its event comes again after ``retry_delay_s``."""
    # It only reads: no producer or admin client (a read-only ACL is enough),
    # and it never creates the topic, which belongs to the CRM.
    broker = KafkaBroker(bootstrap_servers, consumer_only=True)

    @broker.subscriber(topic, group_id=group_id, auto_offset_reset="earliest",
                       ack_policy=AckPolicy.NACK_ON_ERROR, **(timings or GroupTimings()))
    async def on_loyalty_event(message: KafkaMessage) -> None:
        event_type = message.headers.get("ce_type", "")
        event_id = message.headers.get("ce_id", "")
        model = payload_class(event_type)
        if model is None or not event_id:
            logger.info("skipping a record of type %r: not an event marketing knows",
                        event_type)
            return
        try:
            payload = model.model_validate_json(message.body)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            # Within a topic version payloads only gain optional fields, so
            # this is a broken record: retrying it would block the partition.
            # A real system would park it for a person to look at.
            logger.error("skipping event %s (%s) at %s: %s", event_id, event_type,
                         _position(message), exc)
            return
        try:
            await marketing.receive(event_id, payload)
        except Exception:
            # The subscriber seeks back and reads the event again at once:
            # wait first, so that an outage (of the mail service, say) is
            # not a busy loop. The events behind it wait too: this
            # subscriber handles one record at a time, in order.
            await asyncio.sleep(retry_delay_s)
            raise

    return FastStream(broker)


def _position(message: KafkaMessage) -> str:
    """``topic[partition]@offset`` of a record, to find it again."""
    record = message.raw_message
    if isinstance(record, tuple):  # a batch; this subscriber takes one record at a time
        record = record[0]
    return f"{record.topic}[{record.partition}]@{record.offset}"


#: What ``faststream run examples.marketing_consumer:app`` runs.
app = create_app(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or "localhost:9092", Marketing())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(app.run())
