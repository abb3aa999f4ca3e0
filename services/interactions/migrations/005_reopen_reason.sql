-- Why a case was reopened: people's free text stays in the database, where
-- erasure and the data-subject export reach it, never in an event.
ALTER TABLE cases ADD COLUMN reopen_reason text NOT NULL DEFAULT '';
