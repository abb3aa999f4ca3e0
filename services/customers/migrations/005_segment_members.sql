-- Who is in which segment, as last evaluated (memberships.py): a command
-- that changes what a filter reads re-evaluates its customers, a segment's
-- (re)definition re-evaluates everyone page by page, and each difference
-- with these rows is one customer.segment_entered or customer.segment_left.
-- since: when the evaluation that found the customer entering ran. A merge
-- deletes the merged id's rows; an erasure deletes the customer's rows.
CREATE TABLE segment_members (
    segment     text        NOT NULL,
    customer_id uuid        NOT NULL REFERENCES customers (customer_id),
    since       timestamptz NOT NULL,
    PRIMARY KEY (segment, customer_id)
);
-- A command re-evaluates its customers' memberships.
CREATE INDEX segment_members_customer ON segment_members (customer_id);
