//! Money in: Stripe payments credited once, refunds and disputes reversed
//! once (what was already spent is recorded as owed), owed credits repaid
//! or waived, and the log of every webhook event. Each event is applied in
//! one transaction with its log row, so a repeat of its ID changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{lots, Result, StoreError};

/// The actor of every ledger entry a payment event writes.
pub const STRIPE_ACTOR: &str = "stripe";

/// How long webhook events are kept: past Stripe's retries (3 days).
const KEEP_EVENTS_DAYS: i32 = 30;

/// One webhook event as received, and what it did.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct BillingEvent {
    /// Stripe's event ID (`evt_…`).
    pub id: String,
    /// Stripe's event type, e.g. `checkout.session.completed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub received_at: DateTime<Utc>,
    /// `credited`, `reversed`, `recorded`, `duplicate`, `ignored` or
    /// `needs_attention`.
    pub outcome: String,
    /// What was done, for people.
    pub detail: String,
    pub user_id: Option<Uuid>,
    /// The session, charge or dispute the event was about.
    pub object_id: Option<String>,
    /// Not applied, and an operator should look (e.g. a paid session
    /// without a user or an amount): never credited by guess.
    pub needs_attention: bool,
}

/// What applying an event did, as its log row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: &'static str,
    pub detail: String,
    pub user_id: Option<Uuid>,
    pub object_id: Option<String>,
}

impl Applied {
    pub fn new(outcome: &'static str, detail: impl Into<String>) -> Self {
        Self {
            outcome,
            detail: detail.into(),
            user_id: None,
            object_id: None,
        }
    }

    pub fn user(mut self, user_id: Option<Uuid>) -> Self {
        self.user_id = user_id;
        self
    }

    pub fn object(mut self, id: Option<&str>) -> Self {
        self.object_id = id.map(str::to_owned);
        self
    }

    pub fn needs_attention(&self) -> bool {
        self.outcome == "needs_attention"
    }
}

/// Records a new event in `tx` (and forgets events past the keeping
/// window); `false` when its ID was seen before, so the caller applies
/// nothing. A concurrent delivery of the same ID waits here for the first
/// one's commit, then finds it.
pub async fn claim_event(tx: &mut PgConnection, id: &str, kind: &str) -> Result<bool> {
    let claimed: Option<i32> = sqlx::query_scalar(
        "WITH pruned AS (
            DELETE FROM billing_events WHERE received_at < now() - make_interval(days => $3)
         )
         INSERT INTO billing_events (id, type, outcome, detail) VALUES ($1, $2, 'processing', '')
         ON CONFLICT (id) DO NOTHING RETURNING 1",
    )
    .bind(id)
    .bind(kind)
    .bind(KEEP_EVENTS_DAYS)
    .fetch_optional(tx)
    .await?;
    Ok(claimed.is_some())
}

/// Writes what the event did onto its log row.
pub async fn finish_event(tx: &mut PgConnection, id: &str, applied: &Applied) -> Result<()> {
    sqlx::query(
        "UPDATE billing_events SET outcome = $2, detail = $3, user_id = $4, object_id = $5,
                needs_attention = $6 WHERE id = $1",
    )
    .bind(id)
    .bind(applied.outcome)
    .bind(&applied.detail)
    .bind(applied.user_id)
    .bind(&applied.object_id)
    .bind(applied.needs_attention())
    .execute(tx)
    .await?;
    Ok(())
}

/// The newest events first, at most `limit`; only those needing attention
/// when `attention` is set.
pub async fn events(pool: &PgPool, limit: i64, attention: bool) -> Result<Vec<BillingEvent>> {
    Ok(sqlx::query_as(
        "SELECT id, type AS kind, received_at, outcome, detail, user_id, object_id, needs_attention
           FROM billing_events WHERE ($2 = false OR needs_attention)
          ORDER BY received_at DESC, id LIMIT $1",
    )
    .bind(limit)
    .bind(attention)
    .fetch_all(pool)
    .await?)
}

/// A paid checkout session, parsed and checked by the caller.
#[derive(Debug, Clone)]
pub struct PaidCheckout<'a> {
    pub session_id: &'a str,
    pub payment_intent: Option<&'a str>,
    pub user_id: Uuid,
    pub credits: i64,
    /// What was paid, in the currency's minor unit.
    pub amount: Option<i64>,
    pub currency: Option<&'a str>,
}

/// Adds a paid session's credits once (a `purchase` whose reference is the
/// session ID), then applies any refund or dispute that arrived before it,
/// then repays what the user owes from what is available.
pub async fn credit_checkout(tx: &mut PgConnection, c: &PaidCheckout<'_>) -> Result<Applied> {
    debug_assert!(c.credits > 0);
    let (payment, credited): (i64, Option<i64>) = match c.payment_intent {
        Some(pi) => {
            sqlx::query_as(
                "INSERT INTO stripe_payments (payment_intent, session_id, amount, currency)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (payment_intent) DO UPDATE
                    SET session_id = COALESCE(stripe_payments.session_id, EXCLUDED.session_id),
                        amount = COALESCE(stripe_payments.amount, EXCLUDED.amount),
                        currency = COALESCE(stripe_payments.currency, EXCLUDED.currency),
                        updated_at = now()
                 RETURNING id, credits",
            )
            .bind(pi)
            .bind(c.session_id)
            .bind(c.amount)
            .bind(c.currency)
            .fetch_one(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_as(
                "INSERT INTO stripe_payments (session_id, amount, currency) VALUES ($1, $2, $3)
                 ON CONFLICT (session_id) DO UPDATE SET updated_at = now()
                 RETURNING id, credits",
            )
            .bind(c.session_id)
            .bind(c.amount)
            .bind(c.currency)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    let applied = |outcome, detail: String| {
        Applied::new(outcome, detail)
            .user(Some(c.user_id))
            .object(Some(c.session_id))
    };
    if let Some(credits) = credited {
        return Ok(applied(
            "duplicate",
            format!(
                "session {} was credited before ({credits} credits)",
                c.session_id
            ),
        ));
    }
    let reason = match c.payment_intent {
        Some(pi) => format!("Stripe checkout, payment {pi}"),
        None => "Stripe checkout".to_owned(),
    };
    // The reference index is the last guard: an operator's purchase with
    // this session as its reference already credited it.
    let added = add_referenced(
        tx,
        c.user_id,
        "purchase",
        c.credits,
        c.session_id,
        &reason,
        None,
    )
    .await?;
    if !added {
        return Ok(applied(
            "duplicate",
            format!(
                "the ledger already has an entry referencing {}",
                c.session_id
            ),
        ));
    }
    sqlx::query("UPDATE stripe_payments SET user_id = $2, credits = $3 WHERE id = $1")
        .bind(payment)
        .bind(c.user_id)
        .bind(c.credits)
        .execute(&mut *tx)
        .await?;
    let mut detail = format!("{} credits purchased", c.credits);
    if let Some(r) = settle_reversal(tx, payment).await? {
        detail.push_str(&format!("; {}", r.describe()));
    }
    repay_noted(tx, c.user_id, c.session_id, &mut detail).await?;
    Ok(applied("credited", detail))
}

/// A subscription's paid invoice: plan credits that expire at the end of
/// the period it pays for.
#[derive(Debug, Clone)]
pub struct PlanCredits<'a> {
    pub invoice_id: &'a str,
    pub user_id: Uuid,
    pub credits: i64,
    pub expires_at: DateTime<Utc>,
    /// What the plan gives besides credits (`genq_plan_max_active`,
    /// `genq_plan_priority`); nothing to change when both are `None`.
    pub limits: super::gate::LimitsChange,
}

/// Grants an invoice's plan credits once (a `grant` whose reference is the
/// invoice ID), as a lot expiring with the period, then repays what the
/// user owes from what is available.
pub async fn credit_plan(tx: &mut PgConnection, p: &PlanCredits<'_>) -> Result<Applied> {
    let reason = format!(
        "plan credits until {}",
        p.expires_at.format("%Y-%m-%d %H:%M UTC")
    );
    let added = add_referenced(
        tx,
        p.user_id,
        "grant",
        p.credits,
        p.invoice_id,
        &reason,
        Some(p.expires_at),
    )
    .await?;
    let applied = |outcome, detail: String| {
        Applied::new(outcome, detail)
            .user(Some(p.user_id))
            .object(Some(p.invoice_id))
    };
    if !added {
        return Ok(applied(
            "duplicate",
            format!("invoice {} was credited before", p.invoice_id),
        ));
    }
    let mut detail = format!(
        "{} plan credits, expiring {}",
        p.credits,
        p.expires_at.format("%Y-%m-%d %H:%M UTC")
    );
    if p.limits.max_active.is_some() || p.limits.priority.is_some() {
        let actor = format!("stripe:{}", p.invoice_id);
        let l =
            super::gate::set_user_limits_in(tx, p.user_id, &p.limits, &actor, Some("paid plan"))
                .await?;
        let at_once = match l.max_active {
            Some(0) => "no limit at once".to_owned(),
            Some(n) => format!("{n} at once"),
            None => "the default at once".to_owned(),
        };
        detail.push_str(&format!(
            "; limits: {at_once}, high priority {}",
            if l.priority { "allowed" } else { "not allowed" }
        ));
    }
    repay_noted(tx, p.user_id, p.invoice_id, &mut detail).await?;
    Ok(applied("credited", detail))
}

/// Adds `amount` credits of `kind` referenced by `reference`, as a lot
/// expiring at `expires` (`None`: lasting); `false` when the reference was
/// applied before (the ledger's unique reference), changing nothing.
async fn add_referenced(
    tx: &mut PgConnection,
    user_id: Uuid,
    kind: &str,
    amount: i64,
    reference: &str,
    reason: &str,
    expires: Option<DateTime<Utc>>,
) -> Result<bool> {
    let added: Option<i64> = sqlx::query_scalar(&format!(
        "WITH l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, reference, actor, reason)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (reference) WHERE reference IS NOT NULL DO NOTHING
            RETURNING id, user_id, amount
         ), a AS (
            UPDATE credit_accounts c SET available = c.available + l.amount, updated_at = now()
              FROM l WHERE c.user_id = l.user_id
         ), {lot}
         SELECT amount FROM l",
        lot = lots::new_lot_ctes("added", "l", "$7::timestamptz")
    ))
    .bind(user_id)
    .bind(kind)
    .bind(amount)
    .bind(reference)
    .bind(STRIPE_ACTOR)
    .bind(reason)
    .bind(expires)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(added.is_some())
}

/// Repays what the user owes from the credits just added (referenced by
/// `reference`), noting it in `detail`.
async fn repay_noted(
    tx: &mut PgConnection,
    user_id: Uuid,
    reference: &str,
    detail: &mut String,
) -> Result<()> {
    let repaid = repay_owed(tx, user_id, &format!("{reference}:repay")).await?;
    if repaid > 0 {
        detail.push_str(&format!("; {repaid} owed credits repaid from them"));
    }
    Ok(())
}

/// A refund (cumulative) or a dispute of a payment, parsed by the caller.
#[derive(Debug, Clone)]
pub struct Clawback<'a> {
    pub payment_intent: &'a str,
    /// The charge's amount, in the currency's minor unit (a dispute doesn't
    /// say; the payment's is kept).
    pub amount: Option<i64>,
    pub currency: Option<&'a str>,
    pub kind: ClawbackKind,
    /// The total refunded so far, or the disputed amount.
    pub taken: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClawbackKind {
    Refund,
    Dispute,
}

/// Records a refund or dispute on its payment (known or not yet: a refund
/// may arrive before the session completes) and reverses what it covers of
/// the payment's credits, once.
pub async fn record_clawback(tx: &mut PgConnection, c: &Clawback<'_>) -> Result<Applied> {
    let column = match c.kind {
        ClawbackKind::Refund => "refunded",
        ClawbackKind::Dispute => "disputed",
    };
    let (payment, user_id): (i64, Option<Uuid>) = sqlx::query_as(&format!(
        "INSERT INTO stripe_payments (payment_intent, amount, currency, {column})
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (payment_intent) DO UPDATE
            SET {column} = GREATEST(stripe_payments.{column}, EXCLUDED.{column}),
                amount = COALESCE(EXCLUDED.amount, stripe_payments.amount),
                currency = COALESCE(stripe_payments.currency, EXCLUDED.currency),
                updated_at = now()
         RETURNING id, user_id"
    ))
    .bind(c.payment_intent)
    .bind(c.amount)
    .bind(c.currency)
    .bind(c.taken)
    .fetch_one(&mut *tx)
    .await?;
    let what = match c.kind {
        ClawbackKind::Refund => "refund",
        ClawbackKind::Dispute => "dispute",
    };
    let applied = match settle_reversal(tx, payment).await? {
        Some(r) => Applied::new("reversed", r.describe()),
        None if user_id.is_none() => Applied::new(
            "recorded",
            format!(
                "{what} recorded; payment {} is not credited yet, so it is reversed when it is",
                c.payment_intent
            ),
        ),
        None => Applied::new(
            "recorded",
            format!("{what} recorded; nothing more to reverse"),
        ),
    };
    Ok(applied.user(user_id).object(Some(c.payment_intent)))
}

/// What one reversal took back.
#[derive(Debug, Clone, Copy)]
struct Reversed {
    taken: i64,
    owed: i64,
}

impl Reversed {
    fn describe(self) -> String {
        match (self.taken, self.owed) {
            (t, 0) => format!("{t} credits reversed"),
            (0, o) => format!("{o} credits were already spent: recorded as owed"),
            (t, o) => format!("{t} credits reversed; {o} already spent, recorded as owed"),
        }
    }
}

/// Brings a payment's reversed credits up to what its refunds and disputes
/// cover (their share of the amount paid, all of it when fully taken
/// back): the unspent part from the user's available credits, the rest
/// owed. `None` when there is nothing (more) to reverse, or the payment is
/// not credited yet.
async fn settle_reversal(tx: &mut PgConnection, payment: i64) -> Result<Option<Reversed>> {
    #[derive(FromRow)]
    struct Row {
        payment_intent: Option<String>,
        session_id: Option<String>,
        user_id: Option<Uuid>,
        credits: Option<i64>,
        amount: Option<i64>,
        refunded: i64,
        disputed: i64,
        credits_reversed: i64,
    }
    let p: Row = sqlx::query_as(
        "SELECT payment_intent, session_id, user_id, credits, amount, refunded, disputed,
                credits_reversed FROM stripe_payments WHERE id = $1 FOR UPDATE",
    )
    .bind(payment)
    .fetch_one(&mut *tx)
    .await?;
    let (Some(user_id), Some(credits)) = (p.user_id, p.credits) else {
        return Ok(None);
    };
    let target = reversal_target(credits, p.amount, p.refunded.saturating_add(p.disputed));
    let delta = target - p.credits_reversed;
    if delta <= 0 {
        return Ok(None);
    }
    let available: i64 =
        sqlx::query_scalar("SELECT available FROM credit_accounts WHERE user_id = $1 FOR UPDATE")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
    let taken = delta.min(available.max(0));
    let owed = delta - taken;
    let name = p
        .payment_intent
        .or(p.session_id.clone())
        .unwrap_or_default();
    // One reference per reversal step: a repeat of the same step is refused
    // by the ledger's reference index, whatever the event.
    let entries: Vec<(i64, String)> = sqlx::query_as(
        "WITH l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, reference, actor, reason)
            SELECT $1, k.kind, k.amount, $2 || ':' || k.kind || ':' || $3::bigint, $4, $5
              FROM (VALUES ('reversal', $6::bigint), ('owe', $7::bigint)) AS k (kind, amount)
             WHERE k.amount > 0
            RETURNING id, kind
         ), a AS (
            UPDATE credit_accounts SET available = available - $6, owed = owed + $7, updated_at = now()
             WHERE user_id = $1
         )
         SELECT id, kind FROM l",
    )
    .bind(user_id)
    .bind(&name)
    .bind(target)
    .bind(STRIPE_ACTOR)
    .bind(format!("payment {name} refunded or disputed"))
    .bind(taken)
    .bind(owed)
    .fetch_all(&mut *tx)
    .await?;
    // The unspent credits come from the payment's own lot first.
    if let Some((reversal, _)) = entries.iter().find(|(_, k)| k == "reversal") {
        let own: Option<i64> = sqlx::query_scalar(
            "SELECT l.id FROM credit_lots l JOIN credit_ledger e ON e.id = l.ledger_id
              WHERE e.reference = $1 AND e.kind = 'purchase'",
        )
        .bind(&p.session_id)
        .fetch_optional(&mut *tx)
        .await?;
        lots::take(tx, user_id, taken, *reversal, own).await?;
    }
    sqlx::query(
        "UPDATE stripe_payments SET credits_reversed = $2, updated_at = now() WHERE id = $1",
    )
    .bind(payment)
    .bind(target)
    .execute(&mut *tx)
    .await?;
    Ok(Some(Reversed { taken, owed }))
}

/// The credits a payment's refunds and disputes cover: their share of the
/// amount paid (rounded down), all of them once the whole amount is taken
/// back (or when the amount is unknown and something was).
pub fn reversal_target(credits: i64, amount: Option<i64>, taken: i64) -> i64 {
    match amount {
        _ if taken <= 0 => 0,
        Some(amount) if amount > 0 && taken < amount => {
            (i128::from(credits) * i128::from(taken) / i128::from(amount)) as i64
        }
        _ => credits,
    }
}

/// Pays what `user_id` owes from their available credits, as far as they
/// go; returns what was repaid.
async fn repay_owed(tx: &mut PgConnection, user_id: Uuid, reference: &str) -> Result<i64> {
    let repaid: Option<(i64, i64)> = sqlx::query_as(
        "WITH a AS (
            SELECT user_id, LEAST(owed, available) AS pay FROM credit_accounts
             WHERE user_id = $1 AND owed > 0 AND available > 0
         ), l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, reference, actor, reason)
            SELECT user_id, 'repay', pay, $2, $3, 'owed credits repaid from a purchase' FROM a
            RETURNING id
         ), u AS (
            UPDATE credit_accounts c SET available = c.available - a.pay, owed = c.owed - a.pay,
                   updated_at = now()
              FROM a WHERE c.user_id = a.user_id
         )
         SELECT l.id, a.pay FROM a, l",
    )
    .bind(user_id)
    .bind(reference)
    .bind(STRIPE_ACTOR)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((entry, pay)) = repaid else {
        return Ok(0);
    };
    lots::take(tx, user_id, pay, entry, None).await?;
    Ok(pay)
}

/// An operator pardons what `user_id` owes (all of it, or `amount` at
/// most), with a `waive` entry and an audit row; returns what was waived
/// (0 when nothing was owed).
pub async fn waive_owed(
    pool: &PgPool,
    user_id: Uuid,
    amount: Option<i64>,
    actor: &str,
    reason: &str,
) -> Result<i64> {
    if amount.is_some_and(|a| a <= 0) {
        return Err(StoreError::Conflict("the amount must be positive".into()));
    }
    let waived: Option<i64> = sqlx::query_scalar(
        "WITH a AS (
            SELECT user_id, LEAST(owed, COALESCE($2, owed)) AS amount FROM credit_accounts
             WHERE user_id = $1 AND owed > 0 FOR UPDATE
         ), l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, actor, reason)
            SELECT user_id, 'waive', amount, $3, $4 FROM a RETURNING id
         ), u AS (
            UPDATE credit_accounts c SET owed = c.owed - a.amount, updated_at = now()
              FROM a WHERE c.user_id = a.user_id
         ), au AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT $3, 'credits.waive', a.user_id,
                   jsonb_build_object('amount', a.amount, 'reason', $4::text) FROM a
         )
         SELECT amount FROM a",
    )
    .bind(user_id)
    .bind(amount)
    .bind(actor)
    .bind(reason)
    .fetch_optional(pool)
    .await?;
    Ok(waived.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::reversal_target;

    #[test]
    fn a_reversal_covers_the_share_taken_back() {
        assert_eq!(reversal_target(100, Some(2_000), 0), 0);
        assert_eq!(reversal_target(100, Some(2_000), 500), 25);
        assert_eq!(reversal_target(100, Some(2_000), 1_999), 99);
        assert_eq!(reversal_target(100, Some(2_000), 2_000), 100);
        assert_eq!(reversal_target(100, Some(2_000), 9_000), 100);
        assert_eq!(reversal_target(100, None, 1), 100);
        assert_eq!(reversal_target(i64::MAX, Some(3), 1), i64::MAX / 3);
    }
}
