-- Dead letters, archived from the broker's dead-letter queue so that operators
-- read them from the source of truth without consuming or reordering anything.
CREATE TABLE dead_letters (
    id            bigserial PRIMARY KEY,
    job_id        uuid,
    source_queue  text NOT NULL,
    reason        text NOT NULL,
    body          bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at   timestamptz NOT NULL DEFAULT now(),
    state         text NOT NULL DEFAULT 'open',
    resolved_at   timestamptz,
    resolved_by   text,
    CONSTRAINT dead_letters_state_check CHECK (state IN ('open', 'replayed', 'discarded'))
);
CREATE INDEX dead_letters_open_idx ON dead_letters (id) WHERE state = 'open';
CREATE INDEX dead_letters_job_idx ON dead_letters (job_id);
