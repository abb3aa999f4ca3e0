-- Segments, requester/decision-maker links, merge aliases and at-risk marking.

ALTER TABLE customers
    ADD COLUMN merged_into    uuid REFERENCES customers (customer_id),
    ADD COLUMN at_risk        boolean NOT NULL DEFAULT false,
    ADD COLUMN risk_reasons   text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN last_csat      integer,
    ADD COLUMN last_nps       integer,
    ADD COLUMN last_survey_at timestamptz;
CREATE INDEX customers_purchase_count ON customers (purchase_count);
CREATE INDEX customers_at_risk ON customers (customer_id) WHERE at_risk;
CREATE INDEX customers_profile ON customers USING gin (profile jsonb_path_ops);

-- Named segment definitions; every edit is a new version, kept.
CREATE TABLE segments (
    name              text PRIMARY KEY,
    version           integer     NOT NULL,
    description       text        NOT NULL DEFAULT '',
    definition        jsonb       NOT NULL,
    churn_window_days integer CHECK (churn_window_days > 0),
    updated_at        timestamptz NOT NULL
);
CREATE TABLE segment_versions (
    name              text        NOT NULL,
    version           integer     NOT NULL,
    description       text        NOT NULL DEFAULT '',
    definition        jsonb       NOT NULL,
    churn_window_days integer,
    defined_at        timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

-- Direct vs indirect attention: a requester acts for a decision-maker.
CREATE TABLE customer_links (
    requester_id      uuid NOT NULL REFERENCES customers (customer_id),
    decision_maker_id uuid NOT NULL REFERENCES customers (customer_id),
    role              text NOT NULL,
    created_at        timestamptz NOT NULL,
    PRIMARY KEY (requester_id, decision_maker_id),
    CHECK (requester_id <> decision_maker_id)
);
CREATE INDEX customer_links_decision_maker ON customer_links (decision_maker_id);

-- Dissatisfaction signals that feed at-risk marking.
CREATE TABLE risk_signals (
    customer_id uuid        NOT NULL REFERENCES customers (customer_id),
    event_id    text        NOT NULL,
    reason      text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (customer_id, event_id)
);
