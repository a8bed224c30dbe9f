//! Canceling a job, by its user or an operator: the status change with its
//! refund at once, and a cancel at the provider through the outbox when the
//! provider may be working on it.

use sqlx::PgPool;
use uuid::Uuid;

use super::jobs::{get_job, Job};
use super::outbox;
use super::transition::{transition, Transition};
use super::{Result, StoreError};
use genq_core::domain::JobStatus;
use genq_core::messages::WorkMessage;

#[derive(Debug)]
pub enum CancelOutcome {
    /// Canceled and refunded; `at_provider` when a provider task may exist,
    /// whose cancel went to the outbox (ring the doorbell).
    Canceled {
        job: Job,
        at_provider: bool,
    },
    /// The job is already in a state that can't be canceled.
    NotCancelable(Job),
    NotFound,
}

/// Cancels the caller's `queued`, `submitting` or `running` job and refunds
/// it at once. When the provider may be working on it, a cancel message goes
/// to the outbox for a worker; the next poll of the job cancels it too.
pub async fn cancel_job(
    pool: &PgPool,
    user_id: Uuid,
    job_id: Uuid,
    actor: &str,
) -> Result<CancelOutcome> {
    let Some(job) = get_job(pool, job_id).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.user_id != user_id {
        return Ok(CancelOutcome::NotFound);
    }
    let from = JobStatus::OPEN;
    // The user reads their timeline: an operator is not named there (the
    // audit log keeps who it was).
    let by = if actor.starts_with("admin:") {
        "an operator".to_owned()
    } else {
        actor.to_owned()
    };
    let mut t = Transition::new(
        job_id,
        &from,
        JobStatus::Canceled,
        format!("Canceled by {by}; credits refunded."),
    );
    t.error = Some(("canceled", "The job was canceled.".into()));
    match transition(pool, &t).await? {
        Some((job, was)) => {
            // A slot freed; the workers' dispatchers live in other processes.
            if was.is_at_provider() {
                if let Err(e) = super::gate::wake_dispatchers(pool).await {
                    tracing::debug!(error = %e, "could not wake the dispatchers; their timers will");
                }
            }
            let at_provider = job.provider_task_id.is_some() || job.attempts > 0;
            if at_provider {
                let cancel = WorkMessage::Poll(genq_core::messages::PollMessage::Cancel { job_id });
                if let Err(e) = outbox::enqueue(pool, &cancel).await {
                    // Best effort: the job's next poll cancels at the provider too.
                    tracing::warn!(error = %e, %job_id, "could not enqueue the provider cancel");
                }
            }
            Ok(CancelOutcome::Canceled { job, at_provider })
        }
        None => {
            let job = get_job(pool, job_id).await?.ok_or(StoreError::NotFound)?;
            Ok(CancelOutcome::NotCancelable(job))
        }
    }
}
