-- Loyalty: its own view of each customer (built from crm.customers.v1), the
-- rules, the actions they caused, follow-ups, newsletter enrolments, discount
-- codes and referral rewards.

-- What loyalty knows about a customer; never read from the customers schema.
CREATE TABLE customer_view (
    customer_id            uuid PRIMARY KEY,
    stage                  text        NOT NULL DEFAULT 'potential',
    purchase_count         integer     NOT NULL DEFAULT 0,
    last_purchase_at       timestamptz,
    segments               text[]      NOT NULL DEFAULT '{}',
    preferred_channel      text        NOT NULL DEFAULT '',
    time_zone              text        NOT NULL DEFAULT '',
    referred_by            uuid,
    referral_code          text UNIQUE,
    newsletter_consent     boolean     NOT NULL DEFAULT false,
    newsletter_consent_at  timestamptz,
    promotional_consent    boolean     NOT NULL DEFAULT false,
    promotional_consent_at timestamptz,
    do_not_contact         boolean     NOT NULL DEFAULT false,
    at_risk                boolean     NOT NULL DEFAULT false,
    erased_at              timestamptz,
    merged_into            uuid,
    updated_at             timestamptz NOT NULL
);
CREATE INDEX customer_view_merged_into ON customer_view (merged_into)
    WHERE merged_into IS NOT NULL;

-- Rules as data; every change is a new version, kept in rule_changes.
CREATE TABLE rules (
    rule_id     text PRIMARY KEY,
    version     integer     NOT NULL,
    enabled     boolean     NOT NULL,
    trigger     text        NOT NULL,
    definition  jsonb       NOT NULL,
    origin      text        NOT NULL CHECK (origin IN ('file', 'api')),
    file_digest text,
    updated_at  timestamptz NOT NULL,
    updated_by  text        NOT NULL
);
CREATE TABLE rule_changes (
    rule_id    text        NOT NULL,
    version    integer     NOT NULL,
    change     text        NOT NULL CHECK (change IN ('created', 'updated', 'disabled')),
    enabled    boolean     NOT NULL,
    definition jsonb       NOT NULL,
    actor      text        NOT NULL,
    note       text        NOT NULL DEFAULT '',
    at         timestamptz NOT NULL,
    PRIMARY KEY (rule_id, version)
);
-- One row: bumped by every rule change so each process reloads its cache.
CREATE TABLE rules_revision (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision  bigint  NOT NULL
);
INSERT INTO rules_revision (revision) VALUES (0);

-- Every action a rule asked for, once per (rule, trigger event, action):
-- performed, suppressed by a trust rule (with the reason) or skipped.
CREATE TABLE actions (
    action_id        uuid PRIMARY KEY,
    customer_id      uuid        NOT NULL,
    rule_id          text        NOT NULL,
    rule_version     integer     NOT NULL,
    action_index     integer     NOT NULL,
    action_type      text        NOT NULL,
    purpose          text        NOT NULL,
    trigger_event_id text        NOT NULL,
    trigger_type     text        NOT NULL,
    outcome          text        NOT NULL CHECK (outcome IN ('performed', 'suppressed', 'skipped')),
    reason           text        NOT NULL DEFAULT '',
    at               timestamptz NOT NULL,
    UNIQUE (trigger_event_id, rule_id, action_index)
);
CREATE INDEX actions_customer ON actions (customer_id, at);
CREATE INDEX actions_promotional ON actions (customer_id, at)
    WHERE purpose = 'promotional' AND outcome = 'performed';

CREATE TABLE follow_ups (
    follow_up_id     uuid PRIMARY KEY,
    customer_id      uuid        NOT NULL,
    rule_id          text        NOT NULL,
    channel          text        NOT NULL,
    template         text        NOT NULL,
    reason           text        NOT NULL,
    purpose          text        NOT NULL,
    list             text        NOT NULL DEFAULT '',
    cancel_on        text[]      NOT NULL DEFAULT '{}',
    status           text        NOT NULL
                     CHECK (status IN ('scheduled', 'due', 'completed', 'cancelled')),
    requested_at     timestamptz NOT NULL,
    due_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    fired_at         timestamptz,
    closed_at        timestamptz,
    outcome          text        NOT NULL DEFAULT '',
    note             text        NOT NULL DEFAULT ''
);
CREATE INDEX follow_ups_open ON follow_ups (customer_id) WHERE status IN ('scheduled', 'due');
CREATE INDEX follow_ups_cancellable ON follow_ups (customer_id)
    WHERE status IN ('scheduled', 'due') AND cancel_on <> '{}';
CREATE INDEX follow_ups_due ON follow_ups (due_at, follow_up_id) WHERE status = 'due';

CREATE TABLE enrolments (
    customer_id     uuid        NOT NULL,
    list            text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('enrolled', 'unsubscribed')),
    rule_id         text        NOT NULL DEFAULT '',
    enrolled_at     timestamptz NOT NULL,
    unsubscribed_at timestamptz,
    PRIMARY KEY (customer_id, list)
);

CREATE TABLE discounts (
    discount_id        uuid PRIMARY KEY,
    code               text        NOT NULL UNIQUE,
    customer_id        uuid        NOT NULL,
    rule_id            text        NOT NULL,
    kind               text        NOT NULL CHECK (kind IN ('percent', 'fixed')),
    percent            integer CHECK (percent BETWEEN 1 AND 100),
    amount_minor       bigint  CHECK (amount_minor > 0),
    currency           char(3)     NOT NULL,
    min_purchase_minor bigint      NOT NULL DEFAULT 0,
    purpose            text        NOT NULL,
    reason             text        NOT NULL DEFAULT '',
    issued_at          timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    redeemed_at        timestamptz,
    order_id           text,
    discount_minor     bigint,
    voided_at          timestamptz,
    void_reason        text,
    CHECK ((kind = 'percent') = (percent IS NOT NULL)),
    CHECK ((kind = 'fixed') = (amount_minor IS NOT NULL))
);
CREATE INDEX discounts_customer ON discounts (customer_id, issued_at);

-- A referred customer rewards their referrer once.
CREATE TABLE referral_rewards (
    referred_customer_id uuid PRIMARY KEY,
    referrer_id          uuid        NOT NULL,
    discount_id          uuid        NOT NULL,
    rule_id              text        NOT NULL,
    at                   timestamptz NOT NULL
);
CREATE INDEX referral_rewards_referrer ON referral_rewards (referrer_id);
