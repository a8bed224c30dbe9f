//! Credit lots: each grant or purchase is a lot, with an optional expiry.
//! The parts of the credit statements that move lots (a new lot, the
//! reserve step's take, the refund's return), the takes of reversals and
//! repayments, the sweeper's expiry, and reading a user's lots. Every change
//! of a lot is a move row naming its ledger entry, so a lot's remaining
//! credits are the sum of its moves and a refund knows where to go.
//!
//! Locks are taken account first, then lots, by every path: the reserve
//! step's lots CTE joins the account row it locked, the refund's return
//! joins the account update, and the Rust paths lock the account first.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{Result, SYSTEM_ACTOR};

/// The order a reservation takes lots in: those that expire first, then
/// those that last, oldest first.
pub(crate) const TAKE_ORDER: &str = "expires_at ASC NULLS LAST, id";

/// A lot for each row of the ledger CTE `ledger_cte` (`id`, `user_id`,
/// `amount`), expiring at the SQL `expires` (NULL: never), with its
/// opening move. `name` prefixes the CTEs, so one statement may have several.
pub(crate) fn new_lot_ctes(name: &str, ledger_cte: &str, expires: &str) -> String {
    format!(
        "{name}_lot AS (
            INSERT INTO credit_lots (user_id, amount, remaining, expires_at, ledger_id)
            SELECT user_id, amount, amount, {expires}, id FROM {ledger_cte}
            RETURNING id, amount, ledger_id
        ), {name}_lot_move AS (
            INSERT INTO credit_lot_moves (lot_id, ledger_id, amount)
            SELECT id, ledger_id, amount FROM {name}_lot
        )"
    )
}

/// The reserve step's take from the lots, as CTEs after `acct` (the locked
/// account, `user_id`) and `reserve_row` (the ledger entry, `id`): the
/// user's live lots are locked once the account is (they join it), read at
/// their latest values, and taken from in [`TAKE_ORDER`] until `cost` is
/// covered. When the lots this statement can see don't cover it (a lot
/// committed after the statement began), a move without a lot is written,
/// which `credit_lot_moves_covered` refuses: the statement fails, changing
/// nothing, and is tried again.
pub(crate) fn take_ctes(cost: &str) -> String {
    format!(
        "live_lots AS (
            SELECT l.id, l.remaining, l.expires_at FROM credit_lots l JOIN acct ON l.user_id = acct.user_id
             WHERE l.remaining > 0
             FOR UPDATE OF l
        ), alloc AS (
            SELECT id, LEAST(remaining, {cost} - (running - remaining)) AS take
              FROM (SELECT id, remaining,
                           sum(remaining) OVER (ORDER BY {TAKE_ORDER}) AS running
                      FROM live_lots) s
             WHERE running - remaining < {cost}
        ), lot_take AS (
            UPDATE credit_lots l SET remaining = l.remaining - a.take FROM alloc a WHERE l.id = a.id
        ), lot_take_move AS (
            INSERT INTO credit_lot_moves (lot_id, ledger_id, amount)
            SELECT a.id, r.id, -a.take FROM alloc a CROSS JOIN reserve_row r
            UNION ALL
            SELECT NULL, r.id, 0 FROM reserve_row r
             WHERE (SELECT COALESCE(sum(take), 0) FROM alloc) < {cost}
        )"
    )
}

/// The constraint a reserve step's take violates when the lots it saw did
/// not cover the cost (see [`take_ctes`]): the caller tries again.
pub const NOT_COVERED: &str = "credit_lot_moves_covered";

/// The refund's return to the lots, as CTEs of a transition statement over
/// the job CTE `job_cte`: before the account update, `refund_moves` (the
/// reservation's takes, each marked `gone` when its lot has expired); after
/// `settle_acct` and `settle_row` (the refund's ledger entry, `id`), the
/// live ones go back to their lots (joined to the account update, so the
/// account is locked first) and the gone ones are taken again at once by an
/// `expire` entry. `kind` is the settlement kind.
pub(crate) fn return_ctes(job_cte: &str, kind: &str) -> (String, String) {
    let before = format!(
        "refund_moves AS (
            SELECT m.lot_id, -m.amount AS back,
                   (lot.expires_at IS NOT NULL AND lot.expires_at <= now()) AS gone
              FROM {job_cte} j
              JOIN credit_ledger r ON r.job_id = j.id AND r.reservation = j.reservation AND r.kind = 'reserve'
              JOIN credit_lot_moves m ON m.ledger_id = r.id
              JOIN credit_lots lot ON lot.id = m.lot_id
             WHERE {kind} = 'refund'
        )"
    );
    let after = format!(
        "refund_expire_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, actor, reason)
            SELECT j.user_id, 'expire', g.total, '{SYSTEM_ACTOR}', 'refunded to credits that had expired'
              FROM {job_cte} j,
                   (SELECT sum(back) AS total FROM refund_moves WHERE gone) g
             WHERE g.total > 0
            RETURNING id
        ), lot_back AS (
            UPDATE credit_lots l SET remaining = l.remaining + b.back
              FROM (SELECT lot_id, sum(back) AS back FROM refund_moves WHERE NOT gone GROUP BY lot_id) b,
                   (SELECT count(*) FROM settle_acct) AS after_account
             WHERE l.id = b.lot_id
        ), lot_back_move AS (
            INSERT INTO credit_lot_moves (lot_id, ledger_id, amount)
            SELECT m.lot_id, r.id, m.back FROM refund_moves m CROSS JOIN settle_row r
            UNION ALL
            SELECT m.lot_id, e.id, -m.back FROM refund_moves m CROSS JOIN refund_expire_row e WHERE m.gone
        )"
    );
    (before, after)
}

/// The part of a refund that goes back to lots still live, as SQL over
/// `refund_moves`: what the account's available gets back.
pub(crate) const REFUND_LIVE: &str =
    "(SELECT COALESCE(sum(back), 0) FROM refund_moves WHERE NOT gone)";

/// Takes `amount` from `user_id`'s live lots for the ledger entry
/// `ledger_id`, `first` (if any) before the others, then in [`TAKE_ORDER`].
/// The caller holds the account's lock and checked that its available
/// credits (the sum of the live lots) cover `amount`.
pub(crate) async fn take(
    tx: &mut PgConnection,
    user_id: Uuid,
    amount: i64,
    ledger_id: i64,
    first: Option<i64>,
) -> Result<()> {
    if amount <= 0 {
        return Ok(());
    }
    let lots: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT id, remaining FROM credit_lots WHERE user_id = $1 AND remaining > 0
          ORDER BY id = $2 DESC, {TAKE_ORDER} FOR UPDATE"
    ))
    .bind(user_id)
    .bind(first.unwrap_or(0))
    .fetch_all(&mut *tx)
    .await?;
    let mut left = amount;
    for (id, remaining) in lots {
        if left == 0 {
            break;
        }
        let part = remaining.min(left);
        sqlx::query(
            "WITH u AS (UPDATE credit_lots SET remaining = remaining - $2 WHERE id = $1)
             INSERT INTO credit_lot_moves (lot_id, ledger_id, amount) VALUES ($1, $3, -$2)",
        )
        .bind(id)
        .bind(part)
        .bind(ledger_id)
        .execute(&mut *tx)
        .await?;
        left -= part;
    }
    if left > 0 {
        return Err(super::StoreError::Conflict(format!(
            "the user's lots hold {} credits less than their available balance",
            left
        )));
    }
    Ok(())
}

/// One lot's expiry, as the sweeper did it.
#[derive(Debug, Clone)]
pub struct Expired {
    pub user_id: Uuid,
    pub lot_id: i64,
    pub amount: i64,
}

/// Expires up to `limit` lots past their time: what each still holds is
/// taken with one `expire` entry, exactly once (the lot is emptied under
/// its lock, after the account's). Credits reserved by open jobs are not in
/// a lot's remaining, so they are untouched; they expire when refunded.
pub async fn expire_due(pool: &PgPool, limit: i64) -> Result<Vec<Expired>> {
    let due: Vec<(i64, Uuid)> = sqlx::query_as(
        "SELECT id, user_id FROM credit_lots
          WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= now()
          ORDER BY expires_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for (lot_id, user_id) in due {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT 1 FROM credit_accounts WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let expired: Option<i64> = sqlx::query_scalar(&format!(
            "WITH lot AS (
                SELECT id, user_id, remaining, expires_at FROM credit_lots
                 WHERE id = $1 AND remaining > 0 AND expires_at <= now() FOR UPDATE
             ), l AS (
                INSERT INTO credit_ledger (user_id, kind, amount, actor, reason)
                SELECT user_id, 'expire', remaining, '{SYSTEM_ACTOR}',
                       'credits expired ' || to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI UTC')
                  FROM lot
                RETURNING id, user_id, amount
             ), m AS (
                INSERT INTO credit_lot_moves (lot_id, ledger_id, amount)
                SELECT $1, id, -amount FROM l
             ), emptied AS (
                UPDATE credit_lots SET remaining = 0 FROM l WHERE credit_lots.id = $1
             ), a AS (
                UPDATE credit_accounts c SET available = c.available - l.amount, updated_at = now()
                  FROM l WHERE c.user_id = l.user_id
             )
             SELECT amount FROM l"
        ))
        .bind(lot_id)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(amount) = expired {
            out.push(Expired {
                user_id,
                lot_id,
                amount,
            });
        }
    }
    Ok(out)
}

/// One lot, as operators see it.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct Lot {
    pub id: i64,
    /// What the lot was given.
    pub amount: i64,
    /// What of it is available now.
    pub remaining: i64,
    /// Absent: the credits last.
    pub expires_at: Option<DateTime<Utc>>,
    /// `grant`, `purchase`, or absent for the balance lots began with.
    pub kind: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A user's lots, live first in the order a reservation takes them, then
/// the spent and expired ones, newest first (at most 100).
pub async fn lots_of(pool: &PgPool, user_id: Uuid) -> Result<Vec<Lot>> {
    Ok(sqlx::query_as(&format!(
        "SELECT l.id, l.amount, l.remaining, l.expires_at, e.kind, l.created_at
           FROM credit_lots l LEFT JOIN credit_ledger e ON e.id = l.ledger_id
          WHERE l.user_id = $1
          ORDER BY l.remaining > 0 DESC, CASE WHEN l.remaining > 0 THEN 0 ELSE -l.id END,
                   l.{TAKE_ORDER}
          LIMIT 100"
    ))
    .bind(user_id)
    .fetch_all(pool)
    .await?)
}

/// The credits that expire next, and when: the live lots of the earliest
/// expiry still to come.
pub async fn next_expiry(pool: &PgPool, user_id: Uuid) -> Result<Option<(i64, DateTime<Utc>)>> {
    Ok(sqlx::query_as(
        "SELECT sum(remaining)::bigint, expires_at FROM credit_lots
          WHERE user_id = $1 AND remaining > 0 AND expires_at IS NOT NULL
          GROUP BY expires_at ORDER BY expires_at LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?)
}
