-- Wake the relay when a transaction adds outbox rows, without a round trip of
-- the writer's own: a statement trigger notifies, PostgreSQL delivers it at
-- commit (dropped on rollback) and folds repeats within a transaction.
CREATE FUNCTION outbox_wake_relay() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('crm_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_wake_relay AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_wake_relay();
