-- Customer profiles, identifiers, consent, purchases and stage history.

CREATE TABLE customers (
    customer_id       uuid PRIMARY KEY,
    display_name      text        NOT NULL DEFAULT '',
    profile           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    stage             text        NOT NULL DEFAULT 'potential'
                      CHECK (stage IN ('potential', 'one_time', 'repeat', 'former')),
    purchase_count    integer     NOT NULL DEFAULT 0,
    first_purchase_at timestamptz,
    last_purchase_at  timestamptz,
    do_not_contact    boolean     NOT NULL DEFAULT false,
    version           bigint      NOT NULL DEFAULT 1,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    closed_at         timestamptz,
    erased_at         timestamptz
);
CREATE INDEX customers_stage ON customers (stage, customer_id);
CREATE INDEX customers_last_purchase ON customers (last_purchase_at);

-- Normalised identifiers: registration is idempotent on any of them.
CREATE TABLE customer_identifiers (
    kind        text NOT NULL CHECK (kind IN ('email', 'phone', 'external')),
    value       text NOT NULL,
    customer_id uuid NOT NULL REFERENCES customers ON DELETE CASCADE,
    position    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, value)
);
CREATE INDEX customer_identifiers_customer ON customer_identifiers (customer_id);

-- Each purchase counted once, whichever path (event or gRPC) reported it.
CREATE TABLE purchases (
    customer_id      uuid        NOT NULL REFERENCES customers ON DELETE CASCADE,
    purchase_id      text        NOT NULL,
    amount_minor     bigint      NOT NULL CHECK (amount_minor >= 0),
    currency         char(3)     NOT NULL,
    occurred_at      timestamptz NOT NULL,
    causing_event_id text        NOT NULL DEFAULT '',
    PRIMARY KEY (customer_id, purchase_id)
);

CREATE TABLE customer_spend (
    customer_id uuid    NOT NULL REFERENCES customers ON DELETE CASCADE,
    currency    char(3) NOT NULL,
    total_minor bigint  NOT NULL,
    PRIMARY KEY (customer_id, currency)
);

CREATE TABLE consents (
    customer_id uuid        NOT NULL REFERENCES customers ON DELETE CASCADE,
    purpose     text        NOT NULL,
    granted     boolean     NOT NULL,
    at          timestamptz NOT NULL,
    source      text        NOT NULL DEFAULT '',
    PRIMARY KEY (customer_id, purpose)
);

CREATE TABLE stage_history (
    id               bigserial PRIMARY KEY,
    customer_id      uuid        NOT NULL REFERENCES customers ON DELETE CASCADE,
    from_stage       text        NOT NULL,
    to_stage         text        NOT NULL,
    cause            text        NOT NULL,
    causing_event_id text        NOT NULL,
    at               timestamptz NOT NULL
);
CREATE INDEX stage_history_customer ON stage_history (customer_id, id);
