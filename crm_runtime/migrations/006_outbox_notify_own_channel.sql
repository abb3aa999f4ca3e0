-- Each schema's relay listens on a channel of its own: 'crm_outbox.' and the
-- schema name (its first 52 characters, so the channel stays within the 63
-- of an identifier; schemas that share those only wake each other's relay
-- for nothing). With the one channel of migration 003, every commit woke the
-- relay of every service sharing the database, and all but one dropped it.
-- A relay older than this migration listens on 'crm_outbox' and is no longer
-- woken by new writers: it publishes on its idle poll
-- (CRM_RELAY_POLL_INTERVAL_S) until it is replaced.
CREATE OR REPLACE FUNCTION outbox_wake_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('crm_outbox.' || left(TG_TABLE_SCHEMA, 52), TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;
