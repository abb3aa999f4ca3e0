-- What this service knows of each customer's consent, from the customers
-- service's customer.consent_changed (the customers service owns consent):
-- do-not-contact and the consent to surveys, each with the time of the
-- decision it reflects (NULL: no decision heard of). A decision older than
-- the one held never replaces it (see domain.prevails). A customer whose
-- consent was never announced has no surveys consent and no do-not-contact:
-- surveys are asked only of customers who said yes.
-- time_zone: customer.registered's (IANA name, '' when unknown), for quiet hours.
-- erased_at: the customer was erased (customer.erased). The row stays as a
-- tombstone, do-not-contact on, so no later event (a replayed registration
-- or consent) brings the customer back; such an id is no known customer.
ALTER TABLE known_customers
    ADD COLUMN do_not_contact     boolean NOT NULL DEFAULT false,
    ADD COLUMN do_not_contact_at  timestamptz,
    ADD COLUMN surveys_consent    boolean NOT NULL DEFAULT false,
    ADD COLUMN surveys_consent_at timestamptz,
    ADD COLUMN time_zone          text    NOT NULL DEFAULT '',
    ADD COLUMN erased_at          timestamptz;

-- Contacts the trust rules stopped (published as contact.suppressed): a
-- survey request after a case was resolved, a proactive contact an agent or
-- a channel recorded. contact_id is derived from what the contact was (the
-- case and its resolution; the customer and the contact's idempotency key),
-- so a retry records and publishes it once.
CREATE TABLE suppressed_contacts (
    contact_id     uuid PRIMARY KEY,
    customer_id    uuid        NOT NULL,
    contact_type   text        NOT NULL,
    purpose        text        NOT NULL,
    reason         text        NOT NULL,
    case_id        uuid,
    interaction_id uuid,
    at             timestamptz NOT NULL
);
CREATE INDEX suppressed_contacts_customer ON suppressed_contacts (customer_id);
