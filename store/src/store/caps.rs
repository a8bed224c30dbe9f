//! A provider's caps, enforced across every worker from Postgres: at most
//! `max_concurrent` of its jobs submitting or running, at most
//! `max_per_minute` submissions in any 60 s. The check and the claim run in
//! one transaction under the provider's advisory lock, so two workers never
//! both take the last slot.

use genq_core::domain::{EventKind, JobStatus};
use std::time::Duration;

use sqlx::PgPool;

use super::jobs::Job;
use super::transition::{transition, Transition};
use super::Result;

/// The window of `max_per_minute`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// First key of the two-key advisory locks of provider caps (the second is
/// the hash of the provider's name); the two-key space never meets the
/// sweeper's one-key lock.
const CAP_LOCK_CLASS: i32 = 0x6765_6e71; // "genq"

/// A provider's limits; 0 means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub max_concurrent: u32,
    pub max_per_minute: u32,
}

impl Caps {
    pub fn any(self) -> bool {
        self.max_concurrent > 0 || self.max_per_minute > 0
    }
}

/// Which cap held a job back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Concurrency,
    Rate,
}

impl Cap {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Rate => "rate",
        }
    }
}

#[derive(Debug)]
pub enum CapClaim {
    /// Within the caps: the claim was applied (the job as it is now).
    Claimed(Box<Job>),
    /// The job was no longer in a status the claim expects.
    Moved,
    /// Over `cap`'s `limit`: nothing claimed; a slot is expected in about `retry_in`.
    Over {
        cap: Cap,
        limit: u32,
        retry_in: Duration,
    },
}

/// The timeline's sentence for a job held back by `cap`.
pub fn waiting_message(cap: Cap, limit: u32) -> String {
    match cap {
        Cap::Concurrency => {
            format!("Waiting: the provider's limit of {limit} concurrent videos is reached.")
        }
        Cap::Rate => {
            format!("Waiting: the provider's limit of {limit} submissions per minute is reached.")
        }
    }
}

/// Applies `claim` (the job's move to `submitting`) only if `provider` is
/// under its caps, counting the job's own slot once. Over a cap, nothing is
/// claimed and no attempt is counted; the job is touched (so the sweeper
/// does not take it for stalled) and its timeline says it is waiting, once
/// (not again while that is its last event).
pub async fn claim_within_caps(
    pool: &PgPool,
    claim: &Transition<'_>,
    provider: &str,
    caps: Caps,
) -> Result<CapClaim> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(CAP_LOCK_CLASS)
        .bind(provider)
        .execute(&mut *tx)
        .await?;
    let mut over = None;
    if caps.max_concurrent > 0 {
        let others: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM jobs
              WHERE provider = $1 AND status IN {at_provider} AND id <> $2",
            at_provider = JobStatus::sql_list(&JobStatus::AT_PROVIDER)
        ))
        .bind(provider)
        .bind(claim.job_id)
        .fetch_one(&mut *tx)
        .await?;
        if others >= i64::from(caps.max_concurrent) {
            over = Some((Cap::Concurrency, caps.max_concurrent, Duration::ZERO));
        }
    }
    if over.is_none() && caps.max_per_minute > 0 {
        let window = RATE_WINDOW.as_secs_f64();
        sqlx::query(
            "DELETE FROM provider_claims WHERE provider = $1 AND at < now() - make_interval(secs => $2)",
        )
        .bind(provider)
        .bind(window)
        .execute(&mut *tx)
        .await?;
        let (recent, frees_in): (i64, f64) = sqlx::query_as(
            "SELECT count(*),
                    COALESCE(EXTRACT(EPOCH FROM min(at) + make_interval(secs => $2) - now()), 0)::float8
               FROM provider_claims WHERE provider = $1 AND at >= now() - make_interval(secs => $2)",
        )
        .bind(provider)
        .bind(window)
        .fetch_one(&mut *tx)
        .await?;
        if recent >= i64::from(caps.max_per_minute) {
            let retry_in = Duration::from_secs_f64(frees_in.clamp(0.0, window));
            over = Some((Cap::Rate, caps.max_per_minute, retry_in));
        }
    }
    if let Some((cap, limit, retry_in)) = over {
        let message = waiting_message(cap, limit);
        let from: Vec<&str> = claim.from.iter().map(|s| s.as_str()).collect();
        sqlx::query(&format!(
            "WITH j AS (
                UPDATE jobs SET updated_at = now() WHERE id = $1 AND status = ANY($2) RETURNING id
            )
            INSERT INTO job_events (job_id, kind, message, data)
            SELECT id, '{waiting}', $3, jsonb_build_object('cap', $4::text, 'limit', $5::bigint)
              FROM j
             WHERE (SELECT message FROM job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1)
                   IS DISTINCT FROM $3",
            waiting = EventKind::Waiting
        ))
        .bind(claim.job_id)
        .bind(&from)
        .bind(&message)
        .bind(cap.as_str())
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(CapClaim::Over {
            cap,
            limit,
            retry_in,
        });
    }
    let Some((job, _)) = transition(&mut *tx, claim).await? else {
        tx.rollback().await?;
        return Ok(CapClaim::Moved);
    };
    if caps.max_per_minute > 0 {
        sqlx::query("INSERT INTO provider_claims (provider, job_id) VALUES ($1, $2)")
            .bind(provider)
            .bind(claim.job_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(CapClaim::Claimed(Box::new(job)))
}
