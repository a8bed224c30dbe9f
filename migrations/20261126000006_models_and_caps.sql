-- The model a submission named (NULL: the deployment's default provider).
-- jobs.provider holds the configured provider the job runs on: the model's
-- name, or provider.name for the default.
ALTER TABLE jobs ADD COLUMN model text;

-- Jobs in flight per provider, counted under a provider's concurrency cap.
CREATE INDEX jobs_provider_in_flight_idx ON jobs (provider)
    WHERE status IN ('submitting', 'running');

-- Submissions (claims) made to a provider with a request-rate cap, one row
-- each, kept for the cap's window: counted under the cap, pruned as they age.
CREATE TABLE provider_claims (
    id        bigserial PRIMARY KEY,
    provider  text NOT NULL,
    job_id    uuid NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX provider_claims_provider_at_idx ON provider_claims (provider, at);
