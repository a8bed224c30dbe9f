//! Group commit of submissions: many concurrent submissions (each with its
//! rate allowance) in one transaction, so that they share one commit, one
//! connection and one WAL flush instead of two of each per submission.
//!
//! A group decides only what a lone submission would decide the same way:
//! an accepted job (or a refused rate allowance) is final once the group
//! commits. Anything else (the account can't pay, so a `rejected` job must
//! be recorded under the account lock; an idempotency key; an error that
//! aborted the transaction) is answered [`GroupOutcome::Alone`], and the
//! caller runs that submission on its own through [`super::submit`], with
//! the same job ID, so nothing is decided twice.

use std::time::Duration;

use sqlx::types::Json;
use sqlx::{Connection, PgPool};

use super::jobs::{try_accept, Job, NewSubmission};
use super::{rate, Result};

/// The per-user allowance a group takes from, as `api.submit_per_minute`
/// and `api.submit_burst` set it (when kept in Postgres).
#[derive(Debug, Clone, Copy)]
pub struct RateAllowance {
    pub per_minute: u32,
    pub burst: u32,
}

/// What the group decided for one submission.
#[derive(Debug)]
pub enum GroupOutcome {
    /// Reserved and queued; durable once `submit_group` returns.
    Accepted(Job),
    /// The user's allowance was spent; try again after this long.
    RateLimited(Duration),
    /// Not decided here: submit it alone. `rate_taken` says whether the
    /// group already took (and committed) its rate allowance.
    Alone { rate_taken: bool },
}

/// Runs `group` in one transaction and commits it. The submissions run in
/// the order of their users (a stable sort, so one user's keep their order):
/// every group then locks rate rows and accounts in one global order, and
/// two groups can't deadlock. Submissions with an idempotency key are left
/// [`GroupOutcome::Alone`]: their lookup and unique-key race belong to the
/// lone path. An error rolls everything back and is returned; the caller
/// then submits each alone.
pub async fn submit_group(
    pool: &PgPool,
    group: &[NewSubmission<'_>],
    rate: Option<RateAllowance>,
) -> Result<Vec<GroupOutcome>> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|&i| group[i].user_id);
    let mut outcomes: Vec<GroupOutcome> = (0..group.len())
        .map(|_| GroupOutcome::Alone { rate_taken: false })
        .collect();
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    for i in order {
        let new = &group[i];
        if new.idempotency_key.is_some() {
            continue;
        }
        debug_assert!(new.cost >= 0, "a negative cost: {}", new.cost);
        if let Some(r) = rate {
            if let Err(wait) =
                rate::take_submission(&mut *tx, new.user_id, r.per_minute, r.burst).await?
            {
                outcomes[i] = GroupOutcome::RateLimited(wait);
                continue;
            }
        }
        let params = Json(new.request.params());
        let fingerprint = new.request.fingerprint();
        outcomes[i] = match try_accept(&mut *tx, new, &params, &fingerprint).await? {
            Some(job) => GroupOutcome::Accepted(job),
            None => GroupOutcome::Alone {
                rate_taken: rate.is_some(),
            },
        };
    }
    tx.commit().await?;
    Ok(outcomes)
}
