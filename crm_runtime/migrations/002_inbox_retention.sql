-- The relay trims inbox rows older than CRM_INBOX_RETENTION_DAYS.
CREATE INDEX inbox_processed_at ON inbox (processed_at);
