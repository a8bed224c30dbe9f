//! The outbox relay: publishes unpublished outbox rows to the work exchange
//! with publisher confirms and marks them published only after the
//! confirms. Woken by `NOTIFY` on each new row; a timer is only the safety net.

use std::time::Duration;

use genq_broker::{check_confirm, Publisher, Topology};
use genq_core::trace::TraceParent;
use genq_store::store::events::JOB_EVENTS_CHANNEL;
use genq_store::store::outbox::{self, OUTBOX_CHANNEL};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Publishes one batch of up to `batch` rows; returns how many were published.
/// Rows are taken with `SKIP LOCKED`, so concurrent relays take different
/// rows; a row published but not marked (a crash in between) is published
/// again later, which consumers treat as a duplicate.
pub async fn relay_once(
    pool: &PgPool,
    publisher: &Publisher,
    topology: &Topology,
    batch: i64,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = outbox::claim_batch(&mut tx, batch).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Send the whole batch, then await the confirms: one round trip's wait.
    let exchange = topology.work_exchange();
    let mut pending = Vec::with_capacity(rows.len());
    for row in &rows {
        let body = serde_json::to_vec(&row.payload)?;
        // The job's trace (kept with it since the submission): the publish
        // is a span of it, and the message carries that span's context.
        let trace = row
            .traceparent
            .as_deref()
            .and_then(|tp| TraceParent::parse(tp, row.tracestate.as_deref()));
        let span = trace.as_ref().map(|t| {
            let span = genq_broker::trace::producer_span(&exchange, &row.routing_key);
            genq_core::trace::set_parent(&span, Some(t));
            span
        });
        let sent = span.as_ref().and_then(TraceParent::of).or(trace);
        let headers = genq_broker::trace_headers(sent.as_ref());
        let confirm = publisher
            .start(&exchange, &row.routing_key, &body, headers)
            .await?;
        pending.push((confirm, span));
    }
    // Each span ends with its confirm.
    for (confirm, _span) in pending {
        check_confirm(confirm.await?)?;
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    outbox::mark_published(&mut tx, &ids).await?;
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
    topology: std::sync::Arc<Topology>,
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
        match drain(
            &pool,
            &publisher,
            &topology,
            batch,
            &mut listener,
            &shutdown,
        )
        .await
        {
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
            if let Err(e) = outbox::delete_old_published(&pool).await {
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
    topology: &Topology,
    batch: i64,
    listener: &mut Option<PgListener>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if listener.is_none() {
        let mut l = PgListener::connect_with(pool).await?;
        // New outbox rows (submissions, cancels), and job events, whose
        // status changes may have written webhook deliveries' outbox rows.
        l.listen_all([OUTBOX_CHANNEL, JOB_EVENTS_CHANNEL]).await?;
        *listener = Some(l);
    }
    while relay_once(pool, publisher, topology, batch).await? as i64 == batch {
        if shutdown.is_cancelled() {
            break;
        }
    }
    Ok(())
}
