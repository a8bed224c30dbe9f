//! The sweeper: one worker at a time (a Postgres advisory lock) re-publishes
//! what the outbox still holds, re-drives open jobs whose messages went
//! missing, closes jobs past their deadline or maximum age with a refund,
//! expires credit lots past their time, and reports ledger invariant
//! violations.

use std::time::Duration;

use genq_core::domain::{EventKind, JobStatus};
use genq_core::messages::{PollMessage, StartMessage, POLL_KEY, START_KEY};
use genq_store::ops;
use genq_store::store::jobs::{self, StaleJob};
use genq_store::store::{self, Transition};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::handler::Handler;
use crate::relay;

/// The advisory lock key of the sweeper ("genq" and 1).
pub const SWEEPER_LOCK: i64 = 0x6765_6e71_0001;
/// Jobs handled per category per sweep, to keep each sweep short.
const SWEEP_BATCH: i64 = 500;
/// The ledger is verified every this many sweeps (a full scan).
const VERIFY_EVERY: u64 = 12;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct SweepReport {
    pub republished: usize,
    pub redriven_queued: usize,
    pub redriven_submitting: usize,
    pub redriven_running: usize,
    pub deadline_failed: usize,
    pub expired: usize,
    /// Credit lots past their expiry, emptied with an `expire` entry each.
    pub lots_expired: usize,
    pub violations: Option<usize>,
}

/// Runs one sweep if no other worker is sweeping; `None` when another holds the lock.
pub async fn sweep_once(handler: &Handler, verify: bool) -> anyhow::Result<Option<SweepReport>> {
    let mut lock = handler.pool.acquire().await?;
    if !store::locks::try_lock(&mut lock, SWEEPER_LOCK).await? {
        return Ok(None);
    }
    let report = sweep(handler, verify).await;
    // The lock is the connection's: released here, or when the process dies.
    store::locks::unlock(&mut lock, SWEEPER_LOCK).await?;
    report.map(Some)
}

/// The open jobs in `status` that stalled, claimed for this sweep.
async fn claim_stale(
    handler: &Handler,
    status: JobStatus,
    stale: Duration,
) -> anyhow::Result<Vec<StaleJob>> {
    Ok(jobs::claim_stale(&handler.pool, status, stale, SWEEP_BATCH).await?)
}

/// Sends a stalled job's message again and notes it on the job's timeline.
async fn redrive<T: Serialize>(
    handler: &Handler,
    job_id: Uuid,
    key: &str,
    message: &T,
    note: &str,
) -> anyhow::Result<()> {
    let work = handler.topology.work_exchange();
    handler.publisher.publish_json(&work, key, message).await?;
    store::record_event(&handler.pool, job_id, EventKind::Sweeper, note, None).await?;
    Ok(())
}

async fn sweep(handler: &Handler, verify: bool) -> anyhow::Result<SweepReport> {
    let w = &handler.settings.worker;
    let stale = Duration::from_secs(w.stale_after_secs);
    let mut report = SweepReport {
        republished: relay::relay_once(
            &handler.pool,
            &handler.publisher,
            &handler.topology,
            w.relay_batch,
        )
        .await?,
        ..SweepReport::default()
    };
    for StaleJob { id, .. } in claim_stale(handler, JobStatus::Queued, stale).await? {
        let start = StartMessage::Start {
            job_id: id,
            attempt: 1,
        };
        redrive(
            handler,
            id,
            START_KEY,
            &start,
            "No progress while queued; start message sent again.",
        )
        .await?;
        report.redriven_queued += 1;
    }
    for StaleJob { id, attempts, .. } in claim_stale(handler, JobStatus::Submitting, stale).await? {
        let attempt = (attempts.max(0) as u32 + 1).min(w.max_attempts);
        let start = StartMessage::Start {
            job_id: id,
            attempt,
        };
        redrive(
            handler,
            id,
            START_KEY,
            &start,
            "No progress while submitting; start message sent again.",
        )
        .await?;
        report.redriven_submitting += 1;
    }
    for StaleJob {
        id, poll_seq: seq, ..
    } in claim_stale(handler, JobStatus::Running, stale).await?
    {
        let poll = PollMessage::Poll {
            job_id: id,
            seq,
            errors: 0,
        };
        redrive(
            handler,
            id,
            POLL_KEY,
            &poll,
            "No poll for too long; poll message sent again.",
        )
        .await?;
        report.redriven_running += 1;
    }

    // Running past the deadline (and the poll chain missed it): fail, refund.
    let overdue = jobs::overdue_running(&handler.pool, stale, SWEEP_BATCH).await?;
    for (id, task, provider) in overdue {
        let mut t = Transition::new(
            id,
            &[JobStatus::Running],
            JobStatus::Failed,
            "Failed: past the deadline (closed by the sweeper); credits refunded.",
        );
        t.error = Some((
            "deadline_exceeded",
            "The provider did not finish the video in time; the credits were refunded.".into(),
        ));
        if store::transition(&handler.pool, &t).await?.is_some() {
            report.deadline_failed += 1;
            let provider = handler.providers.for_job(provider.as_deref());
            if let (Some(task), Some(provider)) = (task, provider) {
                handler.best_effort_cancel(provider, &task).await;
            }
        }
    }

    // The hard bound: no reservation outlives the maximum job age.
    let max_age = Duration::from_secs(w.max_job_age_secs);
    let expired = jobs::open_older_than(&handler.pool, max_age, SWEEP_BATCH).await?;
    for id in expired {
        let from = JobStatus::OPEN;
        let mut t = Transition::new(
            id,
            &from,
            JobStatus::Dead,
            "Dead: unfinished past the maximum job age; credits refunded.",
        );
        t.error = Some((
            "expired",
            "The job did not finish within the maximum job age; the credits were refunded.".into(),
        ));
        if store::transition(&handler.pool, &t).await?.is_some() {
            report.expired += 1;
        }
    }

    for lot in store::lots::expire_due(&handler.pool, SWEEP_BATCH).await? {
        tracing::info!(user_id = %lot.user_id, lot = lot.lot_id, amount = lot.amount, "credits expired");
        metrics::counter!("genq_credits_expired_total").increment(lot.amount as u64);
        report.lots_expired += 1;
    }

    let g = ops::health_gauges(&handler.pool).await?;
    metrics::gauge!("genq_outbox_backlog").set(g.outbox_backlog as f64);
    metrics::gauge!("genq_outbox_oldest_seconds").set(g.outbox_oldest_secs.unwrap_or(0) as f64);
    metrics::gauge!("genq_dead_letters_open").set(g.dead_letters_open as f64);
    metrics::gauge!("genq_jobs_waiting").set(g.jobs_waiting as f64);
    metrics::gauge!("genq_jobs_past_deadline").set(g.jobs_past_deadline as f64);

    if verify {
        let violations = ops::verify_and_record(&handler.pool, "worker").await?;
        metrics::gauge!("genq_ledger_violations").set(violations.len() as f64);
        metrics::gauge!("genq_ledger_verified_timestamp_seconds")
            .set(chrono::Utc::now().timestamp() as f64);
        for v in violations.iter().take(20) {
            tracing::error!(rule = %v.rule, user_id = ?v.user_id, job_id = ?v.job_id, detail = %v.detail, "ledger invariant violated");
        }
        report.violations = Some(violations.len());
    }
    let acted = report.redriven_queued
        + report.redriven_submitting
        + report.redriven_running
        + report.deadline_failed
        + report.expired;
    if acted > 0 {
        tracing::warn!(?report, "sweeper acted on stuck jobs");
        metrics::counter!("genq_sweeper_actions_total").increment(acted as u64);
        handler.events_bell.ring();
    }
    Ok(report)
}

/// Sweeps every interval until `stop`.
pub async fn run(handler: Handler, interval: Duration, stop: CancellationToken) {
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        n += 1;
        if let Err(e) = sweep_once(&handler, n % VERIFY_EVERY == 1).await {
            tracing::warn!(error = %format!("{e:#}"), "sweep failed");
        }
    }
}
