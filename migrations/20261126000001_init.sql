-- genq's schema: users, their credit accounts and append-only ledger, jobs with
-- their timeline, the outbox the relay publishes, and the operators' audit log.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    external_id   text NOT NULL,
    email         text,
    name          text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_external_id_key UNIQUE (external_id)
);
-- Operators look users up by email; the identity provider owns uniqueness, so
-- this index is not unique and ambiguous lookups are reported as such.
CREATE INDEX users_email_idx ON users (lower(email));

CREATE TABLE credit_accounts (
    user_id     uuid PRIMARY KEY REFERENCES users (id),
    available   bigint NOT NULL DEFAULT 0,
    reserved    bigint NOT NULL DEFAULT 0,
    spent       bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_accounts_available_nonnegative CHECK (available >= 0),
    CONSTRAINT credit_accounts_reserved_nonnegative CHECK (reserved >= 0),
    CONSTRAINT credit_accounts_spent_nonnegative CHECK (spent >= 0)
);

CREATE TABLE jobs (
    id                   uuid PRIMARY KEY,
    user_id              uuid NOT NULL REFERENCES users (id),
    status               text NOT NULL,
    prompt               text NOT NULL,
    params               jsonb NOT NULL DEFAULT '{}'::jsonb,
    cost                 bigint NOT NULL,
    provider             text,
    provider_task_id     text,
    attempts             integer NOT NULL DEFAULT 0,
    -- Incremented by each poll that finds the task still working; a poll
    -- message carrying an older sequence is a duplicate and is dropped.
    poll_seq             integer NOT NULL DEFAULT 0,
    polled_at            timestamptz,
    -- Which reservation of this job the ledger rows belong to (a dead job
    -- replayed by an operator reserves again, as reservation 2).
    reservation          integer NOT NULL DEFAULT 1,
    error_code           text,
    error_message        text,
    required_credits     bigint,
    available_credits    bigint,
    result_url           text,
    idempotency_key      text,
    request_fingerprint  text,
    deadline_at          timestamptz,
    provider_canceled_at timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_status_check CHECK (status IN
        ('rejected', 'queued', 'submitting', 'running', 'succeeded', 'failed', 'canceled', 'dead')),
    CONSTRAINT jobs_cost_nonnegative CHECK (cost >= 0),
    CONSTRAINT jobs_user_idempotency_key UNIQUE (user_id, idempotency_key)
);
CREATE INDEX jobs_user_created_idx ON jobs (user_id, created_at DESC, id DESC);
CREATE INDEX jobs_open_idx ON jobs (status, updated_at)
    WHERE status IN ('queued', 'submitting', 'running');

CREATE TABLE credit_ledger (
    id           bigserial PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id),
    kind         text NOT NULL,
    amount       bigint NOT NULL,
    job_id       uuid REFERENCES jobs (id),
    reservation  integer,
    reference    text,
    actor        text NOT NULL,
    reason       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_ledger_kind_check CHECK (kind IN
        ('grant', 'purchase', 'reserve', 'commit', 'refund', 'adjust')),
    -- Every kind but adjust moves a positive amount; adjust may go either way.
    CONSTRAINT credit_ledger_amount_check CHECK (kind = 'adjust' OR amount > 0),
    CONSTRAINT credit_ledger_job_rows_check CHECK (
        (kind IN ('reserve', 'commit', 'refund')) = (job_id IS NOT NULL AND reservation IS NOT NULL))
);
CREATE INDEX credit_ledger_user_idx ON credit_ledger (user_id, id DESC);
-- One reservation, and one settlement (commit or refund) of it, per job.
CREATE UNIQUE INDEX credit_ledger_one_reserve_per_job
    ON credit_ledger (job_id, reservation) WHERE kind = 'reserve';
CREATE UNIQUE INDEX credit_ledger_one_settlement_per_job
    ON credit_ledger (job_id, reservation) WHERE kind IN ('commit', 'refund');
-- A payment (or any referenced grant) is applied once.
CREATE UNIQUE INDEX credit_ledger_reference_key
    ON credit_ledger (reference) WHERE reference IS NOT NULL;

CREATE TABLE job_events (
    id           bigserial PRIMARY KEY,
    job_id       uuid NOT NULL REFERENCES jobs (id),
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind         text NOT NULL,
    from_status  text,
    to_status    text,
    message      text,
    data         jsonb
);
CREATE INDEX job_events_job_idx ON job_events (job_id, id);

CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    job_id        uuid,
    exchange      text NOT NULL,
    routing_key   text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    actor           text NOT NULL,
    action          text NOT NULL,
    target_user_id  uuid REFERENCES users (id),
    job_id          uuid,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_user_idx ON audit_log (target_user_id, id DESC);
