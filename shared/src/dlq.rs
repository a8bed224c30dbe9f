//! The dead-letter archive: messages from the broker's dead-letter queue are
//! stored in Postgres (then acked), where operators list, show, replay or
//! discard them without consuming or reordering anything on the broker.

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::JobStatus;
use crate::queue::{
    header_str, PollMessage, StartMessage, Topology, JOB_HEADER, POLL_KEY, REASON_HEADER,
    SOURCE_HEADER, START_KEY,
};
use crate::store::{self, StoreError, Transition, OUTBOX_CHANNEL};

/// A dead letter with its job's context, as operators see it.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub job_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub user_email: Option<String>,
    pub job_status: Option<String>,
    pub attempts: Option<i32>,
    pub source_queue: String,
    pub reason: String,
    /// The message as it was, as text.
    #[serde(serialize_with = "lossy_text")]
    #[schema(value_type = String)]
    pub body: Vec<u8>,
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    pub received_at: DateTime<Utc>,
    pub age_secs: i64,
    pub state: String,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
}

fn lossy_text<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

impl DeadLetter {
    /// The message body as text, for people.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

const COLS: &str = "d.id, d.job_id, j.user_id, u.email AS user_email, j.status AS job_status, j.attempts,
    d.source_queue, d.reason, d.body, d.headers, d.received_at,
    EXTRACT(EPOCH FROM now() - d.received_at)::bigint AS age_secs, d.state, d.resolved_at, d.resolved_by
    FROM dead_letters d LEFT JOIN jobs j ON j.id = d.job_id LEFT JOIN users u ON u.id = j.user_id";

/// Why a broker message is dead, from genq's headers or the broker's `x-death`.
fn describe(props: &lapin::BasicProperties) -> (String, String, Option<Uuid>, serde_json::Value) {
    let mut reason = header_str(props, REASON_HEADER);
    let mut source = header_str(props, SOURCE_HEADER);
    let mut headers = serde_json::Map::new();
    if let Some(table) = props.headers().as_ref() {
        for (k, v) in table.inner() {
            headers.insert(k.to_string(), serde_json::Value::String(amqp_text(v)));
            if k.as_str() == "x-death" && reason.is_none() {
                // Dead-lettered by the broker (delivery limit, rejection).
                let text = amqp_text(v);
                let why = ["delivery_limit", "rejected", "expired", "maxlen"]
                    .into_iter()
                    .find(|r| text.contains(r))
                    .unwrap_or("dead-lettered by the broker");
                reason = Some(format!("broker: {why}"));
                if source.is_none() {
                    source = ["start", "poll"]
                        .into_iter()
                        .find(|q| {
                            text.contains(&format!(".{q}\"")) || text.contains(&format!(".{q}"))
                        })
                        .map(str::to_owned);
                }
            }
        }
    }
    let job = header_str(props, JOB_HEADER).and_then(|s| Uuid::parse_str(&s).ok());
    (
        reason.unwrap_or_else(|| "unknown".into()),
        source.unwrap_or_else(|| "unknown".into()),
        job,
        serde_json::Value::Object(headers),
    )
}

fn amqp_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

/// The job a message body names, if it parses as one of ours.
fn job_of(body: &[u8]) -> Option<Uuid> {
    serde_json::from_slice::<StartMessage>(body)
        .map(|m| m.job_id())
        .or_else(|_| serde_json::from_slice::<PollMessage>(body).map(|m| m.job_id()))
        .ok()
}

/// Stores one dead letter.
pub async fn archive(
    pool: &PgPool,
    props: &lapin::BasicProperties,
    body: &[u8],
) -> Result<i64, StoreError> {
    let (reason, source, job_header, headers) = describe(props);
    let job_id = job_header.or_else(|| job_of(body));
    // Only a job that exists is linked; a stray ID stays in the body.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (job_id, source_queue, reason, body, headers)
         VALUES ((SELECT id FROM jobs WHERE id = $1), $2, $3, $4, $5) RETURNING id",
    )
    .bind(job_id)
    .bind(source)
    .bind(reason)
    .bind(body)
    .bind(headers)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

/// Moves every message waiting in the broker's dead-letter queue into the
/// archive, acking each only after it is stored. Returns how many moved.
pub async fn sync_from_broker(settings: &Settings, pool: &PgPool) -> anyhow::Result<usize> {
    let topology = Topology::new(settings);
    let connection = crate::queue::connect(settings).await?;
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

pub async fn list(
    pool: &PgPool,
    include_resolved: bool,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} WHERE ($1 OR d.state = 'open') ORDER BY d.id LIMIT $2"
    ))
    .bind(include_resolved)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>, StoreError> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} WHERE d.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// What an operator's replay or discard did.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub id: i64,
    pub job_id: Option<Uuid>,
    pub done: bool,
    pub message: String,
}

fn refused(letter: &DeadLetter, message: impl Into<String>) -> Resolution {
    Resolution {
        id: letter.id,
        job_id: letter.job_id,
        done: false,
        message: message.into(),
    }
}

/// Marks a dead letter resolved (only if still open), writes the audit
/// entry and commits `tx` with whatever the caller did in it.
async fn finish(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    letter: &DeadLetter,
    state: &str,
    actor: &str,
    job_id: Option<Uuid>,
    message: String,
) -> Result<Resolution, StoreError> {
    let r = sqlx::query(
        "UPDATE dead_letters SET state = $2, resolved_at = now(), resolved_by = $3 WHERE id = $1 AND state = 'open'",
    )
    .bind(letter.id)
    .bind(state)
    .bind(actor)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(refused(letter, "resolved meanwhile by someone else"));
    }
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target_user_id, job_id, details) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(actor)
    .bind(format!("dlq.{}", if state == "replayed" { "replay" } else { "discard" }))
    .bind(letter.user_id)
    .bind(letter.job_id)
    .bind(serde_json::json!({"dead_letter": letter.id, "result": message}))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Resolution {
        id: letter.id,
        job_id,
        done: true,
        message,
    })
}

/// Runs the job again. A refunded job (dead or failed) reserves its cost
/// again; a job still open gets a fresh start or poll message; a finished or
/// unknown job can't be replayed, and the answer says why.
pub async fn replay(
    pool: &PgPool,
    topology: &Topology,
    id: i64,
    actor: &str,
) -> Result<Resolution, StoreError> {
    let letter = get(pool, id).await?.ok_or(StoreError::NotFound)?;
    if letter.state != "open" {
        return Ok(refused(&letter, format!("already {}", letter.state)));
    }
    let Some(job_id) = letter.job_id else {
        return Ok(refused(
            &letter,
            "no job: the message was malformed; discard it",
        ));
    };
    let mut tx = pool.begin().await?;
    let job: store::Job = sqlx::query_as(&format!(
        "SELECT {} FROM jobs WHERE id = $1 FOR UPDATE",
        store::JOB_COLS
    ))
    .bind(job_id)
    .fetch_one(&mut *tx)
    .await?;
    let (exchange, routing_key, payload, message) = match job.status() {
        JobStatus::Dead | JobStatus::Failed => {
            let available: i64 = sqlx::query_scalar(
                "SELECT available FROM credit_accounts WHERE user_id = $1 FOR UPDATE",
            )
            .bind(job.user_id)
            .fetch_one(&mut *tx)
            .await?;
            if available < job.cost {
                return Ok(refused(&letter, format!(
                    "the job was refunded and the user can't afford it again: a video needs {} credits, the user has {available}",
                    job.cost
                )));
            }
            sqlx::query(
                "UPDATE credit_accounts SET available = available - $2, reserved = reserved + $2, updated_at = now()
                  WHERE user_id = $1",
            )
            .bind(job.user_id)
            .bind(job.cost)
            .execute(&mut *tx)
            .await?;
            let reservation = job.reservation + 1;
            sqlx::query(
                "UPDATE jobs SET status = 'queued', reservation = $2, attempts = 0, poll_seq = 0,
                        error_code = NULL, error_message = NULL, provider_task_id = NULL, result_url = NULL,
                        deadline_at = NULL, provider_canceled_at = NULL, polled_at = NULL, updated_at = now()
                  WHERE id = $1",
            )
            .bind(job_id)
            .bind(reservation)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
                 VALUES ($1, 'reserve', $2, $3, $4, $5, 'replayed from the dead-letter queue')",
            )
            .bind(job.user_id)
            .bind(job.cost)
            .bind(job_id)
            .bind(reservation)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO job_events (job_id, kind, from_status, to_status, message)
                 VALUES ($1, 'status', $2, 'queued', $3)",
            )
            .bind(job_id)
            .bind(job.status().as_str())
            .bind(format!(
                "Replayed by {actor}; {} credits reserved again.",
                job.cost
            ))
            .execute(&mut *tx)
            .await?;
            let start = topology.start_message(job_id);
            (
                start.exchange,
                start.routing_key,
                start.payload,
                format!("requeued; {} credits reserved again", job.cost),
            )
        }
        JobStatus::Queued | JobStatus::Submitting => {
            let start = topology.start_message(job_id);
            (
                start.exchange,
                start.routing_key,
                start.payload,
                "start message sent again".to_owned(),
            )
        }
        JobStatus::Running => {
            let poll = PollMessage::Poll {
                job_id,
                seq: job.poll_seq,
                errors: 0,
            };
            (
                topology.work_exchange(),
                POLL_KEY.to_owned(),
                serde_json::to_value(poll).expect("serializes"),
                "poll message sent again".to_owned(),
            )
        }
        other => {
            return Ok(refused(
                &letter,
                format!("the job is {other}: nothing to run again; discard the letter"),
            ));
        }
    };
    debug_assert!(routing_key == START_KEY || routing_key == POLL_KEY);
    sqlx::query(&format!(
        "WITH o AS (INSERT INTO outbox (job_id, exchange, routing_key, payload) VALUES ($1, $2, $3, $4) RETURNING id)
         SELECT pg_notify('{OUTBOX_CHANNEL}', '') FROM o"
    ))
    .bind(job_id)
    .bind(&exchange)
    .bind(&routing_key)
    .bind(&payload)
    .execute(&mut *tx)
    .await?;
    finish(tx, &letter, "replayed", actor, Some(job_id), message).await
}

/// Closes the letter; a job still open is marked dead and refunded.
pub async fn discard(pool: &PgPool, id: i64, actor: &str) -> Result<Resolution, StoreError> {
    let letter = get(pool, id).await?.ok_or(StoreError::NotFound)?;
    if letter.state != "open" {
        return Ok(refused(&letter, format!("already {}", letter.state)));
    }
    let mut message = "discarded".to_owned();
    if let Some(job_id) = letter.job_id {
        let from = [JobStatus::Queued, JobStatus::Submitting, JobStatus::Running];
        let mut t = Transition::new(
            job_id,
            &from,
            JobStatus::Dead,
            format!("Discarded from the dead-letter queue by {actor}; credits refunded."),
        );
        t.error = Some((
            "discarded",
            format!("discarded by an operator: {}", letter.reason),
        ));
        if let Some((job, _)) = store::transition(pool, &t).await? {
            message = format!(
                "discarded; the job was closed and its {} credits refunded",
                job.cost
            );
        }
    }
    let tx = pool.begin().await?;
    finish(tx, &letter, "discarded", actor, letter.job_id, message).await
}
