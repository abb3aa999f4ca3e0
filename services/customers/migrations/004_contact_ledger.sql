-- The contact gate's ledger (ReserveContacts): one row per proactive contact
-- the gate allowed, whichever service asked, so one frequency cap per
-- customer holds across every service. contact_id: the caller's stable id of
-- the contact (asking again answers allowed without counting it twice).
-- at: when the contact reaches the customer; recorded_at: when it was
-- allowed. A merge moves the rows to the survivor; an erasure deletes them.
CREATE TABLE contact_ledger (
    contact_id  text        PRIMARY KEY,
    customer_id uuid        NOT NULL REFERENCES customers ON DELETE CASCADE,
    purpose     text        NOT NULL,
    channel     text        NOT NULL DEFAULT '',
    service     text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL
);
-- The gate counts a customer's contacts around a time.
CREATE INDEX contact_ledger_customer_at ON contact_ledger (customer_id, at);
