//! The worker's side of the gate: a start message for a job that may have
//! to wait (its provider capped, its user limited) goes through the gate,
//! which claims it or parks it in its line (the delivery is acked: a
//! waiting job holds no delivery and spends no attempt); the dispatcher
//! grants freed slots. Also: a job naming a provider this worker does not
//! know.

use std::time::Duration;

use genq_core::domain::JobStatus;
use genq_providers::provider::ConfiguredProvider;
use genq_store::store::gate::{self, Arrival, Dispatched};
use genq_store::store::outbox;
use genq_store::store::{Job, Transition};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::handler::{Handler, InfraError, Step, WorkQueue};

/// The dispatcher looks at the lines at least this often, woken or not: a
/// slot freed where no one rang (a crashed process) is found within it.
pub const DISPATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The slowest retry of a job whose provider this worker does not know:
/// with `worker.max_attempts` tries, minutes for a deploy to finish rolling
/// out before the job is dead-lettered (refunded, replayable).
const UNKNOWN_PROVIDER_RETRY: Duration = Duration::from_secs(60);

impl Handler {
    /// Applies `claim` (queued or submitting → submitting, one attempt more)
    /// to `job` through the gate: the claimed job, or `None` when it is not
    /// to be submitted now (someone else moved it, or it waits in its line).
    pub(crate) async fn claim_through_gate(
        &self,
        job: &Job,
        provider: &ConfiguredProvider,
        claim: &Transition<'_>,
    ) -> Result<Option<Job>, InfraError> {
        // A submitting job holds its slot already (a retry, a redelivery).
        if job.status == JobStatus::Submitting {
            return Ok(self.settler.apply(claim).await?.map(|(job, _)| job));
        }
        if job.waiting {
            // In its line already (a redelivered start message): the
            // dispatcher will grant it.
            gate::slot_freed();
            return Ok(None);
        }
        let rules = self.providers.rules();
        match gate::arrive(&self.pool, claim, job, &provider.name, rules).await? {
            Arrival::Claimed(job) => Ok(Some(*job)),
            Arrival::Moved => Ok(None),
            Arrival::Waiting { reason, room } => {
                metrics::counter!("genq_gate_waits_total",
                    "provider" => provider.name.clone(), "reason" => reason.as_str())
                .increment(1);
                tracing::debug!(provider = %provider.name, reason = reason.as_str(), "waiting in line");
                if room {
                    gate::slot_freed();
                }
                Ok(None)
            }
        }
    }

    /// A job naming a provider this worker does not know: during a deploy
    /// another worker (or this one, restarted) may know it, so it is retried
    /// like a provider outage, slowly; past `worker.max_attempts` the job is
    /// dead, refunded and dead-lettered for an operator.
    pub(crate) async fn unknown_provider<T: serde::Serialize>(
        &self,
        queue: WorkQueue,
        job: &Job,
        attempt: u32,
        next: &T,
    ) -> Step {
        let name = job.provider.as_deref().unwrap_or_default();
        tracing::warn!(provider = name, job_id = %job.id, "a job names a provider this worker does not have");
        metrics::counter!("genq_unknown_provider_total").increment(1);
        let error = format!("no provider named {name:?} is configured on this worker");
        self.retry_or_die(
            queue,
            job,
            attempt,
            &error,
            Some(UNKNOWN_PROVIDER_RETRY),
            next,
        )
        .await
    }
}

/// One dispatch: grants the free slots to the lines in turn and wakes the
/// relays for their messages.
pub async fn dispatch_once(handler: &Handler) -> anyhow::Result<Dispatched> {
    let dispatched = gate::dispatch(&handler.pool, handler.providers.rules()).await?;
    if !dispatched.granted.is_empty() {
        metrics::counter!("genq_gate_grants_total").increment(dispatched.granted.len() as u64);
        tracing::debug!(granted = dispatched.granted.len(), "slots granted");
        outbox::wake_relays(&handler.pool).await?;
        handler.events_bell.ring();
    }
    Ok(dispatched)
}

/// Runs the dispatcher until `stop`: after a slot frees in this process, on
/// a NOTIFY from another (a cancel, a new limit), when a rate cap's window
/// frees, and every [`DISPATCH_INTERVAL`]. Its work depends on the number
/// of lines, not of waiting jobs.
pub async fn run(handler: Handler, stop: CancellationToken) {
    let bell = gate::register_dispatcher();
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none() {
            match PgListener::connect_with(&handler.pool).await {
                Ok(mut l) => {
                    if l.listen(gate::GATE_CHANNEL).await.is_ok() {
                        listener = Some(l);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the dispatcher can't listen; its timer will do")
                }
            }
        }
        let wait = match dispatch_once(&handler).await {
            Ok(d) => d.next_in.map_or(DISPATCH_INTERVAL, |n| {
                n.clamp(Duration::from_millis(10), DISPATCH_INTERVAL)
            }),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "dispatch failed");
                DISPATCH_INTERVAL
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = bell.notified() => {}
            n = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(drop),
                    None => std::future::pending().await,
                }
            } => {
                if n.is_err() {
                    listener = None;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
