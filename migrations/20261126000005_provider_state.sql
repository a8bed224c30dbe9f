-- What the provider last said about a running task (queued at position 3,
-- throttled, running…), so the timeline records each change once.
ALTER TABLE jobs ADD COLUMN provider_state text;
