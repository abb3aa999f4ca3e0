-- When the do-not-contact decision loyalty holds was made (by the customer,
-- through the customers service): an older decision arriving later (a
-- replayed event) never overrides it, as for the consents beside it.
ALTER TABLE customer_view ADD COLUMN do_not_contact_at timestamptz;
