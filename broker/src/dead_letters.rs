//! Dead letters on the broker's side: the headers genq puts on them, reading
//! why a message died, and moving the dead-letter queue into the archive
//! (`genq_store::store::dead_letters`), acking each only once stored.

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use sqlx::PgPool;
use uuid::Uuid;

use genq_core::config::Settings;
use genq_core::messages::job_of;
use genq_store::store::dead_letters::{self, NewDeadLetter};

use crate::publisher::{amqp_text, connect, header_str};
use crate::topology::{string, Topology};

/// Header naming why a message was dead-lettered by genq.
pub const REASON_HEADER: &str = "x-genq-reason";
/// Header naming the job a dead letter belongs to.
pub const JOB_HEADER: &str = "x-genq-job-id";
/// Header naming the queue a dead letter came from.
pub const SOURCE_HEADER: &str = "x-genq-source-queue";

/// Longest reason kept in a header.
const MAX_REASON_CHARS: usize = 1_000;

/// The headers of a message genq dead-letters itself.
pub fn headers(reason: &str, source_queue: &str, job_id: Option<Uuid>) -> FieldTable {
    let mut headers = FieldTable::default();
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    headers.insert(REASON_HEADER.into(), string(&reason));
    headers.insert(SOURCE_HEADER.into(), string(source_queue));
    if let Some(id) = job_id {
        headers.insert(JOB_HEADER.into(), string(&id.to_string()));
    }
    headers
}

/// Why a broker message is dead, from genq's headers or the broker's `x-death`.
pub fn describe(props: &BasicProperties, body: &[u8]) -> NewDeadLetter {
    let mut reason = header_str(props, REASON_HEADER);
    let mut source = header_str(props, SOURCE_HEADER);
    let mut headers = serde_json::Map::new();
    if let Some(table) = props.headers().as_ref() {
        for (k, v) in table.inner() {
            let text = amqp_text(v);
            if k.as_str() == "x-death" && reason.is_none() {
                // Dead-lettered by the broker (delivery limit, rejection).
                let why = ["delivery_limit", "rejected", "expired", "maxlen"]
                    .into_iter()
                    .find(|r| text.contains(r))
                    .unwrap_or("dead-lettered by the broker");
                reason = Some(format!("broker: {why}"));
                if source.is_none() {
                    source = ["start", "poll"]
                        .into_iter()
                        .find(|q| text.contains(&format!(".{q}")))
                        .map(str::to_owned);
                }
            }
            headers.insert(k.to_string(), serde_json::Value::String(text));
        }
    }
    let job_id = header_str(props, JOB_HEADER)
        .and_then(|s| Uuid::parse_str(&s).ok())
        .or_else(|| job_of(body));
    NewDeadLetter {
        reason: reason.unwrap_or_else(|| "unknown".into()),
        source_queue: source.unwrap_or_else(|| "unknown".into()),
        job_id,
        body: body.to_vec(),
        headers: serde_json::Value::Object(headers),
    }
}

/// Stores one delivery of the dead-letter queue; the caller acks after.
pub async fn archive(pool: &PgPool, props: &BasicProperties, body: &[u8]) -> anyhow::Result<i64> {
    Ok(dead_letters::archive(pool, &describe(props, body)).await?)
}

/// Moves every message waiting in the broker's dead-letter queue into the
/// archive, acking each only after it is stored. Returns how many moved.
pub async fn sync_from_broker(settings: &Settings, pool: &PgPool) -> anyhow::Result<usize> {
    let topology = Topology::new(settings);
    let connection = connect(settings).await?;
    let channel = connection.create_channel().await?;
    topology.declare(&channel).await?;
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(
            topology.dead_letter_queue().into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        archive(pool, &message.delivery.properties, &message.delivery.data).await?;
        message.delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    connection
        .close(200, "dead letters archived".into())
        .await
        .ok();
    Ok(moved)
}
