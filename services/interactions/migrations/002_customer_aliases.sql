-- Merges the customers service announced (customer.merged): a contact, case
-- or survey that arrives later under the merged id is stored under the
-- survivor, and reads by the merged id show the survivor's records.
CREATE TABLE customer_aliases (
    merged_customer_id   uuid PRIMARY KEY,
    survivor_customer_id uuid        NOT NULL,
    merged_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_aliases_survivor ON customer_aliases (survivor_customer_id);
