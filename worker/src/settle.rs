//! Group commit of job moves: the claims, running transitions and
//! settlements that concurrent deliveries have ready at the same moment go
//! to Postgres as one statement (`store::transition_batch`).
//!
//! No move waits for a batch to fill: a batch leaves as soon as one of the
//! `worker.settle_in_flight` statement slots is free, with whatever is
//! ready then (up to `worker.settle_batch`). Moves pile up only while every
//! slot is busy, so a lone job goes at once and a busy worker makes fewer,
//! larger statements. A batch that fails as a whole (a deadlock, a lost
//! connection) is tried again one move at a time, so one bad row never
//! fails its neighbours.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use genq_core::domain::JobStatus;
use genq_store::store::{self, Job, Note, Transition};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::step::InfraError;

type Answer = Result<Option<(Job, JobStatus)>, store::StoreError>;

/// Moves waiting for a statement slot, at most; a full queue makes the
/// steps wait (back-pressure), it drops nothing.
const QUEUE: usize = 4096;

/// The handle steps send their moves through; cheap to clone.
#[derive(Clone)]
pub struct Settler {
    pool: PgPool,
    /// `None`: batching is off (`worker.settle_batch = 1`).
    queue: Option<mpsc::Sender<Request>>,
    /// Statements the batcher has run (read by tests).
    statements: Arc<AtomicU64>,
}

struct Request {
    move_: OwnedTransition,
    answer: oneshot::Sender<Answer>,
}

impl Settler {
    /// Starts the batcher (a task that ends when every handle is dropped):
    /// batches of at most `max_batch` moves, `in_flight` statements at once.
    pub fn spawn(pool: PgPool, max_batch: usize, in_flight: usize) -> Self {
        let statements = Arc::<AtomicU64>::default();
        if max_batch <= 1 {
            return Self {
                pool,
                queue: None,
                statements,
            };
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(
            pool.clone(),
            rx,
            max_batch.min(store::transition::MAX_BATCH),
            in_flight.max(1),
            statements.clone(),
        ));
        Self {
            pool,
            queue: Some(tx),
            statements,
        }
    }

    /// The statements the batcher has run so far.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Applies `t` as `store::transition` does, sharing a statement with
    /// the moves other steps have ready (a refund always goes alone).
    pub async fn apply(&self, t: &Transition<'_>) -> Result<Option<(Job, JobStatus)>, InfraError> {
        let queue = match &self.queue {
            Some(q) if store::transition::batchable(t) => q,
            _ => return Ok(store::transition(&self.pool, t).await?),
        };
        let (answer, answered) = oneshot::channel();
        let request = Request {
            move_: OwnedTransition::of(t),
            answer,
        };
        if queue.send(request).await.is_err() {
            // The batcher is gone (the runtime is shutting down).
            return Ok(store::transition(&self.pool, t).await?);
        }
        match answered.await {
            Ok(a) => Ok(a?),
            Err(_) => Err(InfraError(anyhow::anyhow!(
                "the settle batcher stopped before answering"
            ))),
        }
    }
}

async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Request>,
    max: usize,
    in_flight: usize,
    statements: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    // Moves of a job already in the batch being formed: they go in the
    // next one (a statement moves each job once).
    let mut held: VecDeque<Request> = VecDeque::new();
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let first = match held.pop_front() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut jobs = HashSet::from([first.move_.job_id]);
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        while batch.len() < max {
            let next = match held.pop_front() {
                Some(r) => r,
                None => match rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            if jobs.insert(next.move_.job_id) {
                batch.push(next);
            } else {
                later.push_back(next);
            }
        }
        later.append(&mut held);
        held = later;
        let (pool, statements) = (pool.clone(), statements.clone());
        tokio::spawn(async move {
            execute(&pool, batch, &statements).await;
            drop(slot);
        });
    }
}

/// Runs one batch and answers each of its moves.
async fn execute(pool: &PgPool, batch: Vec<Request>, statements: &AtomicU64) {
    metrics::histogram!("genq_settle_batch_size").record(batch.len() as f64);
    if batch.len() > 1 {
        statements.fetch_add(1, Ordering::Relaxed);
        let moves: Vec<Transition<'_>> = batch.iter().map(|r| r.move_.as_transition()).collect();
        let result = store::transition_batch(pool, &moves).await;
        drop(moves);
        match result {
            Ok(answers) => {
                for (r, a) in batch.into_iter().zip(answers) {
                    // A step that stopped waiting (its task aborted) is gone.
                    let _ = r.answer.send(Ok(a));
                }
                return;
            }
            Err(e) => {
                metrics::counter!("genq_settle_batch_failures_total").increment(1);
                tracing::warn!(error = %e, moves = batch.len(), "a settle batch failed; trying its moves one at a time");
            }
        }
    }
    for r in batch {
        statements.fetch_add(1, Ordering::Relaxed);
        let a = store::transition(pool, &r.move_.as_transition()).await;
        let _ = r.answer.send(a);
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
