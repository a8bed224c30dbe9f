//! What every consumer's step shares: the queues a delivery comes from, the
//! outcome of a step (ack, or hand back on an infrastructure failure), and
//! dead-lettering a message with its reason.

use genq_broker::{dead_letters, Publisher, Topology};
use genq_core::messages::{POLL_KEY, START_KEY, WEBHOOK_KEY};
use genq_store::store;
use uuid::Uuid;

/// Which work queue a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    Start,
    Poll,
    Webhook,
}

impl WorkQueue {
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Start => START_KEY,
            Self::Poll => POLL_KEY,
            Self::Webhook => WEBHOOK_KEY,
        }
    }
}

/// A failure of our own infrastructure (database, broker), not of the job:
/// the message is handed back to be tried again later.
#[derive(Debug, thiserror::Error)]
#[error("infrastructure error: {0:#}")]
pub struct InfraError(#[from] pub anyhow::Error);

impl From<sqlx::Error> for InfraError {
    fn from(e: sqlx::Error) -> Self {
        Self(e.into())
    }
}

impl From<store::StoreError> for InfraError {
    fn from(e: store::StoreError) -> Self {
        Self(e.into())
    }
}

pub type Step = Result<(), InfraError>;

/// Names the job on the current span: `user_id` for log lines, and the
/// `genq.*` attributes of its trace span.
pub fn note_job(job: &genq_store::store::Job) {
    let span = tracing::Span::current();
    span.record("user_id", tracing::field::display(job.user_id));
    genq_core::trace::job_attributes(&span, job.id, job.user_id, job.provider.as_deref());
}

/// Publishes `body` to the dead-letter exchange with the reason in headers.
pub async fn dead_letter(
    publisher: &Publisher,
    topology: &Topology,
    queue: WorkQueue,
    body: &[u8],
    job_id: Option<Uuid>,
    reason: &str,
) -> Step {
    let mut headers = dead_letters::headers(reason, queue.routing_key(), job_id);
    // Requeued later, the message goes on in its job's trace.
    for (name, value) in genq_broker::current_trace_headers().inner() {
        headers.insert(name.clone(), value.clone());
    }
    publisher
        .publish(
            &topology.dead_letter_exchange(),
            queue.routing_key(),
            body,
            headers,
        )
        .await?;
    metrics::counter!("genq_dead_letters_total", "queue" => queue.routing_key()).increment(1);
    Ok(())
}

/// Dead-letters a message that does not parse, saying why.
pub async fn malformed(
    publisher: &Publisher,
    topology: &Topology,
    queue: WorkQueue,
    body: &[u8],
    why: &str,
) -> Step {
    tracing::warn!(?queue, error = why, "malformed message dead-lettered");
    metrics::counter!("genq_malformed_messages_total").increment(1);
    dead_letter(
        publisher,
        topology,
        queue,
        body,
        None,
        &format!("malformed message: {why}"),
    )
    .await
}
