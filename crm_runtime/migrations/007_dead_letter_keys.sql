-- A dead letter's record goes to the dead-letter topic sealed with a key of
-- its own, kept only here (value_key). Erasure of the customer it is about
-- (subject) destroys the key, and so does the dead-letter retention: a topic
-- read from its start then holds nothing anyone can open.
ALTER TABLE dead_letters
    ADD COLUMN subject   text,
    ADD COLUMN value_key bytea;
CREATE INDEX dead_letters_subject ON dead_letters (subject) WHERE value_key IS NOT NULL;
CREATE INDEX dead_letters_keys_by_age ON dead_letters (created_at) WHERE value_key IS NOT NULL;
