-- The service cycle as a working loop: versioned cycles whose requirements
-- become survey questions and mystery-shopping criteria, evaluations, action
-- plans, and the dissatisfaction cause of contacts and cases.

-- Every definition that changes a cycle is a new version; the latest version
-- of each cycle is the active one. moments: [{touchpoint, name, weight,
-- requirements: [{requirement_id, text, channels, scale, weight, question,
-- question_id}]}].
CREATE TABLE service_cycle_versions (
    name              text        NOT NULL,
    version           integer     NOT NULL,
    moments           jsonb       NOT NULL,
    survey_every_days integer     NOT NULL DEFAULT 0,
    survey_segment    text        NOT NULL DEFAULT '',
    survey_channel    text        NOT NULL DEFAULT '',
    digest            bytea,
    defined_at        timestamptz NOT NULL,
    PRIMARY KEY (name, version)
);

-- The cycles of before become their version, with their requirements given
-- ids r1, r2, ... in the cycle's order (CSAT, weight 1) and the moment's
-- priority (1 = highest) turned into a weight (1 -> 5, 5 or more -> 1). A
-- question's id is md5(cycle, version, requirement id) as a uuid, as the
-- service computes it.
WITH moments AS (
    SELECT c.name, c.version, m.value, m.n
    FROM service_cycles c, jsonb_array_elements(c.moments) WITH ORDINALITY AS m (value, n)),
requirements AS (
    SELECT m.name, m.n AS moment_n, r.n,
           'r' || row_number() OVER (PARTITION BY m.name ORDER BY m.n, r.n) AS id,
           r.text, m.version
    FROM moments m,
         jsonb_array_elements_text(COALESCE(m.value -> 'requirements', '[]'::jsonb))
             WITH ORDINALITY AS r (text, n))
INSERT INTO service_cycle_versions (name, version, moments, defined_at)
SELECT c.name, c.version, COALESCE((
    SELECT jsonb_agg(jsonb_build_object(
        'touchpoint', m.value ->> 'touchpoint',
        'name', m.value ->> 'touchpoint',
        'weight', greatest(1, 6 - least(5, COALESCE((m.value ->> 'priority')::int, 1))),
        'requirements', COALESCE((
            SELECT jsonb_agg(jsonb_build_object(
                'requirement_id', r.id,
                'text', r.text,
                'channels', '[]'::jsonb,
                'scale', 'csat',
                'weight', 1,
                'question', 'How satisfied were you with: ' || r.text || '?',
                'question_id', md5(r.name || E'\x1f' || r.version || E'\x1f' || r.id)::uuid::text)
                ORDER BY r.n)
            FROM requirements r WHERE r.name = m.name AND r.moment_n = m.n), '[]'::jsonb))
        ORDER BY m.n)
    FROM moments m WHERE m.name = c.name), '[]'::jsonb),
    c.updated_at
FROM service_cycles c;

-- Every question of every version, for answers to name (question_id).
CREATE TABLE survey_questions (
    question_id    uuid    PRIMARY KEY,
    cycle          text    NOT NULL,
    version        integer NOT NULL,
    touchpoint     text    NOT NULL,
    requirement_id text    NOT NULL,
    scale          text    NOT NULL,
    text           text    NOT NULL,
    FOREIGN KEY (cycle, version) REFERENCES service_cycle_versions (name, version)
);
INSERT INTO survey_questions
SELECT (r.value ->> 'question_id')::uuid, v.name, v.version, m.value ->> 'touchpoint',
       r.value ->> 'requirement_id', r.value ->> 'scale', r.value ->> 'question'
FROM service_cycle_versions v,
     jsonb_array_elements(v.moments) AS m (value),
     jsonb_array_elements(m.value -> 'requirements') AS r (value);

-- The answers of survey responses to questions of the matrix, one row each
-- (score on the question's scale), for the scorecard.
CREATE TABLE survey_answers (
    survey_response_id uuid        NOT NULL REFERENCES survey_responses ON DELETE CASCADE,
    question_id        uuid        NOT NULL REFERENCES survey_questions,
    customer_id        uuid        NOT NULL,
    cycle              text        NOT NULL,
    version            integer     NOT NULL,
    touchpoint         text        NOT NULL,
    requirement_id     text        NOT NULL,
    scale              text        NOT NULL,
    score              integer     NOT NULL,
    channel            text        NOT NULL DEFAULT '',
    unit               text        NOT NULL DEFAULT '',
    occurred_at        timestamptz NOT NULL,
    PRIMARY KEY (survey_response_id, question_id)
);
CREATE INDEX survey_answers_cycle ON survey_answers (cycle, occurred_at);
CREATE INDEX survey_answers_customer ON survey_answers (customer_id);

-- Mystery shopping: an evaluator's visit or call, scored per criterion.
CREATE TABLE evaluations (
    evaluation_id   uuid        PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    request_digest  bytea,
    cycle           text        NOT NULL,
    version         integer     NOT NULL,
    evaluator       text        NOT NULL,
    unit            text        NOT NULL,
    channel         text        NOT NULL,
    visited_at      timestamptz NOT NULL,
    notes           text        NOT NULL DEFAULT '',
    score           double precision NOT NULL,
    recorded_at     timestamptz NOT NULL,
    FOREIGN KEY (cycle, version) REFERENCES service_cycle_versions (name, version)
);
CREATE INDEX evaluations_cycle ON evaluations (cycle, visited_at DESC, evaluation_id);
CREATE INDEX evaluations_visited ON evaluations (visited_at DESC, evaluation_id);

CREATE TABLE evaluation_scores (
    evaluation_id  uuid    NOT NULL REFERENCES evaluations ON DELETE CASCADE,
    requirement_id text    NOT NULL,
    touchpoint     text    NOT NULL,
    scale          text    NOT NULL,
    weight         integer NOT NULL,
    score          integer NOT NULL,
    note           text    NOT NULL DEFAULT '',
    position       integer NOT NULL,
    PRIMARY KEY (evaluation_id, requirement_id)
);

-- Action plans per requirement ('' = the moment as a whole); the strings of
-- the cycles of before become planned plans of their moment with no owner.
CREATE TABLE action_plans (
    action_plan_id  uuid        PRIMARY KEY,
    idempotency_key text        UNIQUE,
    request_digest  bytea,
    cycle           text        NOT NULL,
    touchpoint      text        NOT NULL,
    requirement_id  text        NOT NULL DEFAULT '',
    description     text        NOT NULL,
    owner           text        NOT NULL DEFAULT '',
    due_on          date,
    state           text        NOT NULL DEFAULT 'planned',
    source          text        NOT NULL DEFAULT 'manual',
    evaluation_id   uuid        REFERENCES evaluations,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX action_plans_cycle ON action_plans (cycle, touchpoint, requirement_id);
CREATE INDEX action_plans_open_due ON action_plans (due_on)
    WHERE state IN ('planned', 'in_progress');

INSERT INTO action_plans (action_plan_id, cycle, touchpoint, description, created_at, updated_at)
SELECT md5(c.name || E'\x1f' || (m.value ->> 'touchpoint') || E'\x1f' || p.n)::uuid, c.name,
       m.value ->> 'touchpoint', p.text, c.updated_at, c.updated_at
FROM service_cycles c,
     jsonb_array_elements(c.moments) AS m (value),
     jsonb_array_elements_text(COALESCE(m.value -> 'action_plans', '[]'::jsonb))
         WITH ORDINALITY AS p (text, n);

DROP TABLE service_cycles;

-- Why the customer is dissatisfied, on negative contacts, complaints and cases;
-- the moment of truth a case arose at.
ALTER TABLE interactions ADD COLUMN cause text NOT NULL DEFAULT '';
ALTER TABLE cases ADD COLUMN cause text NOT NULL DEFAULT '',
                  ADD COLUMN touchpoint text NOT NULL DEFAULT '';

-- Timelines of those who took part in indirect attention.
CREATE INDEX interactions_requester ON interactions (requester_id, occurred_at DESC)
    WHERE requester_id IS NOT NULL;
CREATE INDEX interactions_decision_maker ON interactions (decision_maker_id, occurred_at DESC)
    WHERE decision_maker_id IS NOT NULL;

-- The members of a segment, in pages (a cycle's periodic survey).
CREATE INDEX customer_segments_members ON customer_segments (segment, customer_id)
    WHERE member;

-- The contacts of a window (the scorecard, the satisfaction report).
CREATE INDEX interactions_time ON interactions (occurred_at);
