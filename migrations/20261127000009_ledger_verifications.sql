-- The outcome of each ledger verification (the worker's periodic check,
-- the console's button, genqctl), so the console can show the last one.
CREATE TABLE ledger_verifications (
    id          BIGSERIAL PRIMARY KEY,
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Who ran it: 'worker', 'genqctl', or the admin's actor string.
    checked_by  TEXT NOT NULL,
    violations  INTEGER NOT NULL CHECK (violations >= 0),
    took_ms     INTEGER NOT NULL CHECK (took_ms >= 0),
    -- The first few violations, for the console (the full list is in the logs).
    sample      JSONB NOT NULL DEFAULT '[]'
);
CREATE INDEX ledger_verifications_checked_at ON ledger_verifications (checked_at DESC);
