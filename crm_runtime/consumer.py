"""The Kafka side of consuming: fetching, partition holding, offset commits.

:class:`EventConsumer` reads its topics as one consumer group and hands each
batch to the database side, :class:`crm_runtime.inbox.Inbox`, which applies
it in one PostgreSQL transaction:

1. every record is decoded; records that cannot be read are poison. A
   record of a known type this consumer has no handler for is skipped on its
   ``ce_type`` header alone: it has no effect to make idempotent, so it is
   neither decoded nor recorded in the inbox, and a batch of nothing else
   opens no transaction (the interactions service reads every customer event
   for the two it acts on); a record in structured content mode carries its
   type in the value, so it is skipped once decoded, before the inbox;
2. the subscription's :data:`Prepare` step, if any, sees the decoded events,
   outside any transaction;
3. the inbox applies the batch in one unit of work: the event ids that are
   new reach the handlers (a redelivered event changes nothing), poison
   records and records a handler could not apply are dead-lettered, and the
   transaction commits (see :mod:`crm_runtime.inbox`);
4. only then are the offsets committed (while the next batch is fetched and
   processed; one offset commit in flight at a time, at most one every
   ``commit_interval_ms`` while records keep coming, and at once when they
   stop; see :meth:`EventConsumer.run`).

A crash anywhere before step 4's offset commit redelivers the batch, and the
inbox makes the second pass a no-op. A transient failure (the database is down,
a serialisation conflict) rolls back and retries the same batch, held in
memory, with backoff; it never dead-letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import IllegalStateError
from aiokafka.protocol.group import LeaveGroupRequest

from crm_runtime import faults, metrics
from crm_runtime.db import is_transient
from crm_runtime.events import (
    Envelope,
    PoisonMessage,
    decode_attributes,
    payload_class,
    read_attributes,
)
from crm_runtime.inbox import (
    DLQ_SUFFIX,
    INBOX_COPY_FROM,
    BatchHandler,
    Handler,
    Inbox,
    Item,
    dlq_topic,
    per_event,
)
from crm_runtime.retry import Backoff

#: The database side's names stay importable from here, where handlers,
#: dead-letter topics and the inbox's COPY threshold were always found.
__all__ = ["ASSIGNORS", "BUSY_FETCH_WAIT_MS", "COMMIT_DONE_S", "DLQ_SUFFIX", "INBOX_COPY_FROM",
           "BatchHandler", "EventConsumer", "Handler", "Interest", "Prepare", "Seen", "dlq_topic",
           "per_event"]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Of the events given, the ids the consumer group's inbox has taken already
#: (redeliveries of events applied before; one query).
Seen = Callable[[list[Envelope]], Awaitable[set[str]]]
#: Work a batch needs done before its transaction opens (calls to other
#: services, say): it gets every decoded event of the batch and a
#: :data:`Seen` to leave out the redeliveries among those it would act on
#: (the inbox drops them inside the transaction, so their effects must not
#: happen outside it), and keeps what it learns for the handlers. It raises
#: only what is worth retrying (the batch waits and runs again); a problem of
#: one event is for the handler to report, so that record alone is
#: dead-lettered.
Prepare = Callable[[list[Envelope], Seen], Awaitable[None]]
#: The types a group wants at the moment, asked once per fetched batch before
#: its records are decoded (loyalty's webhooks: the types some active webhook
#: takes): a record of another handled type is skipped undecoded, as an
#: unhandled type is. It raises only what is worth retrying.
Interest = Callable[[], Awaitable[frozenset[str]]]

#: Longest wait for the offset commits before a rebalance or a stop.
COMMIT_DONE_S = 1.0
#: How long a worker waits for records while another one is busy (it
#: fetches only from the partitions the busy one does not hold).
BUSY_FETCH_WAIT_MS = 5
#: Keys of ``consumer_options`` that are this consumer's, not aiokafka's:
#: after ``idle_after_ms`` without records (0: never) a consumer stops
#: fetching and looks again every ``idle_probe_ms`` (see
#: :meth:`EventConsumer._idle_pause`).
IDLE_OPTIONS = ("idle_after_ms", "idle_probe_ms")
#: How a group shares partitions out among its members, in order of
#: preference. Range first: each member gets the same partition numbers of
#: every topic with the same partition count, so one customer's events on
#: two topics (loyalty reads customers' and interactions') reach one
#: replica, as they reach one worker within it. Round robin, aiokafka's
#: default, deals out the partitions of all topics in one sequence, so with
#: three partitions and two members partition 0 of the second topic goes to
#: the member that does not have partition 0 of the first. It stays second
#: so that, during a rolling upgrade, members of both releases still share
#: a protocol.
ASSIGNORS = (RangePartitionAssignor, RoundRobinPartitionAssignor)


class EventConsumer:
    """Consumes ``topics`` as consumer group ``group`` and applies ``handlers``
    (by CloudEvents type) to the service's database through an :class:`Inbox`.
    Registered types without a handler are skipped; unknown types are dead
    letters."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        bootstrap_servers: str,
        group: str,
        topics: Sequence[str],
        handlers: Mapping[str, BatchHandler],
        service: str,
        lanes: int,
        batch_size: int = 1000,
        batch_wait_ms: int = 100,
        backoff: Backoff | None = None,
        failpoints: frozenset[str] = frozenset(),
        consumer_options: Mapping[str, Any] | None = None,
        concurrency: int = 1,
        commit_interval_ms: int = 0,
        prepare: Prepare | None = None,
        interest: Interest | None = None,
        record_ids: bool = True,
    ) -> None:
        self._inbox = Inbox(pool, group=group, handlers=handlers, service=service, lanes=lanes,
                            record_ids=record_ids)
        self._prepare = prepare
        self._interest = interest
        self._group = group
        self._topics = list(topics)
        #: The CloudEvents types the inbox has a handler for.
        self._handled = frozenset(handlers)
        self._service = service
        self._batch_size = batch_size
        self._batch_wait_ms = batch_wait_ms
        self._backoff = backoff or Backoff()
        self._failpoints = failpoints
        self._bootstrap_servers = bootstrap_servers
        options = dict(consumer_options or {})
        self._idle_after = options.pop("idle_after_ms", 0) / 1000
        self._idle_probe = options.pop("idle_probe_ms", 500) / 1000
        #: Since when fetches have found nothing (None: records came last).
        self._idle_since: float | None = None
        self._consumer_options = options
        self._kafka = self._new_kafka()
        self._stopping = asyncio.Event()
        self._next_offsets: dict[TopicPartition, int] = {}
        self._concurrency = max(1, concurrency)
        #: A worker joins in while another one is busy only if the free
        #: partitions have at least this many records waiting (see
        #: :meth:`_next_batch`).
        self._backlog_from = max(1, batch_size // 2)
        #: Partition numbers whose records a worker is applying: no other
        #: worker takes records of them, of any topic, until it is done, so
        #: a partition's records are applied in order (and one customer's
        #: events on two topics of the same partition count are not applied
        #: by two workers at once).
        self._held: set[int] = set()
        self._released = asyncio.Event()
        self._fetching = asyncio.Lock()
        #: The offset commit of the last batch, still in flight (see
        #: :meth:`_process_until_done`).
        self._committing: asyncio.Task[None] | None = None
        #: Offsets whose records' effects are committed in the database but
        #: not yet to the broker, and when they last went to the broker.
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_commit = 0.0
        self._commit_interval = commit_interval_ms / 1000
        #: Per ce_type of a known type: the type if this consumer skips it,
        #: "" if it handles it.
        self._skips: dict[str, str] = {}
        self.ready = asyncio.Event()

    def _new_kafka(self) -> AIOKafkaConsumer:
        kafka = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=ASSIGNORS,
            **self._consumer_options,
        )
        kafka.subscribe(self._topics, listener=_CommitBeforeRevoke(self))
        return kafka

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Consume until :meth:`stop`, with up to ``concurrency`` workers.

        A worker takes a batch of whatever partitions no other worker holds,
        holds those partitions while it applies the batch in its transaction,
        and lets them go when it is done, so a partition's records are
        applied in order, one batch after the other. One worker fetches at a
        time. While another worker is busy, a worker joins in only when the
        free partitions have at least half a batch of records waiting (a
        backlog): then one decodes and applies while the other waits for
        the database. Otherwise it waits for the busy one and takes
        everything that came meanwhile in one batch: at a steady rate, one
        transaction at a time with what arrived during the last costs less
        than two small ones at once, and the machine's time saved is the
        latency saved."""
        if not await self._start_kafka():
            await self._kafka.stop()  # stopped before it could start
            return
        try:
            async with asyncio.TaskGroup() as workers:
                for slot in range(self._concurrency):
                    workers.create_task(self._work(slot), name=f"{self._group}-worker-{slot}")
        finally:
            await self.commit_done()
            await self._leave_group()
            await self._kafka.stop()

    async def _leave_group(self) -> None:
        """Tell the group this member leaves, so that it hands the member's
        partitions on at once instead of when the member's session times out.
        aiokafka's ``stop()`` sends LeaveGroup only at a generation above 0, as
        Kafka numbers generations from 1; Tansu numbers them from 0, and a
        group that formed once and never rebalanced stays there, so on Tansu
        a replica stopped gracefully used to leave as silently as a killed
        one. Sent here at generation 0 only (aiokafka's own covers the rest),
        just before ``stop()``; a failure only costs the session timeout."""
        coordinator: Any = getattr(self._kafka, "_coordinator", None)
        if coordinator is None or coordinator.generation != 0 or not coordinator.member_id:
            return
        try:
            await asyncio.wait_for(coordinator._send_req(
                LeaveGroupRequest(self._group, coordinator.member_id)), COMMIT_DONE_S)
        except Exception as exc:
            log.warning("consumer %s: leaving the group failed (%s: %s); its partitions move "
                        "when its session times out", self._group, type(exc).__name__, exc)

    async def _work(self, slot: int) -> None:
        backoff = copy.copy(self._backoff)
        while not self._stopping.is_set():
            batch = await self._next_batch()
            self.ready.set()
            if batch:
                try:
                    await self._process_until_done(batch, backoff=backoff)
                finally:
                    self._held.difference_update(r.partition for r in batch)
                    self._released.set()
            elif batch is not None:  # nothing came for batch_wait_ms: what is done goes now
                self._commit_uncommitted(force=True)
            if slot == 0:
                self._observe_lag()

    async def _next_batch(self) -> list[ConsumerRecord[bytes, bytes]] | None:
        """The next batch of records of partitions no worker holds (now held
        by the caller); empty after ``batch_wait_ms`` without records; None
        after ``batch_wait_ms`` of waiting for a busy worker without a
        backlog building up."""
        wait_ms = self._batch_wait_ms or 1
        async with self._fetching:
            self._released.clear()  # before the check: a release after it ends the wait
            busy = bool(self._held)
            if busy and await self._waiting_in_free() < self._backlog_from:
                # Another worker is applying a batch and no backlog waits: what
                # comes meanwhile is taken when it is done, in one batch.
                try:
                    await asyncio.wait_for(self._released.wait(), timeout=wait_ms / 1000)
                except TimeoutError:
                    return None
                busy = bool(self._held)
            free = [tp for tp in self._kafka.assignment() if tp.partition not in self._held]
            if busy and not free:
                return None
            # While another worker is busy, a short wait: partitions it lets
            # go are only fetched from in the next call.
            if not busy:
                await self._idle_pause()
            records = await self._kafka.getmany(
                *free, timeout_ms=BUSY_FETCH_WAIT_MS if busy else wait_ms,
                max_records=self._batch_size)
            if not busy:
                self._idle_since = (None if records
                                    else self._idle_since or time.monotonic())
            if busy and not records:
                return None
            self._held.update(tp.partition for tp in records)
            return [r for part in records.values() for r in part]

    async def _idle_pause(self) -> None:
        """After ``idle_after_ms`` without records, fetch only every
        ``idle_probe_ms``: every assigned partition is paused meanwhile (the
        client's documented way to stop fetching; with every partition
        paused it sends no fetch at all), then resumed for the caller's
        fetch. A broker that answers a held fetch as soon as records arrive
        (Kafka) makes a long fetch wait the cheap idle poll, so this is off
        there; one that does not (the embedded Tansu, decisions/0014) needs
        a short wait, which an idle consumer would otherwise send some 35
        times a second. The cost: the first records after a quiet spell
        wait up to ``idle_probe_ms`` more; records found end the idle spell."""
        since = self._idle_since
        if (not self._idle_after or since is None
                or time.monotonic() - since < self._idle_after):
            return
        assigned = list(self._kafka.assignment())
        self._kafka.pause(*assigned)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._idle_probe)
        finally:
            # Only what is still assigned (a rebalance meanwhile starts the
            # new assignment unpaused).
            current = self._kafka.assignment()
            self._kafka.resume(*(tp for tp in assigned if tp in current))

    async def _waiting_in_free(self) -> int:
        """Records waiting on the partitions no worker holds: past the
        position (the next offset to hand out; what was handed out of a
        partition no worker holds is applied) up to the high watermark the
        broker last reported (a partition not fetched from yet counts none)."""
        waiting = 0
        for tp in self._kafka.assignment():
            high = self._kafka.highwater(tp)
            if tp.partition not in self._held and high is not None:
                with contextlib.suppress(IllegalStateError):  # unassigned meanwhile
                    waiting += max(0, high - await self._kafka.position(tp))
        return waiting

    async def _start_kafka(self) -> bool:
        """Start the client, retrying with backoff: True once it started,
        False when :meth:`stop` came first. A client whose start failed
        cannot be started again (aiokafka: "Did you call `start` twice?") if
        it got as far as the group (the broker refused to let it join, say,
        for want of a partition assignor the group's members share), so each
        retry starts a new one."""
        while not self._stopping.is_set():
            try:
                await self._kafka.start()
                return True
            except Exception as exc:
                delay = self._backoff.next()
                log.warning("consumer %s cannot start (%s: %s); retrying in %.1fs",
                            self._group, type(exc).__name__, exc, delay)
                with contextlib.suppress(Exception):
                    await self._kafka.stop()
                self._kafka = self._new_kafka()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        return False

    async def _process_until_done(self, batch: list[ConsumerRecord[bytes, bytes]], *,
                                  backoff: Backoff) -> None:
        age = metrics.RECORD_AGE.labels(self._service, self._group)
        now_ms = time.time() * 1000
        for r in batch:
            age.observe(max(0.0, now_ms - r.timestamp) / 1000)
        wanted = None if self._interest is None else await self._retried(
            self._interest, backoff, "asking again")
        items = self._decoded(batch, wanted)

        async def apply() -> None:
            started = time.perf_counter()
            await self._prepared(items)
            await self.process(items)
            metrics.BATCH_SECONDS.labels(self._service, self._group).observe(
                time.perf_counter() - started)

        if items:
            await self._retried(apply, backoff, "retrying batch")
        faults.hit(self._failpoints, "consumer.after_db_commit")
        uncommitted = self._uncommitted
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            uncommitted[tp] = max(uncommitted.get(tp, 0), r.offset + 1)
        self._next_offsets.update(uncommitted)
        self._commit_uncommitted()

    def _commit_uncommitted(self, *, force: bool = False) -> None:
        """Send the uncommitted offsets to the broker, in a task of their own
        (the next batch is fetched and processed meanwhile): the effects are
        committed already, so the commit only saves redeliveries. While
        records keep coming, at most one commit every ``commit_interval_ms``
        (an offset commit is a broker round trip, and at a steady trickle of
        small batches it would be one per batch); ``force`` when a worker went
        idle or the consumer stops. One commit is in flight at a time and a
        partition's batches are applied one after the other, so committed
        offsets never move backwards; a partition a rebalance took away is
        left to its new owner."""
        if not self._uncommitted:
            return
        if self._committing is not None and not self._committing.done():
            return  # the next batch or idle pass sends these
        now = time.monotonic()
        if not force and now - self._last_commit < self._commit_interval:
            return
        assigned = self._kafka.assignment()
        offsets = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
        self._uncommitted = {}
        self._last_commit = now
        if offsets:
            self._committing = asyncio.create_task(
                self._commit_offsets(offsets), name=f"{self._group}-offset-commit")

    async def commit_done(self) -> None:
        """Send the uncommitted offsets to the broker and wait (at most
        :data:`COMMIT_DONE_S`: a broker that does not answer must not hold up
        a rebalance or a shutdown; what is not committed is redelivered):
        before a rebalance takes partitions away (their new owner starts from
        what is committed, so without this it would redeliver up to
        ``commit_interval_ms`` of records, which the inbox absorbs but counts
        as duplicates) and before the consumer stops."""
        async def commit() -> None:
            await self._offsets_committed()
            self._commit_uncommitted(force=True)
            await self._offsets_committed()

        try:
            await asyncio.wait_for(commit(), COMMIT_DONE_S)
        except TimeoutError:
            log.warning("consumer %s: offsets not committed within %.1fs; their records may "
                        "be redelivered", self._group, COMMIT_DONE_S)

    async def _offsets_committed(self) -> None:
        """Until the commit in flight ended. ``asyncio.wait`` raises nothing of
        the commit's own (it logs its failures), and unlike awaiting it under
        ``suppress(CancelledError)`` it lets a cancellation of the waiter
        through, so :meth:`commit_done`'s time limit holds."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await asyncio.wait([committing])

    async def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._kafka.commit(offsets)
        except Exception as exc:
            # The effects are committed; a redelivery is absorbed by the inbox.
            log.warning("consumer %s: offset commit failed (%s); records may be redelivered",
                        self._group, exc)

    async def _prepared(self, items: list[Item]) -> None:
        """The subscription's :data:`Prepare` step, outside any transaction."""
        if self._prepare is None:
            return
        envelopes = [i.envelope for i in items if i.envelope is not None]
        if not envelopes:
            return
        try:
            await self._prepare(envelopes, self._inbox.seen)
        except Exception as exc:
            if is_transient(exc):
                raise
            # Not worth retrying: the handlers meet the problem again, record
            # by record, and dead-letter what they cannot apply.
            log.warning("consumer %s: preparing a batch failed (%s: %s); applying it anyway",
                        self._group, type(exc).__name__, exc)

    async def _retried(self, attempt: Callable[[], Awaitable[R]], backoff: Backoff,
                       again: str) -> R:
        """``attempt`` until it succeeds: a transient failure (the database out
        of reach) waits the backoff and is logged; any other is raised."""
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next()
                log.warning("consumer %s: transient failure (%s: %s); %s in %.1fs",
                            self._group, type(exc).__name__, exc, again, delay)
                await asyncio.sleep(delay)
            else:
                backoff.reset()
                return result

    def _decoded(self, batch: list[ConsumerRecord[bytes, bytes]],
                 wanted: frozenset[str] | None = None) -> list[Item]:
        """The batch's records to apply, decoded; the skipped ones (and those
        of a type not ``wanted`` now) are counted as consumed."""
        items: list[Item] = []
        skipped: Counter[tuple[str, str]] = Counter()
        for record in batch:
            decoded = self._decode(record, wanted)
            if isinstance(decoded, Item):
                items.append(decoded)
            else:
                skipped[record.topic, decoded] += 1
        for (topic, event_type), count in skipped.items():
            metrics.CONSUMED.labels(self._service, topic, event_type).inc(count)
        return items

    def _decode(self, record: ConsumerRecord[bytes, bytes],
                wanted: frozenset[str] | None = None) -> Item | str:
        """The record as an item to apply (its event, or why it is poison), or
        the type it is skipped as."""
        try:
            attrs = read_attributes(record.headers)
        except PoisonMessage as poison:
            # A header is not UTF-8: still skipped if its type is one this
            # consumer ignores (the consumer that handles it dead-letters it).
            return self._skipped_type(_raw_type(record.headers)) or Item(record, poison=poison)
        event_type = attrs.get("ce_type")
        skipped = self._skipped_type(event_type)
        if skipped is not None:
            return skipped
        if wanted is not None and event_type is not None and event_type in self._handled \
                and event_type not in wanted:
            return event_type
        try:
            envelope = decode_attributes(attrs, record.value)
        except PoisonMessage as poison:
            return Item(record, poison=poison)
        if envelope.type not in self._handled or (wanted is not None
                                                  and envelope.type not in wanted):
            return envelope.type  # structured mode: the type was in the body
        return Item(record, envelope=envelope)

    def _skipped_type(self, event_type: str | None) -> str | None:
        """The record's type if it is a known one this consumer does not handle."""
        if event_type is None:
            return None
        known = self._skips.get(event_type)
        if known is None:
            if payload_class(event_type) is None:
                return None  # unknown: a dead letter (not remembered: any text may come)
            known = self._skips[event_type] = (
                "" if event_type in self._handled else event_type)
        return known or None

    async def process(self, items: list[Item]) -> None:
        """Apply one batch in one transaction (see :meth:`Inbox.apply`)."""
        await self._inbox.apply(items)

    def _observe_lag(self) -> None:
        assigned = self._kafka.assignment()
        for tp in [tp for tp in self._next_offsets if tp not in assigned]:
            # Taken away by a rebalance: another member reports it now.
            del self._next_offsets[tp]
            with contextlib.suppress(KeyError):
                metrics.CONSUMER_LAG.remove(self._service, self._group, tp.topic,
                                            str(tp.partition))
        for tp, next_offset in self._next_offsets.items():
            high = self._kafka.highwater(tp)
            if high is not None:
                metrics.CONSUMER_LAG.labels(self._service, self._group, tp.topic,
                                            str(tp.partition)).set(max(0, high - next_offset))


class _CommitBeforeRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commits what is done before a rebalance takes partitions away (aiokafka
    awaits it before the consumer rejoins its group)."""

    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self._consumer.commit_done()

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        pass


def _raw_type(headers: Sequence[tuple[str, bytes]] | None) -> str | None:
    """The ``ce_type`` header of a record whose headers are not all UTF-8."""
    raw = None
    for key, value in headers or ():
        if key == "ce_type":
            raw = value  # of a repeated header the last wins, as in read_attributes()
    try:
        return raw.decode() if raw is not None else None
    except (UnicodeDecodeError, AttributeError):
        return None  # read_attributes() named the problem

