-- A tiny test-only service used to prove the runtime: each consumed
-- entry_requested adds its amount to the customer's balance exactly once.
CREATE TABLE balances (
    customer_id text PRIMARY KEY,
    total       bigint  NOT NULL,
    entries     integer NOT NULL
);
CREATE TABLE applied_entries (
    event_id    text PRIMARY KEY,
    customer_id text NOT NULL,
    amount      bigint NOT NULL
);
