-- When the provider accepted the job's task (its last move to running): the
-- start of the provider's time in genq_provider_task_seconds.
ALTER TABLE jobs ADD COLUMN running_at timestamptz;
