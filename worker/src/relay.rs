//! The outbox relay: publishes unpublished outbox rows with publisher
//! confirms and marks them published only after the confirm. Woken by
//! `NOTIFY` on each new row; a timer is only the safety net.

use std::time::Duration;

use genq_shared::queue::{check_confirm, Publisher};
use genq_shared::store::OUTBOX_CHANNEL;
use lapin::types::FieldTable;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

/// How long published rows are kept, for diagnosis, before they are deleted.
const KEEP_PUBLISHED: &str = "1 hour";

/// Publishes one batch of up to `batch` rows; returns how many were published.
/// Rows are locked with `SKIP LOCKED`, so concurrent relays take different
/// rows; a row published but not marked (a crash in between) is published
/// again later, which consumers treat as a duplicate.
pub async fn relay_once(pool: &PgPool, publisher: &Publisher, batch: i64) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT id, exchange, routing_key, payload FROM outbox
          WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Send the whole batch, then await the confirms: one round trip's wait.
    let mut pending = Vec::with_capacity(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    for row in &rows {
        let payload: serde_json::Value = row.get("payload");
        let body = serde_json::to_vec(&payload)?;
        let exchange: String = row.get("exchange");
        let key: String = row.get("routing_key");
        pending.push(
            publisher
                .start(&exchange, &key, &body, FieldTable::default())
                .await?,
        );
        ids.push(row.get::<i64, _>("id"));
    }
    for confirm in pending {
        check_confirm(confirm.await?)?;
    }
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    metrics::counter!("genq_outbox_published_total").increment(ids.len() as u64);
    Ok(ids.len())
}

/// Runs the relay until `shutdown`: drains the outbox, then sleeps until a
/// notification or the safety-net interval. Database errors (a restart, a
/// lost connection) are waited out with backoff, never fatal: only a broker
/// failure ends the relay, since its channel is then gone.
pub async fn run(
    pool: PgPool,
    publisher: Publisher,
    batch: i64,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener: Option<PgListener> = None;
    let mut failures = 0u32;
    let mut ticks = 0u64;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if !publisher.channel().status().connected() {
            anyhow::bail!("the relay's broker channel is closed");
        }
        match drain(&pool, &publisher, batch, &mut listener, &shutdown).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                listener = None;
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                    .min(Duration::from_secs(5));
                tracing::warn!(error = %format!("{e:#}"), ?delay, "outbox relay failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        }
        ticks += 1;
        if ticks.is_multiple_of(600) {
            let cleaned = sqlx::query(&format!(
                "DELETE FROM outbox WHERE published_at < now() - interval '{KEEP_PUBLISHED}'"
            ))
            .execute(&pool)
            .await;
            if let Err(e) = cleaned {
                tracing::warn!(error = %e, "cleaning the outbox failed");
            }
        }
        let Some(l) = listener.as_mut() else { continue };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = l.recv() => {
                if n.is_err() {
                    listener = None;
                }
            }
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// (Re)subscribes if needed, then publishes until the outbox has no full batch left.
async fn drain(
    pool: &PgPool,
    publisher: &Publisher,
    batch: i64,
    listener: &mut Option<PgListener>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if listener.is_none() {
        let mut l = PgListener::connect_with(pool).await?;
        l.listen(OUTBOX_CHANNEL).await?;
        *listener = Some(l);
    }
    while relay_once(pool, publisher, batch).await? as i64 == batch {
        if shutdown.is_cancelled() {
            break;
        }
    }
    Ok(())
}
