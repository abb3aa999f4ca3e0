-- Segment membership as loyalty learns it from crm.customers.v1
-- (customer.segment_entered / customer.segment_left): per (segment,
-- customer) the change with the latest changed_at. A campaign's run takes
-- its members from here in one statement.
CREATE TABLE segment_members (
    segment     text        NOT NULL,
    customer_id uuid        NOT NULL,
    member      boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (segment, customer_id)
);
CREATE INDEX segment_members_customer ON segment_members (customer_id);

-- Campaigns: one action to every member of a segment, once per run.
CREATE TABLE campaigns (
    campaign_id          text PRIMARY KEY,
    -- Orders campaigns created at the same moment (page tokens).
    uid                  uuid        NOT NULL UNIQUE,
    name                 text        NOT NULL,
    description          text        NOT NULL DEFAULT '',
    segment              text        NOT NULL,
    -- {"kind": "discount" | "follow_up" | "newsletter_issue", ...its fields}
    action               jsonb       NOT NULL,
    start_at             timestamptz NOT NULL,
    members_per_minute   integer CHECK (members_per_minute BETWEEN 1 AND 1000000),
    repeat_every         text        NOT NULL DEFAULT '',
    repeat_until         timestamptz,
    include_late_joiners boolean     NOT NULL DEFAULT false,
    state                text        NOT NULL
                         CHECK (state IN ('scheduled', 'running', 'paused', 'done', 'cancelled')),
    -- What a paused campaign returns to when resumed.
    paused_from          text CHECK (paused_from IN ('scheduled', 'running')),
    next_run_at          timestamptz,
    runs                 integer     NOT NULL DEFAULT 0,
    -- The create request as stated, and its digest: the same request again
    -- returns the campaign, another one names the fields that differ.
    request              jsonb       NOT NULL,
    request_digest       bytea       NOT NULL,
    created_by           text        NOT NULL DEFAULT '',
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE INDEX campaigns_newest ON campaigns (created_at DESC, uid DESC);
CREATE INDEX campaigns_late_joiners ON campaigns (segment) WHERE include_late_joiners;

-- One row per run: its state and counters (pending = targeted - sent -
-- suppressed - skipped).
CREATE TABLE campaign_runs (
    campaign_id          text        NOT NULL REFERENCES campaigns,
    run                  integer     NOT NULL,
    state                text        NOT NULL
                         CHECK (state IN ('running', 'paused', 'done', 'cancelled')),
    scheduled_for        timestamptz NOT NULL,
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz,
    targeted             bigint      NOT NULL DEFAULT 0,
    sent                 bigint      NOT NULL DEFAULT 0,
    suppressed           bigint      NOT NULL DEFAULT 0,
    skipped              bigint      NOT NULL DEFAULT 0,
    suppressed_by_reason jsonb       NOT NULL DEFAULT '{}',
    skipped_by_reason    jsonb       NOT NULL DEFAULT '{}',
    last_page_at         timestamptz,
    last_progress_at     timestamptz,
    PRIMARY KEY (campaign_id, run)
);
CREATE INDEX campaign_runs_open ON campaign_runs (campaign_id)
    WHERE state IN ('running', 'paused');

-- The members of a run (the segment's when it started, and late joiners):
-- what each came to, once. outcome NULL: not reached yet.
CREATE TABLE campaign_members (
    campaign_id text        NOT NULL,
    run         integer     NOT NULL,
    customer_id uuid        NOT NULL,
    outcome     text CHECK (outcome IN ('sent', 'suppressed', 'skipped')),
    reason      text        NOT NULL DEFAULT '',
    action_id   uuid,
    decided_at  timestamptz,
    PRIMARY KEY (campaign_id, run, customer_id),
    FOREIGN KEY (campaign_id, run) REFERENCES campaign_runs
);
CREATE INDEX campaign_members_pending ON campaign_members (campaign_id, run, customer_id)
    WHERE outcome IS NULL;
CREATE INDEX campaign_members_customer ON campaign_members (customer_id);
