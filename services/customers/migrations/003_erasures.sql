-- Erasures and their acknowledgements, one row per (customer, service):
-- EraseCustomer writes the customers service's own row complete and one
-- pending row per service that must acknowledge (erasures.AWAITED); the
-- service's <service>.erasure_completed sets completed_at to when it scrubbed
-- its data. due_at: when a pending row becomes overdue (requested_at plus
-- CRM_ERASURE_ACK_TIMEOUT_S as it was then; crm_erasures_overdue).
-- Customers erased before this table existed have no rows.
CREATE TABLE erasures (
    customer_id  uuid        NOT NULL REFERENCES customers (customer_id),
    service      text        NOT NULL,
    requested_at timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    completed_at timestamptz,
    PRIMARY KEY (customer_id, service)
);
-- The overdue gauge reads only pending rows.
CREATE INDEX erasures_pending ON erasures (service, due_at) WHERE completed_at IS NULL;
