-- The trace context of the work that scheduled an item: a breach, a churn
-- window or a due follow-up continues the trace of what caused it.
ALTER TABLE scheduled_work ADD COLUMN traceparent text NOT NULL DEFAULT '';
