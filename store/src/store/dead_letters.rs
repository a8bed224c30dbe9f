//! The dead-letter archive: dead letters moved from the broker are stored
//! here, where operators list, show, replay or discard them without
//! consuming or reordering anything on the broker.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool, Row};
use uuid::Uuid;

use super::credits::{self, Reserve};
use super::jobs::{get_job_for_update, Job};
use super::named::Named;
use super::outbox;
use super::transition::{transition, Transition};
use super::{Result, StoreError};
use genq_core::domain::{EventKind, JobStatus};
use genq_core::messages::{PollMessage, StartMessage, WorkMessage};

/// A dead letter with its job's context, as operators see it.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub job_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub user_email: Option<String>,
    /// The user's identity provider ID (`sub`).
    pub user_sub: Option<String>,
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

fn lossy_text<S: serde::Serializer>(body: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

impl DeadLetter {
    /// The message body as text, for people.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A dead letter as it arrives from the broker.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub reason: String,
    pub source_queue: String,
    pub job_id: Option<Uuid>,
    pub body: Vec<u8>,
    pub headers: serde_json::Value,
}

const COLS: &str = "d.id, d.job_id, j.user_id, u.email AS user_email, u.external_id AS user_sub, j.status AS job_status, j.attempts,
    d.source_queue, d.reason, d.body, d.headers, d.received_at,
    EXTRACT(EPOCH FROM now() - d.received_at)::bigint AS age_secs, d.state, d.resolved_at, d.resolved_by
    FROM dead_letters d LEFT JOIN jobs j ON j.id = d.job_id LEFT JOIN users u ON u.id = j.user_id";

/// Stores one dead letter.
pub async fn archive(pool: &PgPool, letter: &NewDeadLetter) -> Result<i64> {
    // Only a job that exists is linked; a stray ID stays in the body.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO dead_letters (job_id, source_queue, reason, body, headers)
         VALUES ((SELECT id FROM jobs WHERE id = $1), $2, $3, $4, $5) RETURNING id",
    )
    .bind(letter.job_id)
    .bind(&letter.source_queue)
    .bind(&letter.reason)
    .bind(&letter.body)
    .bind(&letter.headers)
    .fetch_one(pool)
    .await?;
    Ok(id)
}

pub async fn list(pool: &PgPool, include_resolved: bool, limit: i64) -> Result<Vec<DeadLetter>> {
    let filter = Filter {
        state: (!include_resolved).then(|| "open".to_owned()),
        ..Filter::default()
    };
    list_filtered(pool, &filter, limit).await
}

/// Which dead letters to list; every field narrows, `None` doesn't.
/// Text matches are case-insensitive substrings (no pattern characters).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `open`, `replayed` or `discarded`.
    pub state: Option<String>,
    /// A substring of the reason.
    pub reason: Option<String>,
    /// The queue the message died in, exactly.
    pub source_queue: Option<String>,
    /// The job's user: genq ID, external ID (`sub`) or email, exactly.
    pub user: Option<String>,
    /// Received at least this long ago.
    pub older_than: Option<std::time::Duration>,
    /// A substring of the reason, the body (non-ASCII bytes as `\ooo` escapes), the
    /// source queue, the user's email or `sub`, or the job ID.
    pub search: Option<String>,
    /// Only letters with a greater ID: the page after one that ended there.
    pub after: Option<i64>,
}

/// Dead letters matching `filter`, oldest first.
pub async fn list_filtered(pool: &PgPool, filter: &Filter, limit: i64) -> Result<Vec<DeadLetter>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS}
          WHERE ($1::text IS NULL OR d.state = $1)
            AND ($2::text IS NULL OR strpos(lower(d.reason), lower($2)) > 0)
            AND ($3::text IS NULL OR d.source_queue = $3)
            AND ($4::text IS NULL OR j.user_id::text = $4 OR u.external_id = $4 OR lower(u.email) = lower($4))
            AND ($5::float8 IS NULL OR d.received_at <= now() - make_interval(secs => $5))
            AND ($6::text IS NULL OR strpos(lower(concat_ws(' ', d.reason, encode(d.body, 'escape'),
                 d.source_queue, u.email, u.external_id, d.job_id::text)), lower($6)) > 0)
            AND ($8::bigint IS NULL OR d.id > $8)
          ORDER BY d.id LIMIT $7"
    ))
    .bind(&filter.state)
    .bind(&filter.reason)
    .bind(&filter.source_queue)
    .bind(&filter.user)
    .bind(filter.older_than.map(|d| d.as_secs_f64()))
    .bind(&filter.search)
    .bind(limit)
    .bind(filter.after)
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>> {
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
) -> Result<Resolution> {
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
/// again, as a new reservation; a job still open gets a fresh start or poll
/// message; a finished or unknown job can't be replayed, and the answer
/// says why. The caller rings the relays' doorbell after a replay.
pub async fn replay(pool: &PgPool, id: i64, actor: &str) -> Result<Resolution> {
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
    let job = get_job_for_update(&mut tx, job_id).await?;
    let (message, note) = match job.status {
        JobStatus::Dead | JobStatus::Failed => {
            let (available, _) = credits::available_for_update(&mut tx, job.user_id).await?;
            if available < job.cost {
                return Ok(refused(&letter, format!(
                    "the job was refunded and the user can't afford it again: a video needs {} credits, the user has {available}",
                    job.cost
                )));
            }
            reserve_again(&mut tx, &job, actor).await?;
            (
                WorkMessage::Start(StartMessage::first(job_id)),
                format!("requeued; {} credits reserved again", job.cost),
            )
        }
        JobStatus::Queued | JobStatus::Submitting => (
            WorkMessage::Start(StartMessage::first(job_id)),
            "start message sent again".to_owned(),
        ),
        JobStatus::Running => (
            WorkMessage::Poll(PollMessage::Poll {
                job_id,
                seq: job.poll_seq,
                errors: 0,
            }),
            "poll message sent again".to_owned(),
        ),
        other => {
            return Ok(refused(
                &letter,
                format!("the job is {other}: nothing to run again; discard the letter"),
            ));
        }
    };
    outbox::enqueue(&mut *tx, &message).await?;
    finish(tx, &letter, "replayed", actor, Some(job_id), note).await
}

/// Puts a refunded `job` back to `queued` as its next reservation, through
/// the one reserve path. The caller read `job` under its row lock and
/// checked the balance under the account's lock, so its values are current.
async fn reserve_again(tx: &mut sqlx::PgConnection, job: &Job, actor: &str) -> Result<()> {
    debug_assert!(matches!(job.status, JobStatus::Dead | JobStatus::Failed));
    let replayed: Option<Uuid> = replay_statement()
        .query()
        .bind("job", job.id)
        .bind("actor", actor)
        .bind("from", job.status)
        .bind("user", job.user_id)
        .bind("cost", job.cost)
        .bind("reservation", job.reservation + 1)
        .done()
        .try_map(|row: sqlx::postgres::PgRow| row.try_get(0))
        .fetch_optional(&mut *tx)
        .await?;
    // The caller holds both locks and checked the balance: this cannot miss.
    replayed
        .map(|_| ())
        .ok_or_else(|| StoreError::Conflict("the job changed while being replayed".into()))
}

/// The statement of [`reserve_again`], composed once from the one reserve path.
pub(crate) fn replay_statement() -> &'static Named {
    static SQL: std::sync::OnceLock<Named> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let reserve = credits::reserve_ctes(&Reserve {
            user: ":user",
            cost: ":cost",
            job: ":job",
            reservation: ":reservation",
            actor: ":actor",
            reason: "'replayed from the dead-letter queue'",
            only_if: "TRUE",
        });
        let status = EventKind::Status;
        let text = format!("WITH {reserve}, j AS (
            UPDATE jobs SET status = 'queued', reservation = :reservation, attempts = 0, poll_seq = 0,
                   error_code = NULL, error_message = NULL, provider_task_id = NULL, provider_result_url = NULL,
                   video_key = NULL, video_bytes = NULL, provider_state = NULL,
                   deadline_at = NULL, provider_canceled_at = NULL, polled_at = NULL, updated_at = now()
             WHERE id = :job AND status = :from AND EXISTS (SELECT 1 FROM acct)
            RETURNING id, status AS to_status, cost
        ), e AS (
            INSERT INTO job_events (job_id, kind, from_status, to_status, message)
            SELECT id, '{status}', :from::text, to_status,
                   'Replayed by ' || :actor::text || '; ' || cost || ' credits reserved again.' FROM j
        )
        SELECT id FROM j");
        Named::new(&text, &["job", "actor", "from", "user", "cost", "reservation"])
    })
}

/// Closes the letter; a job still open is marked dead and refunded.
pub async fn discard(pool: &PgPool, id: i64, actor: &str) -> Result<Resolution> {
    let letter = get(pool, id).await?.ok_or(StoreError::NotFound)?;
    if letter.state != "open" {
        return Ok(refused(&letter, format!("already {}", letter.state)));
    }
    let mut message = "discarded".to_owned();
    if let Some(job_id) = letter.job_id {
        let from = JobStatus::OPEN;
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
        if let Some((job, _)) = transition(pool, &t).await? {
            message = format!(
                "discarded; the job was closed and its {} credits refunded",
                job.cost
            );
        }
    }
    let tx = pool.begin().await?;
    finish(tx, &letter, "discarded", actor, letter.job_id, message).await
}
