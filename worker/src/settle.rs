//! Group commit of job moves: the claims, running transitions and
//! settlements that concurrent deliveries have ready at the same moment go
//! to Postgres as one statement (`store::transition_batch`), formed as
//! `genq_core::group` forms batches (`worker.settle_batch` moves at most,
//! `worker.settle_in_flight` statements at once, a lone move at once). A
//! batch that fails as a whole (a deadlock, a lost connection) is tried
//! again one move at a time, so one bad row never fails its neighbours.

use std::sync::Arc;
use std::time::Duration;

use genq_core::domain::JobStatus;
use genq_core::group::{GroupCommit, Grouped};
use genq_store::store::{self, Job, Note, Transition};
use sqlx::PgPool;
use uuid::Uuid;

use crate::step::InfraError;

type Answer = Result<Option<(Job, JobStatus)>, store::StoreError>;

/// The handle steps send their moves through; cheap to clone.
#[derive(Clone)]
pub struct Settler {
    pool: PgPool,
    /// `None`: batching is off (`worker.settle_batch = 1`).
    group: Option<GroupCommit<Batches>>,
}

/// Runs the batches.
struct Batches {
    pool: PgPool,
}

impl Grouped for Batches {
    type Item = OwnedTransition;
    type Answer = Answer;
    const NAME: &'static str = "settle";

    /// A statement moves each job once.
    fn key(item: &OwnedTransition) -> Uuid {
        item.job_id
    }

    async fn run(self: Arc<Self>, items: Vec<OwnedTransition>) -> Vec<Answer> {
        let pool = &self.pool;
        if items.len() > 1 {
            let moves: Vec<Transition<'_>> = items.iter().map(|m| m.as_transition()).collect();
            match store::transition_batch(pool, &moves).await {
                Ok(answers) => return answers.into_iter().map(Ok).collect(),
                Err(e) => {
                    metrics::counter!("genq_settle_batch_failures_total").increment(1);
                    tracing::warn!(error = %e, moves = items.len(), "a settle batch failed; trying its moves one at a time");
                }
            }
        }
        let mut answers = Vec::with_capacity(items.len());
        for m in &items {
            answers.push(store::transition(pool, &m.as_transition()).await);
        }
        answers
    }
}

impl Settler {
    /// Starts the batcher: batches of at most `max_batch` moves,
    /// `in_flight` statements at once.
    pub fn spawn(pool: PgPool, max_batch: usize, in_flight: usize) -> Self {
        let group = (max_batch > 1).then(|| {
            GroupCommit::spawn(
                Arc::new(Batches { pool: pool.clone() }),
                max_batch.min(store::transition::MAX_BATCH),
                in_flight,
            )
        });
        Self { pool, group }
    }

    /// The statements the batcher has run so far (each batch is one, or
    /// one per move when it failed as a whole).
    pub fn statements(&self) -> u64 {
        self.group.as_ref().map_or(0, GroupCommit::batches)
    }

    /// Applies `t` as `store::transition` does, sharing a statement with
    /// the moves other steps have ready (a refund always goes alone).
    pub async fn apply(&self, t: &Transition<'_>) -> Result<Option<(Job, JobStatus)>, InfraError> {
        let group = match &self.group {
            Some(g) if store::transition::batchable(t) => g,
            _ => return Ok(store::transition(&self.pool, t).await?),
        };
        match group.request(OwnedTransition::of(t)).await {
            Ok(answer) => Ok(answer?),
            // The batcher is gone (the runtime is shutting down).
            Err(_) => Ok(store::transition(&self.pool, t).await?),
        }
    }
}

/// A [`Transition`] that owns its values, to cross into the batcher.
struct OwnedTransition {
    job_id: Uuid,
    from: Vec<JobStatus>,
    to: JobStatus,
    message: String,
    data: Option<serde_json::Value>,
    error: Option<(String, String)>,
    provider_result_url: Option<String>,
    video: Option<(String, i64)>,
    provider_task_id: Option<String>,
    deadline_in: Option<Duration>,
    count_attempt: bool,
    unless_user_limited: bool,
    note: Option<Note>,
}

impl OwnedTransition {
    fn of(t: &Transition<'_>) -> Self {
        Self {
            job_id: t.job_id,
            from: t.from.to_vec(),
            to: t.to,
            message: t.message.clone(),
            data: t.data.clone(),
            error: t.error.as_ref().map(|(c, m)| ((*c).to_owned(), m.clone())),
            provider_result_url: t.provider_result_url.map(str::to_owned),
            video: t.video.map(|(k, b)| (k.to_owned(), b)),
            provider_task_id: t.provider_task_id.map(str::to_owned),
            deadline_in: t.deadline_in,
            count_attempt: t.count_attempt,
            unless_user_limited: t.unless_user_limited,
            note: t.note.clone(),
        }
    }

    fn as_transition(&self) -> Transition<'_> {
        Transition {
            job_id: self.job_id,
            from: &self.from,
            to: self.to,
            message: self.message.clone(),
            data: self.data.clone(),
            error: self.error.as_ref().map(|(c, m)| (c.as_str(), m.clone())),
            provider_result_url: self.provider_result_url.as_deref(),
            video: self.video.as_ref().map(|(k, b)| (k.as_str(), *b)),
            provider_task_id: self.provider_task_id.as_deref(),
            deadline_in: self.deadline_in,
            count_attempt: self.count_attempt,
            unless_user_limited: self.unless_user_limited,
            note: self.note.clone(),
        }
    }
}
