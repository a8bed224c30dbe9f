//! The API's group committer: submissions that arrive together are queued
//! here and committed together by [`store::group::submit_group`], a few
//! groups at a time. No timer holds a submission back: a group is whatever
//! has queued while the previous one was in the database, so a lone
//! request goes through at once and a busy API commits many per flush.

use std::sync::Arc;
use std::time::Duration;

use genq_shared::config::{ApiSettings, RateLimitStore};
use genq_shared::domain::VideoRequest;
use genq_shared::store::group::{self, GroupOutcome, RateAllowance};
use genq_shared::store::{Job, NewSubmission};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// One submission, owned, as the handler parsed it.
pub struct Submission {
    pub job_id: Uuid,
    pub user_id: Uuid,
    pub request: VideoRequest,
    pub cost: i64,
    pub provider: String,
}

impl Submission {
    pub fn as_new(&self) -> NewSubmission<'_> {
        NewSubmission {
            job_id: self.job_id,
            user_id: self.user_id,
            request: &self.request,
            cost: self.cost,
            idempotency_key: None,
            provider: &self.provider,
        }
    }
}

struct Pending {
    submission: Submission,
    reply: oneshot::Sender<Grouped>,
}

/// What became of a submission sent to the group committer.
pub enum Grouped {
    /// Reserved, queued and committed.
    Accepted(Job),
    /// The user's allowance was spent; try again after this long.
    RateLimited(Duration),
    /// Not decided in a group: submit it alone (with its own job ID).
    /// `rate_taken`: the group already took its rate allowance.
    Alone {
        submission: Submission,
        rate_taken: bool,
    },
}

/// The handle the handlers share; the committing tasks end when the last
/// handle is dropped, after the group in hand.
#[derive(Clone)]
pub struct Submitter {
    queue: mpsc::Sender<Pending>,
}

/// Waiting submissions, bounded: past it a handler waits for room.
const QUEUE: usize = 4096;

impl Submitter {
    /// Starts `api.submit_groups` committing tasks on the current runtime.
    pub fn start(pool: PgPool, settings: &ApiSettings) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let rate = (settings.rate_limit == RateLimitStore::Postgres).then_some(RateAllowance {
            per_minute: settings.submit_per_minute,
            burst: settings.submit_burst,
        });
        for _ in 0..settings.submit_groups.max(1) {
            tokio::spawn(commit_groups(
                pool.clone(),
                rx.clone(),
                settings.submit_group_max.max(1),
                rate,
            ));
        }
        Self { queue }
    }

    /// Commits `submission` with whichever others are waiting; `Alone`
    /// also when the committing tasks are gone (shutting down). `None` only
    /// if a committing task panicked with the submission in hand: its
    /// group's outcome is unknown (the job ID, if it was committed, stays
    /// taken, so a retry can't make a second job).
    pub async fn submit(&self, submission: Submission) -> Option<Grouped> {
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.queue.send(Pending { submission, reply }).await {
            return Some(Grouped::Alone {
                submission: refused.0.submission,
                rate_taken: false,
            });
        }
        answer.await.ok()
    }
}

/// One committing task: takes what is waiting (up to `max`), commits it as
/// one group, answers each, and again.
async fn commit_groups(
    pool: PgPool,
    rx: Arc<Mutex<mpsc::Receiver<Pending>>>,
    max: usize,
    rate: Option<RateAllowance>,
) {
    let mut waiting = Vec::with_capacity(max);
    loop {
        // One task gathers at a time; the others are in the database.
        if rx.lock().await.recv_many(&mut waiting, max).await == 0 {
            return;
        }
        let group: Vec<NewSubmission<'_>> = waiting.iter().map(|p| p.submission.as_new()).collect();
        metrics::histogram!("genq_submit_group_size").record(group.len() as f64);
        let outcomes = match group::submit_group(&pool, &group, rate).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // Nothing of the group was kept; each submits alone with its own answer.
                tracing::warn!(error = %e, size = group.len(), "a submission group failed; each submits alone");
                group
                    .iter()
                    .map(|_| GroupOutcome::Alone { rate_taken: false })
                    .collect()
            }
        };
        drop(group);
        for (pending, outcome) in waiting.drain(..).zip(outcomes) {
            let grouped = match outcome {
                GroupOutcome::Accepted(job) => Grouped::Accepted(job),
                GroupOutcome::RateLimited(wait) => Grouped::RateLimited(wait),
                GroupOutcome::Alone { rate_taken } => Grouped::Alone {
                    submission: pending.submission,
                    rate_taken,
                },
            };
            // The caller may have gone (a closed connection); the job stands.
            let _ = pending.reply.send(grouped);
        }
    }
}
