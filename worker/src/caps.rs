//! A provider's caps at the moment a job is claimed for submission. Over a
//! cap the job is not claimed, no attempt is counted and the provider is
//! not called: its start message (same attempt number) goes to a wait tier
//! and the delivery is acked, so a waiting job holds no delivery. Also: a
//! job naming a provider this worker does not know.

use std::time::Duration;

use genq_broker::tier_at_most;
use genq_core::messages::{StartMessage, START_KEY};
use genq_providers::provider::ConfiguredProvider;
use genq_store::store::caps::{self, Cap, CapClaim};
use genq_store::store::{self, Job, Transition};

use crate::handler::{Handler, InfraError, Step, WorkQueue};

/// How soon a job held back by a concurrency cap looks again: a slot frees
/// whenever some task of the provider ends, which no one announces.
pub const CONCURRENCY_WAIT_TIER_MS: u64 = 1_000;

/// The slowest retry of a job whose provider this worker does not know:
/// with `worker.max_attempts` tries, minutes for a deploy to finish rolling
/// out before the job is dead-lettered (refunded, replayable).
const UNKNOWN_PROVIDER_RETRY: Duration = Duration::from_secs(60);

impl Handler {
    /// Applies `claim` (queued or submitting → submitting, one attempt more)
    /// when `provider` is under its caps: the claimed job, or `None` when
    /// the job is not to be submitted now (someone else moved it, or it
    /// waits at a cap, its start message on the way back).
    pub(crate) async fn claim(
        &self,
        provider: &ConfiguredProvider,
        claim: &Transition<'_>,
        attempt: u32,
    ) -> Result<Option<Job>, InfraError> {
        if !provider.caps.any() {
            return Ok(store::transition(&self.pool, claim)
                .await?
                .map(|(job, _)| job));
        }
        let outcome =
            caps::claim_within_caps(&self.pool, claim, &provider.name, provider.caps).await?;
        let (cap, limit, retry_in) = match outcome {
            CapClaim::Claimed(job) => return Ok(Some(*job)),
            CapClaim::Moved => return Ok(None),
            CapClaim::Over {
                cap,
                limit,
                retry_in,
            } => (cap, limit, retry_in),
        };
        metrics::counter!("genq_provider_cap_waits_total",
            "provider" => provider.name.clone(), "cap" => cap.as_str())
        .increment(1);
        let tier = match cap {
            Cap::Concurrency => CONCURRENCY_WAIT_TIER_MS,
            // Never past the moment the window frees; looked at again sooner
            // (each look waits at most what is left) when that is far.
            Cap::Rate => tier_at_most(retry_in.max(Duration::from_secs(1))),
        };
        tracing::debug!(provider = %provider.name, cap = cap.as_str(), limit, tier, "over the provider's cap; waiting");
        let again = StartMessage::Start {
            job_id: claim.job_id,
            attempt,
        };
        self.publish_delayed(START_KEY, &again, tier).await?;
        Ok(None)
    }

    /// A job whose provider is not configured on this worker: during a
    /// deploy another worker (or this one, restarted) may know it, so it is
    /// retried like a provider outage, slowly; past `worker.max_attempts`
    /// the job is dead, refunded and dead-lettered for an operator.
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
