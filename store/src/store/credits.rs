//! Credits: accounts and their append-only ledger. Every statement that moves
//! a balance is written here: grants and purchases, and the reserve and
//! settle steps that the job statements embed (one path each, whoever calls).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::{is_violation, lots, page, Result, StoreError, SYSTEM_ACTOR};
use genq_core::domain::LedgerKind;

#[derive(Debug, Clone, Copy, FromRow, Serialize)]
pub struct Account {
    pub available: i64,
    pub reserved: i64,
    pub spent: i64,
    /// Credits of a refunded or disputed payment that were already spent:
    /// while any are owed, the user can't start a job.
    pub owed: i64,
}

pub async fn account(pool: &PgPool, user_id: Uuid) -> Result<Account> {
    sqlx::query_as(
        "SELECT available, reserved, spent, owed FROM credit_accounts WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?
    .ok_or(StoreError::NotFound)
}

/// One entry of the credit ledger.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: Uuid,
    /// grant, purchase, reserve, commit, refund, adjust, reversal, owe,
    /// repay or waive.
    pub kind: String,
    pub amount: i64,
    pub job_id: Option<Uuid>,
    pub reference: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

const LEDGER_COLS: &str = "id, user_id, kind, amount, job_id, reference, actor, reason, created_at";

/// A page of the user's ledger, newest first, below the `before` ID, with
/// the cursor of the next page (`limit + 1` rows are read to know).
pub async fn ledger_entries(
    pool: &PgPool,
    user_id: Uuid,
    limit: i64,
    before: Option<i64>,
) -> Result<(Vec<LedgerEntry>, Option<i64>)> {
    let rows: Vec<LedgerEntry> = sqlx::query_as(&format!(
        "SELECT {LEDGER_COLS} FROM credit_ledger
          WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3"
    ))
    .bind(user_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit, |e| e.id))
}

/// Every ledger entry of one job, oldest first (a job has a handful).
pub async fn job_ledger_entries(pool: &PgPool, job_id: Uuid) -> Result<Vec<LedgerEntry>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {LEDGER_COLS} FROM credit_ledger WHERE job_id = $1 ORDER BY id LIMIT 1000"
    ))
    .bind(job_id)
    .fetch_all(pool)
    .await?)
}

/// Records an operator's action in the audit log.
pub async fn audit(
    pool: &PgPool,
    actor: &str,
    action: &str,
    target_user_id: Uuid,
    job_id: Option<Uuid>,
    details: serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target_user_id, job_id, details) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(action)
    .bind(target_user_id)
    .bind(job_id)
    .bind(details)
    .execute(pool)
    .await?;
    Ok(())
}

/// An operator's grant or purchase.
#[derive(Debug, Clone)]
pub struct CreditGrant {
    pub user_id: Uuid,
    pub kind: LedgerKind,
    pub amount: i64,
    pub reason: String,
    pub reference: Option<String>,
    pub actor: String,
    /// When the credits expire (a lot of their own); `None`: they last.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug)]
pub enum GrantOutcome {
    Applied(LedgerEntry),
    /// The reference was applied before; nothing changed this time.
    AlreadyApplied(LedgerEntry),
}

/// Adds credits with a ledger entry, their lot and an audit row, in one
/// statement; a reference already in the ledger is not applied again.
pub async fn add_credits(pool: &PgPool, grant: &CreditGrant) -> Result<GrantOutcome> {
    debug_assert!(matches!(
        grant.kind,
        LedgerKind::Grant | LedgerKind::Purchase
    ));
    debug_assert!(grant.amount > 0, "a grant of {} credits", grant.amount);
    let applied: std::result::Result<Option<LedgerEntry>, sqlx::Error> = sqlx::query_as(&format!(
        "WITH l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, reference, actor, reason)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {LEDGER_COLS}
        ), a AS (
            UPDATE credit_accounts c SET available = c.available + l.amount, updated_at = now()
              FROM l WHERE c.user_id = l.user_id
        ), {lot}, au AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT actor, 'credits.' || kind, user_id,
                   jsonb_build_object('amount', amount, 'reason', reason, 'reference', reference,
                                      'ledger_id', id, 'expires_at', $7::timestamptz)
              FROM l
        )
        SELECT * FROM l",
        lot = lots::new_lot_ctes("grant", "l", "$7::timestamptz")
    ))
    .bind(grant.user_id)
    .bind(grant.kind.as_str())
    .bind(grant.amount)
    .bind(&grant.reference)
    .bind(&grant.actor)
    .bind(&grant.reason)
    .bind(grant.expires_at)
    .fetch_optional(pool)
    .await;
    match applied {
        Ok(Some(entry)) => Ok(GrantOutcome::Applied(entry)),
        Ok(None) => Err(StoreError::NotFound),
        Err(e) if is_violation(&e, "credit_ledger_reference_key") => {
            let entry: LedgerEntry = sqlx::query_as(&format!(
                "SELECT {LEDGER_COLS} FROM credit_ledger WHERE reference = $1"
            ))
            .bind(&grant.reference)
            .fetch_one(pool)
            .await?;
            if entry.user_id != grant.user_id {
                return Err(StoreError::Conflict(
                    "this reference was already applied to another user".into(),
                ));
            }
            Ok(GrantOutcome::AlreadyApplied(entry))
        }
        Err(e) if is_violation(&e, "credit_ledger_user_id_fkey") => Err(StoreError::NotFound),
        Err(e) => Err(e.into()),
    }
}

/// The placeholders (or SQL expressions) a reserve step is built from.
pub(crate) struct Reserve<'a> {
    pub user: &'a str,
    pub cost: &'a str,
    pub job: &'a str,
    pub reservation: &'a str,
    pub actor: &'a str,
    pub reason: &'a str,
    /// A further condition of the reservation (SQL), or `TRUE`.
    pub only_if: &'a str,
}

/// The reserve step, as CTEs of the caller's statement: `acct` moves the
/// cost from available to reserved only if the user can afford it (checked
/// under the account row's lock, which orders concurrent reservations) and
/// returns the user; `reserve_row` writes the ledger's `reserve` entry; the
/// lots' take ([`lots::take_ctes`]) takes the cost from the lots that expire
/// first. The caller gates its own writes on `acct` returning a row. Submit
/// and the replay of a refunded job both reserve through this.
pub(crate) fn reserve_ctes(r: &Reserve<'_>) -> String {
    let Reserve {
        user,
        cost,
        job,
        reservation,
        actor,
        reason,
        only_if,
    } = r;
    format!(
        "acct AS (
            UPDATE credit_accounts
               SET available = available - {cost}, reserved = reserved + {cost}, updated_at = now()
             WHERE user_id = {user} AND available >= {cost} AND {only_if}
            RETURNING user_id
        ), reserve_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
            SELECT user_id, 'reserve', {cost}, {job}, {reservation}, {actor}, {reason} FROM acct
            RETURNING id
        ), {take}",
        take = lots::take_ctes(cost)
    )
}

/// The settle step, as CTEs of a transition statement: for the job returned
/// by the CTE `job_cte` (with `user_id`, `id`, `cost`, `reservation`),
/// moves the reserved cost to spent (`kind` 'commit') or back to available
/// ('refund': to the lots it came from, and what went back to a lot that has
/// expired meanwhile expires at once), with its ledger entries; nothing when
/// `kind` is NULL. The unique index on (job, reservation) allows one
/// settlement.
pub(crate) fn settle_ctes(job_cte: &str, kind: &str, reason: &str) -> String {
    let (before, after) = lots::return_ctes(job_cte, kind);
    format!(
        "{before}, settle_acct AS (
            UPDATE credit_accounts c
               SET reserved = c.reserved - {job_cte}.cost,
                   available = c.available + CASE WHEN {kind} = 'refund' THEN {live} ELSE 0 END,
                   spent = c.spent + CASE WHEN {kind} = 'commit' THEN {job_cte}.cost ELSE 0 END,
                   updated_at = now()
              FROM {job_cte} WHERE {kind} IS NOT NULL AND c.user_id = {job_cte}.user_id
            RETURNING c.user_id
        ), settle_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
            SELECT user_id, {kind}, cost, id, reservation, '{SYSTEM_ACTOR}', {reason}
              FROM {job_cte} WHERE {kind} IS NOT NULL
            RETURNING id
        ), {after}",
        live = lots::REFUND_LIVE,
    )
}

/// The balance of a user and what they owe, read under the account's lock
/// in `tx`.
pub(crate) async fn available_for_update(
    tx: &mut sqlx::PgConnection,
    user_id: Uuid,
) -> Result<(i64, i64)> {
    Ok(
        sqlx::query_as("SELECT available, owed FROM credit_accounts WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_one(tx)
            .await?,
    )
}
