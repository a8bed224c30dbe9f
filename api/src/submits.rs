//! Group commit of submissions: the `POST /v1/generations` of different
//! users that are ready at the same moment share one statement
//! (`store::submit_batch`), formed as `genq_core::group` forms batches
//! (`api.submit_batch` at most, `api.submit_in_flight` statements at once,
//! a lone submission at once). Each keeps its own answer (202, 402, 409,
//! 429); a user's own submissions go in separate statements, in order.

use std::sync::Arc;

use genq_core::domain::VideoRequest;
use genq_core::group::{GroupCommit, Grouped};
use genq_core::trace::TraceParent;
use genq_store::store::{self, rate, NewSubmission, StoreError, SubmitOutcome};
use sqlx::PgPool;
use uuid::Uuid;

type Answer = Result<SubmitOutcome, StoreError>;

/// Where submissions go; cheap to clone.
#[derive(Clone)]
pub struct Submitter {
    pool: PgPool,
    /// `None`: each alone (`api.submit_batch = 1`, or no runtime to batch on).
    group: Option<GroupCommit<Batches>>,
}

struct Batches {
    pool: PgPool,
}

/// A [`NewSubmission`] that owns its values, to cross into the batcher.
struct Owned {
    job_id: Uuid,
    user_id: Uuid,
    request: VideoRequest,
    cost: i64,
    idempotency_key: Option<String>,
    provider: String,
    allowance: Option<rate::Allowance>,
    trace: Option<TraceParent>,
}

impl Owned {
    fn of(new: &NewSubmission<'_>) -> Self {
        Self {
            job_id: new.job_id,
            user_id: new.user_id,
            request: new.request.clone(),
            cost: new.cost,
            idempotency_key: new.idempotency_key.map(str::to_owned),
            provider: new.provider.to_owned(),
            allowance: new.allowance,
            trace: new.trace.cloned(),
        }
    }

    fn as_new(&self) -> NewSubmission<'_> {
        NewSubmission {
            job_id: self.job_id,
            user_id: self.user_id,
            request: &self.request,
            cost: self.cost,
            idempotency_key: self.idempotency_key.as_deref(),
            provider: &self.provider,
            allowance: self.allowance,
            trace: self.trace.as_ref(),
        }
    }
}

impl Grouped for Batches {
    type Item = Owned;
    type Answer = Answer;
    const NAME: &'static str = "submit";

    /// One submission per user per statement keeps each user's order.
    fn key(item: &Owned) -> Uuid {
        item.user_id
    }

    async fn run(self: Arc<Self>, items: Vec<Owned>) -> Vec<Answer> {
        if let [one] = items.as_slice() {
            return vec![store::submit(&self.pool, &one.as_new()).await];
        }
        let news: Vec<NewSubmission<'_>> = items.iter().map(Owned::as_new).collect();
        store::submit_batch(&self.pool, &news).await
    }
}

impl Submitter {
    /// Batches of at most `max_batch`, `in_flight` statements at once.
    pub fn new(pool: PgPool, max_batch: usize, in_flight: usize) -> Self {
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        let group = (max_batch > 1 && runtime).then(|| {
            GroupCommit::spawn(
                Arc::new(Batches { pool: pool.clone() }),
                max_batch.min(store::jobs::MAX_SUBMIT_BATCH),
                in_flight,
            )
        });
        Self { pool, group }
    }

    /// Submits `new` as `store::submit` does, in a statement shared with
    /// the submissions of other users ready at the same moment.
    pub async fn submit(&self, new: &NewSubmission<'_>) -> Answer {
        match &self.group {
            Some(g) => match g.request(Owned::of(new)).await {
                Ok(answer) => answer,
                // The batcher is gone (the runtime is shutting down).
                Err(_) => store::submit(&self.pool, new).await,
            },
            None => store::submit(&self.pool, new).await,
        }
    }
}
