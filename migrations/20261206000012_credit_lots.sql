-- Credits come in lots: each grant or purchase is one, with an optional
-- expiry. A reservation takes from the lots that expire first (then those
-- that never do, oldest first); a refund puts credits back where they came
-- from; what a lot still holds when it expires is taken by the sweeper with
-- an `expire` ledger entry.

ALTER TABLE credit_ledger DROP CONSTRAINT credit_ledger_kind_check;
ALTER TABLE credit_ledger ADD CONSTRAINT credit_ledger_kind_check CHECK (kind IN
    ('grant', 'purchase', 'reserve', 'commit', 'refund', 'adjust',
     'reversal', 'owe', 'repay', 'waive', 'expire'));

CREATE TABLE credit_lots (
    id          bigserial PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id),
    -- What the lot was given, and what of it is available now (reserved
    -- and spent credits have left it).
    amount      bigint NOT NULL CONSTRAINT credit_lots_amount_positive CHECK (amount > 0),
    remaining   bigint NOT NULL CONSTRAINT credit_lots_remaining_nonnegative CHECK (remaining >= 0),
    -- NULL: the credits last.
    expires_at  timestamptz,
    -- The grant or purchase that made it (NULL: the balance when lots began).
    ledger_id   bigint REFERENCES credit_ledger (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The live lots of a user, in the order a reservation takes them.
CREATE INDEX credit_lots_live_idx ON credit_lots (user_id, expires_at, id) WHERE remaining > 0;
-- What the sweeper expires.
CREATE INDEX credit_lots_expiring_idx ON credit_lots (expires_at)
    WHERE remaining > 0 AND expires_at IS NOT NULL;

-- Every change of a lot's remaining credits, with the ledger entry that made
-- it: a lot's remaining is the sum of its moves, and a refund returns a
-- reservation's credits to the lots its moves took them from.
CREATE TABLE credit_lot_moves (
    id         bigserial PRIMARY KEY,
    -- NULL only in a row the reserve step writes when the lots it could
    -- see did not cover the cost: the check refuses it, and the statement
    -- (which then changed nothing) is tried again.
    lot_id     bigint CONSTRAINT credit_lot_moves_covered CHECK (lot_id IS NOT NULL)
               REFERENCES credit_lots (id),
    ledger_id  bigint,
    amount     bigint NOT NULL
);
CREATE INDEX credit_lot_moves_ledger_idx ON credit_lot_moves (ledger_id);
CREATE INDEX credit_lot_moves_lot_idx ON credit_lot_moves (lot_id);

-- The balance when lots began becomes one lasting lot per account, holding
-- what is available and what is reserved and not yet settled (so those
-- refunds have a lot to return to).
CREATE TEMPORARY TABLE unsettled AS
SELECT r.id, r.user_id, r.amount FROM credit_ledger r
 WHERE r.kind = 'reserve'
   AND NOT EXISTS (SELECT 1 FROM credit_ledger s
                    WHERE s.job_id = r.job_id AND s.reservation = r.reservation
                      AND s.kind IN ('commit', 'refund'));
WITH opening AS (
    SELECT a.user_id, a.available,
           COALESCE((SELECT sum(u.amount) FROM unsettled u WHERE u.user_id = a.user_id), 0) AS reserved
      FROM credit_accounts a
), lots AS (
    INSERT INTO credit_lots (user_id, amount, remaining)
    SELECT user_id, available + reserved, available FROM opening WHERE available + reserved > 0
    RETURNING id, user_id, amount
), opened AS (
    INSERT INTO credit_lot_moves (lot_id, amount) SELECT id, amount FROM lots
)
INSERT INTO credit_lot_moves (lot_id, ledger_id, amount)
SELECT l.id, u.id, -u.amount FROM lots l JOIN unsettled u ON u.user_id = l.user_id;
DROP TABLE unsettled;
