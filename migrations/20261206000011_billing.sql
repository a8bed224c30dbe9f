-- Money in through Stripe: payments credited once, refunds and disputes
-- reversed once, and what a user already spent of a reversed payment owed.

-- Credits a reversal could not take back (the user had spent them). A user
-- who owes can't start a job until a purchase repays it or an operator
-- waives it.
ALTER TABLE credit_accounts
    ADD COLUMN owed bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT credit_accounts_owed_nonnegative CHECK (owed >= 0);

-- reversal: unspent credits of a refunded or disputed payment taken back;
-- owe: the part that could not be (recorded, no balance moves);
-- repay: owed credits paid from a later purchase; waive: an operator's pardon.
ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_kind_check;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_kind_check CHECK (kind IN
    ('grant', 'purchase', 'reserve', 'commit', 'refund', 'adjust',
     'reversal', 'owe', 'repay', 'waive'));

-- One row per Stripe payment, whichever of its events came first: the
-- checkout session that credits it, and the refunds and disputes that take
-- it back (cumulative amounts, in the currency's minor unit).
CREATE TABLE stripe_payments (
    id                bigserial PRIMARY KEY,
    payment_intent    text UNIQUE,
    session_id        text UNIQUE,
    user_id           uuid REFERENCES users (id),
    -- Set once the session's credits were added.
    credits           bigint CONSTRAINT stripe_payments_credits_positive CHECK (credits > 0),
    amount            bigint,
    currency          text,
    refunded          bigint NOT NULL DEFAULT 0,
    disputed          bigint NOT NULL DEFAULT 0,
    credits_reversed  bigint NOT NULL DEFAULT 0
        CONSTRAINT stripe_payments_reversed_bounded CHECK (credits_reversed >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stripe_payments_named CHECK (payment_intent IS NOT NULL OR session_id IS NOT NULL)
);

-- Every webhook event received (kept 30 days): a repeat of an ID changes
-- nothing, and operators see what each did.
CREATE TABLE billing_events (
    id               text PRIMARY KEY,
    type             text NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    outcome          text NOT NULL,
    detail           text NOT NULL,
    user_id          uuid REFERENCES users (id),
    object_id        text,
    needs_attention  boolean NOT NULL DEFAULT false
);
CREATE INDEX billing_events_received_idx ON billing_events (received_at DESC, id);
