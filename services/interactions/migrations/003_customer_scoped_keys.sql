-- Idempotency keys are unique per customer, not across every customer: the
-- same key sent for two customers is two records, and a repeat of a key
-- answers with the record of that customer only. A key repeated for the
-- same customer with a different request is refused; request_digest holds
-- what the request stated (computed by the service, see commands.py), NULL
-- for rows stored before it existed (they match any repeat).
ALTER TABLE interactions
    DROP CONSTRAINT interactions_idempotency_key_key,
    ADD COLUMN request_digest bytea,
    ADD CONSTRAINT interactions_customer_key UNIQUE (customer_id, idempotency_key);

ALTER TABLE cases
    DROP CONSTRAINT cases_idempotency_key_key,
    ADD COLUMN request_digest bytea,
    ADD CONSTRAINT cases_customer_key UNIQUE (customer_id, idempotency_key);

ALTER TABLE survey_responses
    DROP CONSTRAINT survey_responses_idempotency_key_key,
    ADD COLUMN request_digest bytea,
    ADD CONSTRAINT survey_responses_customer_key UNIQUE (customer_id, idempotency_key);

-- The customers this service knows exist: fed by customer.registered (and
-- by the customers service's answers to registrations and look-ups), an id
-- leaves on customer.erased; a merged id is known through customer_aliases.
-- A contact, case or survey of an id not in it (nor known to the customers
-- service) is refused.
CREATE TABLE known_customers (
    customer_id uuid PRIMARY KEY
);

-- Every customer this service holds records of was accepted before: known.
INSERT INTO known_customers (customer_id)
SELECT customer_id FROM interactions
UNION SELECT customer_id FROM cases
UNION SELECT customer_id FROM survey_responses
UNION SELECT survivor_customer_id FROM customer_aliases;
