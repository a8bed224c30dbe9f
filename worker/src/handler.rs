//! One step of the pipeline: handles one start or poll message against the
//! job row, calls the provider, moves the job (and its credits) with one
//! conditional update, and publishes the follow-up message with a confirm.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use genq_broker::{tier_at_least, tier_at_most, Publisher, Topology};
use genq_core::config::Settings;
use genq_core::domain::{EventKind, JobStatus};
use genq_core::messages::{PollMessage, StartMessage, POLL_KEY};
use genq_providers::provider::{
    self, ConfiguredProvider, ProviderError, Providers, TaskRequest, TaskStatus,
};
use genq_providers::storage::VideoStore;
use genq_store::store::outbox::Doorbell;
use genq_store::store::{self, Job, Transition};
use rand::Rng;
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::step::{InfraError, Step, WorkQueue};

/// The provider call a step makes, and the status its job is in meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProviderCall {
    /// Creating the task, from the start queue (the job is `submitting`).
    Submit,
    /// Asking about it, from the poll queue (the job is `running`).
    Poll,
}

impl ProviderCall {
    fn status(self) -> JobStatus {
        match self {
            Self::Submit => JobStatus::Submitting,
            Self::Poll => JobStatus::Running,
        }
    }

    fn queue(self) -> WorkQueue {
        match self {
            Self::Submit => WorkQueue::Start,
            Self::Poll => WorkQueue::Poll,
        }
    }
}

/// Everything one step needs; cheap to clone into each delivery's task.
#[derive(Clone)]
pub struct Handler {
    pub pool: PgPool,
    pub publisher: Publisher,
    pub topology: Arc<Topology>,
    /// The default provider and each configured model, by name.
    pub providers: Arc<Providers>,
    pub settings: Arc<Settings>,
    pub videos: VideoStore,
    /// Wakes the APIs' live event feeds once a step's events are committed.
    pub events_bell: Doorbell,
    /// The outbound client of webhook deliveries.
    pub webhooks: crate::webhooks::WebhookSender,
    /// Where the steps' moves go, to share statements with each other's.
    pub settler: crate::settle::Settler,
}

/// Exponential backoff with full jitter: a random delay up to
/// `base * 2^(attempt-1)`, capped.
pub fn full_jitter(base_ms: u64, cap_ms: u64, attempt: u32) -> Duration {
    let ceiling = base_ms
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(20))
        .min(cap_ms);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

/// The delay before poll number `seq` of a task still working: doubling from
/// the initial interval up to the cap.
pub fn poll_delay(initial_ms: u64, cap_ms: u64, seq: i32) -> Duration {
    let ms = initial_ms
        .saturating_mul(1u64 << (seq.clamp(0, 20) as u32))
        .min(cap_ms);
    Duration::from_millis(ms)
}

impl Handler {
    /// Handles one delivery's body. Returns `Ok` when the delivery may be
    /// acked: its effects are committed and follow-ups confirmed, or it was
    /// dead-lettered, or it was a duplicate.
    pub async fn handle(&self, queue: WorkQueue, body: &[u8]) -> Step {
        let step = self.step(queue, body).await;
        // Coalesced: a burst of steps costs one NOTIFY.
        self.events_bell.ring();
        step
    }

    async fn step(&self, queue: WorkQueue, body: &[u8]) -> Step {
        match queue {
            WorkQueue::Start => match serde_json::from_slice::<StartMessage>(body) {
                Ok(StartMessage::Start { job_id, attempt }) => self.start(job_id, attempt).await,
                Ok(StartMessage::Granted { job_id, attempt }) => {
                    self.granted(job_id, attempt).await
                }
                Err(e) => self.malformed(queue, body, &e.to_string()).await,
            },
            WorkQueue::Poll => match serde_json::from_slice::<PollMessage>(body) {
                Ok(PollMessage::Poll {
                    job_id,
                    seq,
                    errors,
                }) => self.poll(job_id, seq, errors).await,
                Ok(PollMessage::Cancel { job_id }) => {
                    match store::get_job(&self.pool, job_id).await? {
                        Some(job) => self.cancel_at_provider(&job).await,
                        None => Ok(()),
                    }
                }
                Err(e) => self.malformed(queue, body, &e.to_string()).await,
            },
            WorkQueue::Webhook => self.webhooks.handle(body).await,
        }
    }

    pub(crate) async fn malformed(&self, queue: WorkQueue, body: &[u8], why: &str) -> Step {
        crate::step::malformed(&self.publisher, &self.topology, queue, body, why).await
    }

    /// Publishes `body` to the dead-letter exchange with the reason in headers.
    pub async fn dead_letter(
        &self,
        queue: WorkQueue,
        body: &[u8],
        job_id: Option<Uuid>,
        reason: &str,
    ) -> Step {
        crate::step::dead_letter(&self.publisher, &self.topology, queue, body, job_id, reason).await
    }

    /// Publishes `message` to the work exchange at once.
    pub(crate) async fn publish_now<T: serde::Serialize>(&self, key: &str, message: &T) -> Step {
        self.publisher
            .publish_json(&self.topology.work_exchange(), key, message)
            .await?;
        Ok(())
    }

    /// Publishes `message` to come back on the work exchange after `delay`
    /// (rounded to a wait tier), keeping its routing key.
    pub(crate) async fn publish_delayed<T: serde::Serialize>(
        &self,
        key: &str,
        message: &T,
        tier_ms: u64,
    ) -> Step {
        self.publisher
            .publish_json(&self.topology.delay_exchange(tier_ms), key, message)
            .await?;
        Ok(())
    }

    async fn load(
        &self,
        queue: WorkQueue,
        job_id: Uuid,
        body: &[u8],
    ) -> Result<Option<Job>, InfraError> {
        match store::get_job(&self.pool, job_id).await? {
            Some(job) => Ok(Some(job)),
            None => {
                self.dead_letter(queue, body, Some(job_id), "no such job")
                    .await?;
                Ok(None)
            }
        }
    }

    /// start: claim the job (through the gate when it may have to wait),
    /// then submit it to the provider (the job ID is the idempotency key),
    /// record the task ID, mark the job running and schedule its first poll.
    #[tracing::instrument(skip(self), fields(user_id))]
    pub async fn start(&self, job_id: Uuid, attempt: u32) -> Step {
        let body =
            serde_json::to_vec(&StartMessage::Start { job_id, attempt }).expect("serializes");
        let from = [JobStatus::Queued, JobStatus::Submitting];
        let mut claim = Transition::new(
            job_id,
            &from,
            JobStatus::Submitting,
            format!("Submitting to the provider (attempt {attempt})."),
        );
        claim.count_attempt = true;
        let claimed = if self.providers.rules().any() {
            let Some(job) = self.load(WorkQueue::Start, job_id, &body).await? else {
                return Ok(());
            };
            self.claim_loaded(&job, &claim).await?
        } else {
            // Nothing is capped: unless the user has a limit of their own,
            // the claim is the step's first statement and reads the job as
            // it moves it (a round trip less).
            claim.unless_user_limited = true;
            match self.settler.apply(&claim).await? {
                Some((job, _)) => {
                    let provider = self.providers.for_job(job.provider.as_deref()).cloned();
                    Some((job, provider))
                }
                // Past submission (a duplicate message), no such job, or a
                // user with a limit of their own.
                None => match self.load(WorkQueue::Start, job_id, &body).await? {
                    Some(job) => {
                        claim.unless_user_limited = false;
                        self.claim_loaded(&job, &claim).await?
                    }
                    None => None,
                },
            }
        };
        let Some((job, provider)) = claimed else {
            return Ok(());
        };
        self.submit_claimed(job, provider, attempt).await
    }

    /// The claim of a loaded job: through the gate when its provider is
    /// known; `None` when it is not to be submitted now.
    async fn claim_loaded(
        &self,
        job: &Job,
        claim: &Transition<'_>,
    ) -> Result<Option<(Job, Option<ConfiguredProvider>)>, InfraError> {
        if !claim.from.contains(&job.status) {
            tracing::debug!(status = %job.status, "start message for a job past submission; dropped");
            if job.status == JobStatus::Running && job.poll_seq == 0 {
                // Running and never polled: the step that moved it may have
                // crashed before its first poll was on its way (a redelivered
                // start message). Poll again; of two polls of one sequence
                // number only the first advances the job, the other is dropped.
                if let Some(provider) = self.providers.for_job(job.provider.as_deref()) {
                    crate::step::note_job(job);
                    self.first_poll(job.clone(), provider).await?;
                }
            }
            return Ok(None);
        }
        Ok(
            match self.providers.for_job(job.provider.as_deref()).cloned() {
                Some(provider) => self
                    .claim_through_gate(job, &provider, claim)
                    .await?
                    .map(|job| (job, Some(provider))),
                // Claimed so the attempt counts (see `submit_claimed`).
                None => self.settler.apply(claim).await?.map(|(job, _)| (job, None)),
            },
        )
    }

    /// granted: the dispatcher claimed the job for `attempt` when a slot
    /// freed; submit it unless it moved on since (a duplicate, a cancel).
    #[tracing::instrument(skip(self), fields(user_id))]
    pub async fn granted(&self, job_id: Uuid, attempt: u32) -> Step {
        let body =
            serde_json::to_vec(&StartMessage::Granted { job_id, attempt }).expect("serializes");
        let Some(job) = self.load(WorkQueue::Start, job_id, &body).await? else {
            return Ok(());
        };
        if job.status != JobStatus::Submitting || job.attempts != attempt as i32 {
            tracing::debug!(status = %job.status, attempts = job.attempts, "granted message for a job that moved on; dropped");
            return Ok(());
        }
        let provider = self.providers.for_job(job.provider.as_deref()).cloned();
        self.submit_claimed(job, provider, attempt).await
    }

    /// Submits a job claimed for `attempt` (it is `submitting`).
    async fn submit_claimed(
        &self,
        job: Job,
        provider: Option<ConfiguredProvider>,
        attempt: u32,
    ) -> Step {
        let job_id = job.id;
        let next = StartMessage::Start {
            job_id,
            attempt: attempt + 1,
        };
        crate::step::note_job(&job);
        let Some(provider) = provider else {
            // Claimed so the attempt counts: retried slowly, then dead,
            // refunded and dead-lettered (replayable once configured).
            return self
                .unknown_provider(WorkQueue::Start, &job, attempt, &next)
                .await;
        };
        let request = TaskRequest {
            idempotency_key: provider::idempotency_key(job_id, job.reservation),
            prompt: job.prompt.clone(),
            duration_seconds: job.params.duration_seconds,
            aspect_ratio: job.params.aspect_ratio.as_str().to_owned(),
            cancel_after: Some(self.settings.job_timeout()),
            callback_url: provider.callback_url(job_id),
        };
        let started = std::time::Instant::now();
        let submitted = provider.adapter.submit(&request).await;
        record_provider_call("submit", started, &submitted);
        match submitted {
            Ok(task_id) => {
                let mut running = Transition::new(
                    job_id,
                    &[JobStatus::Submitting],
                    JobStatus::Running,
                    format!("The provider accepted the task {task_id}."),
                );
                running.provider_task_id = Some(&task_id);
                running.deadline_in = Some(self.settings.job_timeout());
                if let Some((job, _)) = self.settler.apply(&running).await? {
                    return self.first_poll(job, &provider).await;
                }
                // Someone else moved the job: another worker (a duplicate
                // message) or the user's cancel, whose task we must stop.
                let now = store::get_job(&self.pool, job_id).await?;
                if now
                    .as_ref()
                    .is_some_and(|j| j.status == JobStatus::Canceled)
                {
                    self.best_effort_cancel(&provider, &task_id).await;
                }
                Ok(())
            }
            Err(e) => {
                self.provider_error(ProviderCall::Submit, &job, attempt, e, &next)
                    .await
            }
        }
    }

    /// Schedules the first poll of a job that just became `running` (or
    /// makes it now, in this step, when it is due at once).
    async fn first_poll(&self, job: Job, provider: &ConfiguredProvider) -> Step {
        let first = if job.callback_at.is_some() {
            // The provider called back before its answer to the submit
            // was recorded: ask it now.
            Duration::ZERO
        } else {
            provider.first_poll.unwrap_or_else(|| {
                let w = &self.settings.worker;
                poll_delay(w.poll_initial_ms, w.poll_max_ms, 0)
            })
        };
        // Asked at once: this step polls, saving a trip through a wait
        // queue and the poll queue.
        if first.is_zero() {
            return self.poll_job(job, 0, 0).await;
        }
        let poll = PollMessage::Poll {
            job_id: job.id,
            seq: 0,
            errors: 0,
        };
        self.publish_delayed(POLL_KEY, &poll, tier_at_most(first))
            .await
    }

    /// poll: ask the provider about the task; reschedule, commit or refund.
    #[tracing::instrument(skip(self), fields(user_id))]
    pub async fn poll(&self, job_id: Uuid, seq: i32, errors: u32) -> Step {
        let body = serde_json::to_vec(&PollMessage::Poll {
            job_id,
            seq,
            errors,
        })
        .expect("serializes");
        let Some(job) = self.load(WorkQueue::Poll, job_id, &body).await? else {
            return Ok(());
        };
        crate::step::note_job(&job);
        self.poll_job(job, seq, errors).await
    }

    /// poll, for a job already loaded (or just returned by the start step's
    /// update).
    async fn poll_job(&self, job: Job, seq: i32, errors: u32) -> Step {
        let job_id = job.id;
        match job.status {
            JobStatus::Running => {}
            JobStatus::Canceled
                if genq_core::bugs::on(genq_core::bugs::Switch::RefundAfterCancel) =>
            {
                let canceled = [JobStatus::Canceled];
                return self
                    .finish_failed(job_id, &canceled, "provider_canceled", "canceled")
                    .await;
            }
            JobStatus::Canceled => return self.cancel_at_provider(&job).await,
            _ => return Ok(()),
        }
        if job.poll_seq != seq {
            tracing::debug!(current = job.poll_seq, seq, "stale poll message; dropped");
            return Ok(());
        }
        let Some(task_id) = job.provider_task_id.clone() else {
            return self
                .finish_failed(
                    job_id,
                    &[JobStatus::Running],
                    "internal",
                    "running without a provider task",
                )
                .await;
        };
        let Some(provider) = self.providers.for_job(job.provider.as_deref()).cloned() else {
            let next = PollMessage::Poll {
                job_id,
                seq,
                errors: errors + 1,
            };
            return self
                .unknown_provider(WorkQueue::Poll, &job, errors + 1, &next)
                .await;
        };
        if job.deadline_at.is_some_and(|d| d <= Utc::now()) {
            self.best_effort_cancel(&provider, &task_id).await;
            metrics::counter!("genq_deadline_exceeded_total").increment(1);
            return self
                .finish_failed(job_id, &[JobStatus::Running], "deadline_exceeded",
                    "The provider did not finish the video in time; it was canceled and the credits refunded.")
                .await;
        }
        let started = std::time::Instant::now();
        let status = provider.adapter.status(&task_id).await;
        record_provider_call("status", started, &status);
        match status {
            Ok(
                working @ (TaskStatus::Pending
                | TaskStatus::Queued { .. }
                | TaskStatus::Throttled
                | TaskStatus::Running
                | TaskStatus::Unknown { .. }),
            ) => {
                let (key, message) = working.describe().unwrap_or_default();
                let state = store::jobs::ProviderState {
                    key: &key,
                    message: &message,
                };
                let store::Advanced::Advanced { called_back } =
                    store::advance_poll(&self.pool, job_id, seq, &state, job.callback_at).await?
                else {
                    return Ok(());
                };
                let next = PollMessage::Poll {
                    job_id,
                    seq: seq + 1,
                    errors: 0,
                };
                if called_back {
                    // The provider called back while it was being asked:
                    // its news may be newer than this answer.
                    return self.publish_now(POLL_KEY, &next).await;
                }
                let delay = match provider.callbacks {
                    // The provider will say when it is done: a slow safety net.
                    Some(_) => Duration::from_millis(self.settings.provider.poll_with_callbacks_ms),
                    None => poll_delay(
                        self.settings.worker.poll_initial_ms,
                        self.settings.worker.poll_max_ms,
                        seq + 1,
                    ),
                };
                self.publish_delayed(POLL_KEY, &next, tier_at_most(delay))
                    .await
            }
            Ok(TaskStatus::Succeeded { video_url }) => {
                self.archive_and_finish(&job, &video_url, errors).await
            }
            Ok(TaskStatus::Failed { code, reason }) => {
                // content_rejected, provider_failed, provider_aborted or
                // provider_canceled: all refunded.
                self.finish_failed(job_id, &[JobStatus::Running], code.error_code(), &reason)
                    .await
            }
            Err(e) => {
                let next = PollMessage::Poll {
                    job_id,
                    seq,
                    errors: errors + 1,
                };
                self.provider_error(ProviderCall::Poll, &job, errors + 1, e, &next)
                    .await
            }
        }
    }

    /// A provider error on `queue`'s call for `job`: a permanent one fails
    /// the job at once (refund); a transient one is retried with `next`, or
    /// past the limit kills the job.
    pub(crate) async fn provider_error<T: serde::Serialize>(
        &self,
        call: ProviderCall,
        job: &Job,
        attempt: u32,
        error: ProviderError,
        next: &T,
    ) -> Step {
        let queue = call.queue();
        match error {
            ProviderError::Permanent { code, message } if code == provider::CONTENT_REJECTED => {
                let from = call.status();
                self.finish_failed(job.id, &[from], provider::CONTENT_REJECTED, &message)
                    .await
            }
            ProviderError::Permanent { code, message } => {
                let from = call.status();
                self.finish_failed(
                    job.id,
                    &[from],
                    "provider_rejected",
                    &format!("{code}: {message}"),
                )
                .await
            }
            ProviderError::Transient {
                message,
                retry_after,
            } => {
                self.retry_or_die(queue, job, attempt, &message, retry_after, next)
                    .await
            }
        }
    }

    /// Cancels the provider task of a canceled job, once.
    pub async fn cancel_at_provider(&self, job: &Job) -> Step {
        let job_id = job.id;
        if job.status != JobStatus::Canceled {
            return Ok(());
        }
        if let Some(task_id) = &job.provider_task_id {
            let Some(provider) = self.providers.for_job(job.provider.as_deref()) else {
                tracing::warn!(provider = ?job.provider, "no such provider configured; its task is not canceled");
                return Ok(());
            };
            if store::mark_provider_canceled(&self.pool, job_id).await? {
                self.best_effort_cancel(provider, task_id).await;
                store::record_event(
                    &self.pool,
                    job_id,
                    EventKind::Provider,
                    "Canceled at the provider.",
                    None,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Asks the provider to stop a task; a failure only costs provider time.
    pub(crate) async fn best_effort_cancel(&self, provider: &ConfiguredProvider, task_id: &str) {
        let started = std::time::Instant::now();
        let r = provider.adapter.cancel(task_id).await;
        record_provider_call("cancel", started, &r);
        if let Err(e) = r {
            tracing::warn!(task_id, error = %e, "provider cancel failed");
        }
    }

    pub(crate) async fn finish_failed(
        &self,
        job_id: Uuid,
        from: &[JobStatus],
        code: &str,
        reason: &str,
    ) -> Step {
        let mut t = Transition::new(
            job_id,
            from,
            JobStatus::Failed,
            format!("Failed: {reason}; credits refunded."),
        );
        t.error = Some((code, reason.to_owned()));
        if self.settler.apply(&t).await?.is_some() {
            tracing::info!(code, reason, "job failed");
        }
        Ok(())
    }

    /// After a transient error: retry later (backoff with full jitter, never
    /// sooner than `Retry-After`), or past the limit mark the job dead,
    /// refund it and dead-letter the message with the reason.
    pub(crate) async fn retry_or_die<T: serde::Serialize>(
        &self,
        queue: WorkQueue,
        job: &Job,
        attempt: u32,
        error: &str,
        retry_after: Option<Duration>,
        next: &T,
    ) -> Step {
        let w = &self.settings.worker;
        if attempt >= w.max_attempts {
            let reason = format!("gave up after {attempt} attempts; last error: {error}");
            let mut t = Transition::new(
                job.id,
                &[JobStatus::Submitting, JobStatus::Running],
                JobStatus::Dead,
                format!("Dead: {reason}; credits refunded."),
            );
            t.error = Some(("retries_exhausted", reason.clone()));
            if self.settler.apply(&t).await?.is_some() {
                tracing::warn!(reason, "job dead");
                let body = serde_json::to_vec(next).expect("serializes");
                self.dead_letter(queue, &body, Some(job.id), &reason)
                    .await?;
            }
            return Ok(());
        }
        let jittered = full_jitter(w.retry_base_ms, w.retry_max_ms, attempt);
        let tier = match retry_after {
            Some(after) => tier_at_least(after.max(jittered)),
            None => tier_at_most(jittered),
        };
        metrics::counter!("genq_retries_total", "queue" => queue.routing_key()).increment(1);
        store::record_event(
            &self.pool,
            job.id,
            EventKind::Retry,
            &format!(
                "Transient provider error (attempt {attempt}): {error}; retrying in {tier} ms."
            ),
            Some(serde_json::json!({"attempt": attempt, "delay_ms": tier})),
        )
        .await?;
        self.publish_delayed(queue.routing_key(), next, tier).await
    }
}

fn record_provider_call<T>(
    call: &'static str,
    started: std::time::Instant,
    result: &Result<T, ProviderError>,
) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    metrics::histogram!("genq_provider_call_seconds", "call" => call)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("genq_provider_calls_total", "call" => call, "outcome" => outcome)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_capped_ceiling() {
        for attempt in 1..40 {
            let d = full_jitter(1_000, 60_000, attempt);
            let ceiling = (1_000u64 << (attempt - 1).min(20)).min(60_000);
            assert!(d.as_millis() as u64 <= ceiling);
        }
    }

    #[test]
    fn poll_delay_doubles_up_to_the_cap() {
        assert_eq!(poll_delay(1_000, 30_000, 0), Duration::from_secs(1));
        assert_eq!(poll_delay(1_000, 30_000, 2), Duration::from_secs(4));
        assert_eq!(poll_delay(1_000, 30_000, 50), Duration::from_secs(30));
    }
}
