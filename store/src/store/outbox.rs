//! The outbox: every query of the `outbox` table (written with the job's
//! change, claimed and marked by the relay, consulted by the sweeper), and
//! the doorbell that wakes the relays after a commit.

use std::sync::{Arc, OnceLock};

use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};
use tokio_util::sync::CancellationToken;

use super::named::Named;
use super::Result;
use genq_core::messages::WorkMessage;

/// The Postgres channel the relays listen on for new outbox rows.
pub const OUTBOX_CHANNEL: &str = "genq_outbox";

/// How long published rows are kept, for diagnosis, before they are deleted.
const KEEP_PUBLISHED: &str = "1 hour";

/// The outbox step of a statement, as one CTE: a row for each job returned
/// by `job_cte`, with the placeholders `key` and `payload`.
pub(crate) fn insert_cte(job_cte: &str, key: &str, payload: &str) -> String {
    format!(
        "outbox_row AS (
            INSERT INTO outbox (job_id, routing_key, payload)
            SELECT id, {key}, {payload} FROM {job_cte}
        )"
    )
}

/// A condition on `jobs` that holds while the job has a message waiting in
/// the outbox (the sweeper leaves such jobs to the relay).
pub(crate) const JOB_HAS_UNPUBLISHED: &str =
    "EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = jobs.id AND o.published_at IS NULL)";

/// Writes a work message to the outbox, in the caller's transaction or on
/// its own; the caller rings the relays' doorbell after the commit.
pub async fn enqueue<'e>(executor: impl PgExecutor<'e>, message: &WorkMessage) -> Result<()> {
    sqlx::query("INSERT INTO outbox (job_id, routing_key, payload) VALUES ($1, $2, $3)")
        .bind(message.job_id())
        .bind(message.routing_key())
        .bind(message.to_json())
        .execute(executor)
        .await?;
    Ok(())
}

/// An unpublished outbox row, as the relay publishes it.
#[derive(Debug, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub routing_key: String,
    pub payload: serde_json::Value,
    /// The trace context of the row's job (for a webhook delivery's wake-up,
    /// of the delivery's job; see `jobs.traceparent`), sent as headers.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Locks up to `limit` unpublished rows in `tx`, oldest first. `SKIP LOCKED`
/// lets concurrent relays take different rows; a row published but not
/// marked (a crash in between) is published again later, which consumers
/// treat as a duplicate.
pub async fn claim_batch(tx: &mut PgConnection, limit: i64) -> Result<Vec<OutboxRow>> {
    Ok(claim_statement()
        .query()
        .bind("batch", limit)
        .done_as()
        .fetch_all(tx)
        .await?)
}

pub(crate) fn claim_statement() -> &'static Named {
    static SQL: OnceLock<Named> = OnceLock::new();
    SQL.get_or_init(|| {
        Named::new(
            "SELECT o.id, o.routing_key, o.payload, j.traceparent, j.tracestate
               FROM outbox o
               LEFT JOIN jobs j ON j.id = COALESCE(o.job_id,
                    (SELECT d.job_id FROM webhook_deliveries d
                      WHERE o.payload ->> 'type' = 'deliver'
                        AND d.id = (o.payload ->> 'delivery_id')::bigint))
              WHERE o.published_at IS NULL ORDER BY o.id LIMIT :batch
                FOR UPDATE OF o SKIP LOCKED",
            &["batch"],
        )
    })
}

/// Marks rows published; called after the broker confirmed them.
pub async fn mark_published(tx: &mut PgConnection, ids: &[i64]) -> Result<()> {
    mark_statement()
        .query()
        .bind("ids", ids)
        .done()
        .execute(tx)
        .await?;
    Ok(())
}

pub(crate) fn mark_statement() -> &'static Named {
    static SQL: OnceLock<Named> = OnceLock::new();
    SQL.get_or_init(|| {
        Named::new(
            "UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)",
            &["ids"],
        )
    })
}

/// Deletes rows published longer ago than they are kept for diagnosis.
pub async fn delete_old_published(pool: &PgPool) -> Result<u64> {
    let r = sqlx::query(&format!(
        "DELETE FROM outbox WHERE published_at < now() - interval '{KEEP_PUBLISHED}'"
    ))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Wakes the outbox relays (`NOTIFY`). Sent in its own transaction, after
/// the commit: a NOTIFY inside the submit transaction would hold Postgres'
/// global notify lock across the commit's WAL flush and serialize every
/// submission (about 300/s here).
pub async fn wake_relays(pool: &PgPool) -> Result<()> {
    notify(pool, OUTBOX_CHANNEL).await
}

async fn notify(pool: &PgPool, channel: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(pool)
        .await?;
    Ok(())
}

/// A doorbell for one channel: rung after each committed write; one task
/// turns rings into NOTIFYs, and rings during a NOTIFY fold into the next
/// one, so a burst of writes costs few NOTIFYs. A lost ring costs only the
/// listener's safety-net interval.
#[derive(Clone)]
pub struct Doorbell {
    bell: Arc<tokio::sync::Notify>,
    channel: &'static str,
}

impl Doorbell {
    /// Wakes the outbox relays (new outbox rows).
    pub fn outbox() -> Self {
        Self::new(OUTBOX_CHANNEL)
    }

    /// Wakes the API's event feeds (new job events).
    pub fn job_events() -> Self {
        Self::new(super::events::JOB_EVENTS_CHANNEL)
    }

    fn new(channel: &'static str) -> Self {
        Self {
            bell: Arc::default(),
            channel,
        }
    }

    pub fn ring(&self) {
        self.bell.notify_one();
    }

    /// Sends a NOTIFY per ring (coalesced) until `stop`.
    pub async fn run(self, pool: PgPool, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.bell.notified() => {}
            }
            if let Err(e) = notify(&pool, self.channel).await {
                tracing::debug!(error = %e, channel = self.channel, "NOTIFY failed; the listener's timer will catch up");
            }
        }
    }
}
