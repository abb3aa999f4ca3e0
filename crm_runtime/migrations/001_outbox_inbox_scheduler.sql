-- Runtime tables that every service schema carries. They live beside the
-- service's own tables so state, outbox rows and inbox rows commit together.

-- Events waiting for the relay. Rows are published in id order per lane
-- (lane = hash of the key), and marked sent only after the broker acked them.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      text        NOT NULL,
    topic         text        NOT NULL,
    message_key   bytea,
    header_keys   text[]      NOT NULL,
    header_values bytea[]     NOT NULL,
    body          bytea,
    event_type    text        NOT NULL,
    lane          integer     NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at       timestamptz
);
CREATE INDEX outbox_unsent ON outbox (lane, id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- Processed-message log of idempotent consumers: one row per (group, event).
CREATE TABLE inbox (
    consumer_group text        NOT NULL,
    event_id       text        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

-- Records this service could not process, kept for operators and replay.
CREATE TABLE dead_letters (
    id              bigserial PRIMARY KEY,
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    error_kind      text        NOT NULL,
    error_reason    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (consumer_group, topic, kafka_partition, kafka_offset)
);

-- Durable delayed work: polled with FOR UPDATE SKIP LOCKED by any replica.
-- (kind, item_key) is unique so scheduling the same work again moves it.
CREATE TABLE scheduled_work (
    id         bigserial PRIMARY KEY,
    kind       text        NOT NULL,
    item_key   text        NOT NULL,
    due_at     timestamptz NOT NULL,
    payload    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, item_key)
);
CREATE INDEX scheduled_work_due ON scheduled_work (due_at);
