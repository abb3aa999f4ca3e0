-- Webhooks: subscriptions of other systems to the product's events, each
-- event they take stored once, and one delivery per (webhook, event) that the
-- delivering worker POSTs, retries and parks (services/loyalty/webhook_*.py).

CREATE TABLE webhooks (
    webhook_id       text PRIMARY KEY,
    url              text        NOT NULL,
    -- Exact types and prefixes ending in '*'.
    event_types      text[]      NOT NULL,
    -- Only this customer's events (the events' subject), when set.
    customer_id      uuid,
    content_mode     text        NOT NULL CHECK (content_mode IN ('binary', 'structured')),
    max_attempts     integer     NOT NULL CHECK (max_attempts BETWEEN 1 AND 30),
    -- whsec_<base64>: the signing key of every delivery.
    secret           text        NOT NULL,
    secret_generated boolean     NOT NULL,
    description      text        NOT NULL DEFAULT '',
    state            text        NOT NULL DEFAULT 'active'
                                 CHECK (state IN ('active', 'deleted')),
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at       timestamptz
);

-- An event some webhook takes: its CloudEvents attributes and its data, once
-- however many webhooks take it; deleted with its last delivery.
CREATE TABLE webhook_events (
    event_id    text PRIMARY KEY,
    event_type  text        NOT NULL,
    source      text        NOT NULL,
    subject     text        NOT NULL,
    time        timestamptz NOT NULL,
    traceparent text        NOT NULL DEFAULT '',
    data        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE webhook_deliveries (
    delivery_id      uuid PRIMARY KEY,
    -- The order deliveries were enqueued in: of one webhook and subject, the
    -- earliest pending one goes first (the head of its queue).
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    webhook_id       text        NOT NULL REFERENCES webhooks,
    event_id         text        NOT NULL REFERENCES webhook_events,
    event_type       text        NOT NULL,
    -- The event's subject (a customer id; unit:... or campaign:... otherwise).
    subject          text        NOT NULL,
    state            text        NOT NULL DEFAULT 'pending'
                                 CHECK (state IN ('pending', 'delivered', 'failed', 'deleted')),
    attempts         integer     NOT NULL DEFAULT 0,
    -- Pending: when it is due (while an attempt is on its way, the end of its lease).
    next_attempt_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_status_code integer     NOT NULL DEFAULT 0,
    last_error       text        NOT NULL DEFAULT '',
    last_response    text        NOT NULL DEFAULT '',
    delivered_at     timestamptz,
    -- The subject was erased: delete the row once it is delivered or parked.
    erase_when_done  boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (webhook_id, event_id)
);
-- A webhook's due deliveries, in the order they are due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at, seq)
    WHERE state = 'pending';
-- The head check: an earlier pending delivery of the same webhook and subject.
CREATE INDEX webhook_deliveries_queue ON webhook_deliveries (webhook_id, subject, seq)
    WHERE state = 'pending';
-- A webhook's deliveries newest first (ListWebhookDeliveries, replay, counts).
CREATE INDEX webhook_deliveries_listing ON webhook_deliveries
    (webhook_id, created_at DESC, delivery_id DESC);
-- A customer's deliveries (export, erasure).
CREATE INDEX webhook_deliveries_subject ON webhook_deliveries (subject);
-- Retention: finished deliveries by when they finished.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (updated_at)
    WHERE state <> 'pending';
-- Parked deliveries per webhook (the crm_webhook_failed gauge, replays).
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (webhook_id)
    WHERE state = 'failed';
-- Whether an event is still needed by a delivery.
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
