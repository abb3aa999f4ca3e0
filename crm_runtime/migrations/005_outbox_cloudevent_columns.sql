-- An event written by outbox.add keeps its CloudEvents attributes in columns
-- (ce_id is event_id, ce_type event_type, ce_subject message_key) and the
-- relay builds the headers from them: encoding two arrays per row cost more
-- than the rest of the row. Raw records (dead letters, which keep the
-- original headers) still use header_keys/header_values. A relay older than
-- this migration fails on a row without arrays and backs off; the newer
-- replicas publish it (at least once, consumers deduplicate by ce_id).
ALTER TABLE outbox
    ALTER COLUMN header_keys DROP NOT NULL,
    ALTER COLUMN header_values DROP NOT NULL,
    ADD COLUMN ce_source      text,
    ADD COLUMN ce_time        text,
    ADD COLUMN ce_traceparent text,
    ADD CONSTRAINT outbox_headers_or_cloudevent
        CHECK ((header_keys IS NOT NULL AND header_values IS NOT NULL)
               OR (ce_source IS NOT NULL AND ce_time IS NOT NULL
                   AND ce_traceparent IS NOT NULL)) NOT VALID;
