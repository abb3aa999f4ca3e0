-- Promises counted the way service desks count them: business-hours calendars
-- (versioned) and the calendar of each unit; policies with a clock, a
-- first-response milestone and entitlements by customer segment; each case's
-- milestones with their own due time and state; pauses while the case waits
-- on the customer; the segments each customer is in, as customers publishes.

CREATE TABLE calendars (
    name         text        NOT NULL,
    version      integer     NOT NULL,
    time_zone    text        NOT NULL,
    hours        jsonb       NOT NULL,
    closed_dates jsonb       NOT NULL DEFAULT '[]'::jsonb,
    defined_at   timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

-- unit '*': every unit without a calendar of its own.
CREATE TABLE unit_calendars (
    unit     text PRIMARY KEY,
    calendar text        NOT NULL,
    set_at   timestamptz NOT NULL
);

ALTER TABLE promise_policies
    ADD COLUMN segment                            text   NOT NULL DEFAULT '',
    ADD COLUMN clock                              text   NOT NULL DEFAULT 'business'
        CHECK (clock IN ('business', 'calendar')),
    ADD COLUMN first_response_seconds             bigint NOT NULL DEFAULT 0,
    ADD COLUMN first_response_warn_before_seconds bigint NOT NULL DEFAULT 0;
ALTER TABLE promise_policies DROP CONSTRAINT promise_policies_pkey,
    ADD PRIMARY KEY (kind, channel, segment);

-- Cases opened before calendars counted wall-clock time on the 24x7 calendar.
ALTER TABLE cases
    ADD COLUMN calendar         text    NOT NULL DEFAULT 'always',
    ADD COLUMN calendar_version integer NOT NULL DEFAULT 1,
    ADD COLUMN clock            text    NOT NULL DEFAULT 'calendar',
    ADD COLUMN policy           jsonb   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN policy_reason    text    NOT NULL DEFAULT '',
    ADD COLUMN paused_at        timestamptz,
    ADD COLUMN pause_reason     text    NOT NULL DEFAULT '';

-- remaining: while paused, the time the milestone had left; took: once met,
-- the time (on the case's clock, pauses left out) it took.
CREATE TABLE case_milestones (
    case_id     uuid        NOT NULL REFERENCES cases,
    milestone   text        NOT NULL CHECK (milestone IN ('first_response', 'resolution')),
    limit_time  interval    NOT NULL,
    warn_before interval    NOT NULL,
    state       text        NOT NULL
                CHECK (state IN ('pending', 'warning', 'hit', 'missed', 'paused')),
    due_at      timestamptz,
    warn_at     timestamptz,
    warned_at   timestamptz,
    remaining   interval,
    met_at      timestamptz,
    took        interval,
    missed_at   timestamptz,
    PRIMARY KEY (case_id, milestone)
);

-- Each case's promise so far is its resolution milestone; an open case whose
-- warning time passed and whose warning is no longer scheduled was warned.
INSERT INTO case_milestones (case_id, milestone, limit_time, warn_before, state, due_at,
                             warn_at, warned_at, met_at, took, missed_at)
SELECT c.case_id, 'resolution', c.promised_by - c.opened_at, c.promised_by - c.warn_at,
       CASE WHEN c.breached THEN 'missed' WHEN c.status = 'resolved' THEN 'hit'
            WHEN w.warned THEN 'warning' ELSE 'pending' END,
       c.promised_by, c.warn_at, CASE WHEN w.warned THEN c.warn_at END, c.resolved_at,
       c.resolved_at - c.opened_at, CASE WHEN c.breached THEN c.promised_by END
  FROM cases c
  CROSS JOIN LATERAL (
      SELECT c.status <> 'resolved' AND NOT c.breached AND c.warn_at <= now()
             AND NOT EXISTS (SELECT 1 FROM scheduled_work s
                              WHERE s.kind = 'cases.breach_warning'
                                AND s.item_key = c.case_id::text) AS warned) w;

-- Latest changed_at wins per customer and segment (member false: left).
CREATE TABLE customer_segments (
    customer_id uuid        NOT NULL,
    segment     text        NOT NULL,
    member      boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (customer_id, segment)
);
