-- Webhooks (Standard Webhooks): the endpoints operators register, one
-- delivery per endpoint and job status change, and each attempt at it.
-- Deliveries are made by a trigger on job_events, in the status change's own
-- transaction, together with the outbox row that wakes the worker's webhook
-- consumer: a delivery is exactly as durable as the change it reports.

CREATE TABLE webhook_endpoints (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url                    text NOT NULL,
    -- The user whose job events go there; NULL: every user's (tenant-wide).
    user_id                uuid REFERENCES users (id),
    -- `whsec_` + base64 of the signing key. Shown once, kept because it signs.
    secret                 text NOT NULL,
    -- After a rotation the previous secret signs too, until this time.
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- enabled; disabled (the endpoint answered 410 Gone); deleted (by an operator).
    state                  text NOT NULL DEFAULT 'enabled',
    disabled_reason        text,
    created_by             text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_state_check CHECK (state IN ('enabled', 'disabled', 'deleted'))
);
-- What the trigger probes on every status change: empty while nothing is registered.
CREATE INDEX webhook_endpoints_enabled_idx ON webhook_endpoints (user_id) WHERE state = 'enabled';

CREATE TABLE webhook_deliveries (
    id                bigserial PRIMARY KEY,
    -- No foreign key on purpose: its check would share-lock the endpoint's
    -- row from every status change's transaction, and many transactions
    -- share-locking one (tenant-wide) row churn multixacts. Endpoints are
    -- never deleted (an operator's delete marks them), so it always exists.
    endpoint_id       uuid NOT NULL,
    job_id            uuid NOT NULL REFERENCES jobs (id),
    job_event_id      bigint NOT NULL REFERENCES job_events (id),
    -- The `webhook-id` header: the same on every attempt and replay.
    msg_id            text NOT NULL,
    -- The body, built when the status changed (a retry sends the same event).
    payload           jsonb NOT NULL,
    -- pending (to be sent, or retrying); delivered (2xx); failed (the retry
    -- schedule ran out); disabled (dropped: the endpoint was deleted or disabled).
    status            text NOT NULL DEFAULT 'pending',
    -- Every attempt, replays included.
    attempts          integer NOT NULL DEFAULT 0,
    -- Attempts since the delivery was made or replayed: the retry schedule's step.
    round_attempts    integer NOT NULL DEFAULT 0,
    -- Bumped after each attempt and by a replay; a wake-up message carrying
    -- another number is stale (a duplicate) and is dropped.
    seq               integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- A worker is sending it until then (a crashed worker's claim runs out).
    claimed_until     timestamptz,
    last_attempt_at   timestamptz,
    last_status_code  integer,
    last_response_ms  integer,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed', 'disabled')),
    CONSTRAINT webhook_deliveries_one_per_event UNIQUE (endpoint_id, job_event_id)
);
-- A job's status changes reach an endpoint in order: the sender looks for an
-- earlier pending delivery of the same job and endpoint here.
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, job_id, id)
    WHERE status = 'pending';
-- Operators list deliveries by status (the failed ones), newest first.
CREATE INDEX webhook_deliveries_status_idx ON webhook_deliveries (status, id DESC);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, id DESC);

CREATE TABLE webhook_attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES webhook_deliveries (id),
    at           timestamptz NOT NULL DEFAULT now(),
    -- NULL when no HTTP answer came (refused target, connection error, timeout).
    status_code  integer,
    response_ms  integer NOT NULL,
    error        text
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id, id);

-- One delivery per enabled endpoint that wants this job's events, with its
-- wake-up message in the outbox (`WebhookMessage::Deliver`, routing key
-- `webhook`). No NOTIFY here: a NOTIFY inside the submit transaction holds
-- Postgres' global notify lock across the commit and serializes every
-- submission; the relays pick the rows up when rung or on their timer.
-- The payload is documented as `JobStatusWebhook` (shared/src/webhooks.rs),
-- whose test reads what this function writes.
CREATE FUNCTION webhook_deliveries_for_status_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Nothing registered: one probe of an empty index, and done.
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints WHERE state = 'enabled') THEN
        RETURN NULL;
    END IF;
    -- The job row already carries this statement's change (an AFTER trigger
    -- runs once the whole statement is done).
    WITH job AS (
        SELECT j.*, u.external_id
          FROM jobs j JOIN users u ON u.id = j.user_id
         WHERE j.id = NEW.job_id
    ), delivery AS (
        INSERT INTO webhook_deliveries (endpoint_id, job_id, job_event_id, msg_id, payload)
        SELECT e.id, job.id, NEW.id, 'msg_genq_' || NEW.id,
               jsonb_build_object(
                   'type', 'job.status',
                   'timestamp', to_char(NEW.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                   'data', jsonb_build_object(
                       'event_id', NEW.id,
                       'job_id', job.id,
                       'user_id', job.user_id,
                       'external_user_id', job.external_id,
                       'from_status', NEW.from_status,
                       'to_status', NEW.to_status,
                       'message', NEW.message,
                       'cost', job.cost,
                       'model', job.model,
                       'error', CASE
                           WHEN NEW.to_status IN ('rejected', 'failed', 'canceled', 'dead')
                                AND job.error_code IS NOT NULL
                           THEN jsonb_build_object('code', job.error_code,
                                                   'message', COALESCE(job.error_message, ''))
                       END,
                       'required_credits', CASE WHEN NEW.to_status = 'rejected' THEN job.required_credits END,
                       'available_credits', CASE WHEN NEW.to_status = 'rejected' THEN job.available_credits END,
                       'result_url', CASE
                           WHEN NEW.to_status = 'succeeded' AND job.video_key IS NOT NULL
                           THEN '/v1/generations/' || job.id || '/video'
                       END,
                       'video_bytes', CASE WHEN NEW.to_status = 'succeeded' THEN job.video_bytes END))
          FROM webhook_endpoints e, job
         WHERE e.state = 'enabled' AND (e.user_id IS NULL OR e.user_id = job.user_id)
        RETURNING id
    )
    INSERT INTO outbox (routing_key, payload)
    SELECT 'webhook', jsonb_build_object('type', 'deliver', 'delivery_id', id, 'seq', 0)
      FROM delivery;
    RETURN NULL;
END
$$;

CREATE TRIGGER job_events_webhooks AFTER INSERT ON job_events
    FOR EACH ROW WHEN (NEW.to_status IS NOT NULL)
    EXECUTE FUNCTION webhook_deliveries_for_status_event();
