-- Fair shares under caps: a job that can't start yet (its provider's cap,
-- or its user's limit on jobs at the provider at once) waits in its user's
-- line, queued, its credits reserved, holding no broker delivery; a freed
-- slot is granted in turn (round-robin between users, high priority first).

-- Whether the job goes ahead of its user's normal jobs (and of users
-- without waiting high-priority jobs). Only a user given the right may ask.
ALTER TABLE jobs ADD COLUMN priority text NOT NULL DEFAULT 'normal'
    CONSTRAINT jobs_priority_check CHECK (priority IN ('normal', 'high'));

-- Set while the job waits in a line; cleared when it is granted a slot.
-- Only a queued job is in a line: a canceled or expired one leaves every
-- index below by its status, with nothing to clean up.
ALTER TABLE jobs ADD COLUMN waiting boolean NOT NULL DEFAULT false;

-- A provider's lines, one per user, in the order each is served: high
-- first, then oldest. The dispatcher walks its distinct (provider, user)
-- pairs (a skip scan: one probe per line, however many jobs wait).
CREATE INDEX jobs_waiting_idx ON jobs (provider, user_id, (priority = 'high') DESC, created_at, id)
    WHERE waiting AND status = 'queued';
-- A user's line across providers (is anything of theirs waiting?).
CREATE INDEX jobs_waiting_user_idx ON jobs (user_id)
    WHERE waiting AND status = 'queued';
-- A user's jobs at the provider, counted under their limit.
CREATE INDEX jobs_user_in_flight_idx ON jobs (user_id)
    WHERE status IN ('submitting', 'running');

-- Each user's last turn at each provider that has a line: the next slot
-- goes to the waiting user whose turn is oldest (never served: first).
CREATE TABLE gate_turns (
    provider  text NOT NULL,
    user_id   uuid NOT NULL REFERENCES users (id),
    turn      bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, user_id)
);
CREATE SEQUENCE gate_turn_seq;

-- What an operator (or the user's plan) set for one user. NULL max_active:
-- the deployment's limits.max_active_per_user; 0: no limit.
CREATE TABLE user_limits (
    user_id     uuid PRIMARY KEY REFERENCES users (id),
    max_active  integer CONSTRAINT user_limits_max_active_range CHECK (max_active BETWEEN 0 AND 10000),
    priority    boolean NOT NULL DEFAULT false,
    updated_by  text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
