//! Reading the job-event stream: `job_events` after a position (all, one
//! job's, one user's), and the channel that announces new events. The table
//! is the source of truth; notifications only say "look again".

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::Result;

/// Notified (after the commit, never inside it) when job events were written.
pub const JOB_EVENTS_CHANNEL: &str = "genq_job_events";

/// One row of a job's timeline, with the job's owner: what the timeline,
/// the live streams and the operator's tools all read.
#[derive(Debug, Clone, PartialEq, FromRow, serde::Serialize)]
pub struct JobEvent {
    pub id: i64,
    pub job_id: Uuid,
    pub user_id: Uuid,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub message: Option<String>,
    pub data: Option<serde_json::Value>,
}

const COLS: &str =
    "e.id, e.job_id, j.user_id, e.at, e.kind, e.from_status, e.to_status, e.message, e.data";

/// A job's whole timeline, oldest first.
pub async fn of_job(pool: &PgPool, job_id: Uuid) -> Result<Vec<JobEvent>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM job_events e JOIN jobs j ON j.id = e.job_id
          WHERE e.job_id = $1 ORDER BY e.id"
    ))
    .bind(job_id)
    .fetch_all(pool)
    .await?)
}

/// The newest event's id (0 when there is none): where a live feed starts.
pub async fn latest_id(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(id), 0)::bigint FROM job_events")
            .fetch_one(pool)
            .await?,
    )
}

/// Every event after `after`, oldest first, at most `limit`.
pub async fn all_after(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<JobEvent>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM job_events e JOIN jobs j ON j.id = e.job_id
          WHERE e.id > $1 ORDER BY e.id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One job's events after `after`, oldest first, at most `limit`. A job's
/// events are written under its row lock, so within one job the ids are in
/// commit order and reading after the last one seen never skips one.
pub async fn job_after(
    pool: &PgPool,
    job_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<JobEvent>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM job_events e JOIN jobs j ON j.id = e.job_id
          WHERE e.job_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3"
    ))
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// One user's events (of all their jobs) in `(after, upto]`, oldest first,
/// at most `limit`.
pub async fn user_after(
    pool: &PgPool,
    user_id: Uuid,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<JobEvent>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM job_events e JOIN jobs j ON j.id = e.job_id
          WHERE j.user_id = $1 AND e.id > $2 AND e.id <= $3 ORDER BY e.id LIMIT $4"
    ))
    .bind(user_id)
    .bind(after)
    .bind(upto)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
