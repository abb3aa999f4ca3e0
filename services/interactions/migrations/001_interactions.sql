-- Contacts (moments of truth), cases with promises, surveys, service cycles.

CREATE TABLE interactions (
    interaction_id    uuid PRIMARY KEY,
    idempotency_key   text        NOT NULL UNIQUE,
    customer_id       uuid        NOT NULL,
    channel           text        NOT NULL,
    direction         text        NOT NULL,
    kind              text        NOT NULL,
    attention         text        NOT NULL DEFAULT 'direct',
    requester_id      uuid,
    decision_maker_id uuid,
    touchpoint        text        NOT NULL DEFAULT '',
    agent             text        NOT NULL DEFAULT '',
    unit              text        NOT NULL DEFAULT '',
    occurred_at       timestamptz NOT NULL,
    outcome           text        NOT NULL DEFAULT 'neutral',
    notes             text        NOT NULL DEFAULT '',
    amount_minor      bigint      NOT NULL DEFAULT 0,
    currency          text        NOT NULL DEFAULT '',
    case_id           uuid,
    recorded_at       timestamptz NOT NULL
);
CREATE INDEX interactions_timeline ON interactions (customer_id, occurred_at DESC,
                                                    interaction_id DESC);
CREATE INDEX interactions_complaints ON interactions (customer_id, occurred_at)
    WHERE kind = 'complaint';

CREATE TABLE promise_policies (
    kind                text     NOT NULL,
    channel             text     NOT NULL,
    min_seconds         bigint   NOT NULL,
    max_seconds         bigint   NOT NULL,
    warn_before_seconds bigint   NOT NULL,
    PRIMARY KEY (kind, channel)
);

CREATE TABLE cases (
    case_id              uuid PRIMARY KEY,
    idempotency_key      text        NOT NULL UNIQUE,
    customer_id          uuid        NOT NULL,
    kind                 text        NOT NULL,
    channel              text        NOT NULL,
    unit                 text        NOT NULL DEFAULT '',
    status               text        NOT NULL DEFAULT 'open'
                         CHECK (status IN ('open', 'acknowledged', 'resolved')),
    summary              text        NOT NULL DEFAULT '',
    interaction_id       uuid,
    opened_at            timestamptz NOT NULL,
    promised_earliest_at timestamptz NOT NULL,
    promised_by          timestamptz NOT NULL,
    warn_at              timestamptz NOT NULL,
    acknowledged_at      timestamptz,
    resolved_at          timestamptz,
    resolution           text        NOT NULL DEFAULT '',
    breached             boolean     NOT NULL DEFAULT false,
    resolved_late        boolean     NOT NULL DEFAULT false,
    callback_phone       text        NOT NULL DEFAULT ''
);
CREATE INDEX cases_open ON cases (promised_by) WHERE status <> 'resolved';
CREATE INDEX cases_customer ON cases (customer_id, opened_at);
CREATE INDEX cases_unit ON cases (unit, status);

CREATE TABLE case_transfers (
    case_id   uuid        NOT NULL REFERENCES cases,
    from_unit text        NOT NULL,
    to_unit   text        NOT NULL,
    reason    text        NOT NULL,
    at        timestamptz NOT NULL
);
CREATE INDEX case_transfers_case ON case_transfers (case_id, at);

CREATE TABLE survey_responses (
    survey_response_id uuid PRIMARY KEY,
    idempotency_key    text        NOT NULL UNIQUE,
    customer_id        uuid        NOT NULL,
    touchpoint         text        NOT NULL DEFAULT '',
    channel            text        NOT NULL DEFAULT '',
    unit               text        NOT NULL DEFAULT '',
    interaction_id     uuid,
    case_id            uuid,
    csat               numeric(4, 2),
    nps                integer,
    answers            jsonb       NOT NULL DEFAULT '[]'::jsonb,
    occurred_at        timestamptz NOT NULL
);
CREATE INDEX survey_responses_time ON survey_responses (occurred_at);

CREATE TABLE service_cycles (
    name       text PRIMARY KEY,
    version    integer     NOT NULL,
    moments    jsonb       NOT NULL,
    updated_at timestamptz NOT NULL
);
