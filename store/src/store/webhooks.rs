//! Webhooks: every query of the endpoints, their deliveries and attempts.
//! Deliveries are made by the trigger on `job_events` (migration
//! `webhooks`); the worker loads, claims and records them here; operators
//! register, list, delete, rotate and replay, each audited.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Result, StoreError};
use genq_core::messages::WEBHOOK_KEY;
use genq_core::webhooks::Secret;

/// An endpoint's state: `enabled`; `disabled` (it answered 410 Gone);
/// `deleted` (by an operator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
#[schema(as = WebhookEndpointState)]
pub enum EndpointState {
    Enabled,
    Disabled,
    Deleted,
}

/// A delivery's status: `pending` (to be sent, or waiting to retry);
/// `delivered` (a 2xx); `failed` (the retry schedule ran out); `disabled`
/// (dropped: its endpoint was deleted or disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
#[schema(as = WebhookDeliveryStatus)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
    Disabled,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] =
        [Self::Pending, Self::Delivered, Self::Failed, Self::Disabled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// An endpoint as operators see it: never its secrets.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// The user whose job events go there; null: every user's.
    pub user_id: Option<Uuid>,
    pub user_email: Option<String>,
    pub state: EndpointState,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Until then the secret before the last rotation signs too.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of [`Endpoint`] from `source` (the table, or a CTE returning its rows) as `e`.
fn endpoint_select(source: &str) -> String {
    format!(
        "SELECT e.id, e.url, e.user_id, u.email AS user_email, e.state, e.disabled_reason,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret_until END
                    AS previous_secret_expires_at,
                e.created_by, e.created_at, e.updated_at
           FROM {source} e LEFT JOIN users u ON u.id = e.user_id"
    )
}

/// A delivery as operators see it.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct Delivery {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub url: String,
    pub job_id: Uuid,
    /// The timeline event it reports.
    pub job_event_id: i64,
    /// The `webhook-id` header, the same on every attempt and replay.
    pub msg_id: String,
    /// The status the job moved to.
    pub to_status: Option<String>,
    pub status: DeliveryStatus,
    /// Every attempt made, replays included.
    pub attempts: i32,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status; null when none came (refused, timeout, connection error).
    pub last_status_code: Option<i32>,
    pub last_response_ms: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The body every attempt sends.
    #[schema(value_type = genq_core::webhooks::JobStatusWebhook)]
    pub payload: serde_json::Value,
}

const DELIVERY_COLS: &str = "d.id, d.endpoint_id, e.url, d.job_id, d.job_event_id, d.msg_id,
    d.payload->'data'->>'to_status' AS to_status, d.status, d.attempts,
    CASE WHEN d.status = 'pending' THEN d.next_attempt_at END AS next_attempt_at,
    d.last_attempt_at, d.last_status_code, d.last_response_ms, d.last_error,
    d.created_at, d.updated_at, d.payload
    FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id";

/// One attempt at a delivery.
#[derive(Debug, Clone, FromRow, Serialize, ToSchema)]
#[schema(as = WebhookAttempt)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// Null when no HTTP answer came.
    pub status_code: Option<i32>,
    pub response_ms: i32,
    pub error: Option<String>,
}

/// Registers an endpoint with a new secret (returned, shown once), audited.
pub async fn create_endpoint(
    pool: &PgPool,
    url: &str,
    user_id: Option<Uuid>,
    actor: &str,
) -> Result<(Endpoint, Secret)> {
    let secret = Secret::generate();
    let endpoint = sqlx::query_as(&format!(
        "WITH ins AS (
            INSERT INTO webhook_endpoints (url, user_id, secret, created_by)
            VALUES ($1, $2, $3, $4) RETURNING *
        ), audit AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT $4, 'webhook.create', user_id, jsonb_build_object('endpoint', id, 'url', url) FROM ins
        )
        {}",
        endpoint_select("ins")
    ))
    .bind(url)
    .bind(user_id)
    .bind(secret.expose())
    .bind(actor)
    .fetch_one(pool)
    .await?;
    Ok((endpoint, secret))
}

/// Endpoints, newest first; deleted ones only if asked.
pub async fn list_endpoints(
    pool: &PgPool,
    include_deleted: bool,
    limit: i64,
) -> Result<Vec<Endpoint>> {
    Ok(sqlx::query_as(&format!(
        "{} WHERE ($1 OR e.state <> 'deleted') ORDER BY e.created_at DESC, e.id LIMIT $2",
        endpoint_select("webhook_endpoints")
    ))
    .bind(include_deleted)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// An endpoint that has not been deleted.
pub async fn get_endpoint(pool: &PgPool, id: Uuid) -> Result<Option<Endpoint>> {
    Ok(sqlx::query_as(&format!(
        "{} WHERE e.id = $1 AND e.state <> 'deleted'",
        endpoint_select("webhook_endpoints")
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Deletes an endpoint (kept, with its deliveries, as `deleted`); its
/// pending deliveries are dropped. `None` when there is no such endpoint
/// or it was deleted already.
pub async fn delete_endpoint(pool: &PgPool, id: Uuid, actor: &str) -> Result<Option<Endpoint>> {
    Ok(sqlx::query_as(&format!(
        "WITH gone AS (
            UPDATE webhook_endpoints SET state = 'deleted', updated_at = now()
             WHERE id = $1 AND state <> 'deleted' RETURNING *
        ), dropped AS (
            UPDATE webhook_deliveries SET status = 'disabled', updated_at = now(),
                   last_error = 'dropped: the endpoint was deleted'
             WHERE endpoint_id = (SELECT id FROM gone) AND status = 'pending'
        ), audit AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT $2, 'webhook.delete', user_id, jsonb_build_object('endpoint', id, 'url', url) FROM gone
        )
        {}",
        endpoint_select("gone")
    ))
    .bind(id)
    .bind(actor)
    .fetch_optional(pool)
    .await?)
}

/// Gives an endpoint a new secret (returned, shown once); the one it
/// replaces keeps signing for `overlap` (one previous secret at a time).
pub async fn rotate_secret(
    pool: &PgPool,
    id: Uuid,
    overlap: Duration,
    actor: &str,
) -> Result<Option<(Endpoint, Secret)>> {
    let secret = Secret::generate();
    let endpoint: Option<Endpoint> = sqlx::query_as(&format!(
        "WITH rotated AS (
            UPDATE webhook_endpoints
               SET previous_secret = secret,
                   previous_secret_until = now() + make_interval(secs => $3),
                   secret = $2, updated_at = now()
             WHERE id = $1 AND state <> 'deleted' RETURNING *
        ), audit AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT $4, 'webhook.rotate', user_id,
                   jsonb_build_object('endpoint', id, 'previous_secret_until', previous_secret_until)
              FROM rotated
        )
        {}",
        endpoint_select("rotated")
    ))
    .bind(id)
    .bind(secret.expose())
    .bind(overlap.as_secs_f64())
    .bind(actor)
    .fetch_optional(pool)
    .await?;
    Ok(endpoint.map(|e| (e, secret)))
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub endpoint_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
}

/// Deliveries, newest first.
pub async fn list_deliveries(
    pool: &PgPool,
    filter: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<Delivery>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLS}
          WHERE ($1::text IS NULL OR d.status = $1) AND ($2::uuid IS NULL OR d.endpoint_id = $2)
            AND ($3::uuid IS NULL OR d.job_id = $3)
          ORDER BY d.id DESC LIMIT $4"
    ))
    .bind(filter.status.map(DeliveryStatus::as_str))
    .bind(filter.endpoint_id)
    .bind(filter.job_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn get_delivery(pool: &PgPool, id: i64) -> Result<Option<Delivery>> {
    Ok(
        sqlx::query_as(&format!("SELECT {DELIVERY_COLS} WHERE d.id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// A delivery's attempts, oldest first.
pub async fn attempts(pool: &PgPool, delivery_id: i64) -> Result<Vec<Attempt>> {
    Ok(sqlx::query_as(
        "SELECT at, status_code, response_ms, error FROM webhook_attempts
          WHERE delivery_id = $1 ORDER BY id",
    )
    .bind(delivery_id)
    .fetch_all(pool)
    .await?)
}

/// Sends a delivery again now (a failed, delivered or dropped one, or a
/// pending one waiting to retry), with the same `webhook-id`, from the start
/// of the retry schedule; its older wake-ups become stale. Audited; the
/// caller rings the relays' doorbell. `NotFound` when there is no such
/// delivery; `Conflict` (saying why) while a sender is attempting it or
/// when its endpoint is not enabled.
pub async fn replay_delivery(pool: &PgPool, id: i64, actor: &str) -> Result<Delivery> {
    let replayed: Option<i64> = sqlx::query_scalar(
        "WITH d AS (
            UPDATE webhook_deliveries d
               SET status = 'pending', seq = d.seq + 1, round_attempts = 0,
                   next_attempt_at = now(), claimed_until = NULL, updated_at = now()
              FROM webhook_endpoints e
             WHERE d.id = $1 AND e.id = d.endpoint_id AND e.state = 'enabled'
               AND (d.claimed_until IS NULL OR d.claimed_until <= now())
            RETURNING d.id, d.seq, d.job_id, d.status AS old_status, e.user_id
        ), wake AS (
            INSERT INTO outbox (routing_key, payload)
            SELECT $3, jsonb_build_object('type', 'deliver', 'delivery_id', id, 'seq', seq) FROM d
        ), audit AS (
            INSERT INTO audit_log (actor, action, target_user_id, job_id, details)
            SELECT $2, 'webhook.replay', user_id, job_id, jsonb_build_object('delivery', id) FROM d
        )
        SELECT id FROM d",
    )
    .bind(id)
    .bind(actor)
    .bind(WEBHOOK_KEY)
    .fetch_optional(pool)
    .await?;
    let delivery = get_delivery(pool, id).await?.ok_or(StoreError::NotFound)?;
    if replayed.is_some() {
        return Ok(delivery);
    }
    let state: EndpointState =
        sqlx::query_scalar("SELECT state FROM webhook_endpoints WHERE id = $1")
            .bind(delivery.endpoint_id)
            .fetch_one(pool)
            .await?;
    if state == EndpointState::Enabled {
        return Err(StoreError::Conflict(
            "it is being sent right now; its result is recorded in a moment".into(),
        ));
    }
    Err(StoreError::Conflict(format!(
        "its endpoint is {}: register the URL again to receive events there",
        serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    )))
}

/// A delivery as the sender loads it, with its endpoint's URL and secrets
/// (no `Debug`: nothing should print it).
#[derive(Clone, FromRow)]
pub struct Outgoing {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub job_id: Uuid,
    pub msg_id: String,
    pub payload: serde_json::Value,
    pub status: DeliveryStatus,
    pub seq: i32,
    pub round_attempts: i32,
    pub url: String,
    pub endpoint_state: EndpointState,
    pub secret: String,
    /// The secret before the last rotation, while it still signs.
    pub previous_secret: Option<String>,
    /// How long until the delivery is due (or another worker's claim runs out).
    pub wait_ms: i64,
    /// An earlier pending delivery of the same job to the same endpoint,
    /// which goes first, and how long until it is due.
    pub earlier_id: Option<i64>,
    pub earlier_wait_ms: Option<i64>,
    /// The job's trace context, which the delivery's span joins.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Milliseconds from now until a delivery row `t` is due (0 if it is).
const DUE_IN_MS: &str = "GREATEST(0, CEIL(EXTRACT(EPOCH FROM
    GREATEST(T.next_attempt_at, COALESCE(T.claimed_until, T.next_attempt_at)) - now()) * 1000))::bigint";

/// Loads a delivery for sending; times are the database's, so workers'
/// clocks don't matter.
pub async fn load_outgoing(pool: &PgPool, id: i64) -> Result<Option<Outgoing>> {
    Ok(sqlx::query_as(&format!(
        "SELECT d.id, d.endpoint_id, d.job_id, d.msg_id, d.payload, d.status, d.seq, d.round_attempts,
                e.url, e.state AS endpoint_state, e.secret,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret,
                {} AS wait_ms, p.id AS earlier_id, {} AS earlier_wait_ms,
                j.traceparent, j.tracestate
           FROM webhook_deliveries d
           JOIN webhook_endpoints e ON e.id = d.endpoint_id
           LEFT JOIN jobs j ON j.id = d.job_id
           LEFT JOIN LATERAL (
                SELECT id, next_attempt_at, claimed_until FROM webhook_deliveries p
                 WHERE p.endpoint_id = d.endpoint_id AND p.job_id = d.job_id
                   AND p.status = 'pending' AND p.id < d.id
                 ORDER BY p.id LIMIT 1) p ON true
          WHERE d.id = $1",
        DUE_IN_MS.replace("T.", "d."),
        DUE_IN_MS.replace("T.", "p.")
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Claims a due delivery for one attempt, for `lease` (a crashed sender's
/// claim runs out and the broker's redelivery takes it). False when it is
/// not due, not pending, claimed by another sender, or `seq` is stale.
pub async fn claim(pool: &PgPool, id: i64, seq: i32, lease: Duration) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE webhook_deliveries SET claimed_until = now() + make_interval(secs => $3), updated_at = now()
          WHERE id = $1 AND seq = $2 AND status = 'pending' AND next_attempt_at <= now()
            AND (claimed_until IS NULL OR claimed_until <= now())",
    )
    .bind(id)
    .bind(seq)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Drops a pending delivery whose endpoint is no longer enabled.
pub async fn drop_delivery(pool: &PgPool, id: i64, seq: i32, why: &str) -> Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'disabled', last_error = $3, updated_at = now()
          WHERE id = $1 AND seq = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(seq)
    .bind(why)
    .execute(pool)
    .await?;
    Ok(())
}

/// What an attempt's answer means for its delivery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// A 2xx.
    Delivered,
    /// 410 Gone: the endpoint is disabled and its pending deliveries dropped.
    Gone,
    /// Anything else, with the wait before the next attempt.
    Retry(Duration),
    /// Anything else, with the schedule run out.
    Failed,
}

/// One attempt's result.
#[derive(Debug, Clone)]
pub struct AttemptRecord<'a> {
    pub delivery_id: i64,
    /// The `seq` the attempt was claimed with.
    pub seq: i32,
    pub status_code: Option<u16>,
    pub response_ms: u64,
    pub error: Option<&'a str>,
    pub verdict: Verdict,
}

/// What recording an attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct Recorded {
    /// The delivery's new status.
    pub status: DeliveryStatus,
    /// Whether a wake-up went to the outbox (a retry, or the job's next
    /// status change to this endpoint, which waited for this one): the
    /// caller rings the relays' doorbell.
    pub woke: bool,
}

/// Records an attempt and its consequence in one statement: the attempt
/// row; the delivery's new status (a retry stays `pending`, with its next
/// wake-up in the outbox; an endpoint deleted or disabled meanwhile drops
/// it); once it is no longer pending, a wake-up for the job's next pending
/// delivery to the endpoint (which waits for this one, to keep the order);
/// for a 410, the endpoint disabled (audited) and its other pending
/// deliveries dropped. `None` when the attempt's claim was stale.
pub async fn record_attempt(pool: &PgPool, r: &AttemptRecord<'_>) -> Result<Option<Recorded>> {
    let (verdict, retry_secs) = match r.verdict {
        Verdict::Delivered => ("delivered", None),
        Verdict::Gone => ("gone", None),
        Verdict::Retry(d) => ("retry", Some(d.as_secs_f64())),
        Verdict::Failed => ("failed", None),
    };
    let gone_reason = "the endpoint answered 410 Gone";
    Ok(sqlx::query_as(
        "WITH d AS (
            UPDATE webhook_deliveries d
               SET attempts = d.attempts + 1, round_attempts = d.round_attempts + 1, seq = d.seq + 1,
                   claimed_until = NULL, last_attempt_at = now(), last_status_code = $3,
                   last_response_ms = $4, last_error = $5, updated_at = now(),
                   status = CASE
                       WHEN $6 = 'delivered' THEN 'delivered'
                       WHEN $6 = 'gone' OR d.status <> 'pending' OR e.state <> 'enabled' THEN 'disabled'
                       WHEN $6 = 'retry' THEN 'pending'
                       ELSE 'failed' END,
                   next_attempt_at = CASE WHEN $6 = 'retry'
                       THEN now() + make_interval(secs => $7) ELSE d.next_attempt_at END
              FROM webhook_endpoints e
             WHERE d.id = $1 AND d.seq = $2 AND e.id = d.endpoint_id
            RETURNING d.id, d.seq, d.status, d.endpoint_id, d.job_id
        ), attempt AS (
            INSERT INTO webhook_attempts (delivery_id, status_code, response_ms, error)
            SELECT id, $3, $4, $5 FROM d
        ), wake AS (
            INSERT INTO outbox (routing_key, payload)
            SELECT $9, jsonb_build_object('type', 'deliver', 'delivery_id', id, 'seq', seq)
              FROM d WHERE status = 'pending'
            UNION ALL
            SELECT $9, jsonb_build_object('type', 'deliver', 'delivery_id', n.id, 'seq', n.seq)
              FROM d, LATERAL (
                   SELECT id, seq FROM webhook_deliveries n
                    WHERE n.endpoint_id = d.endpoint_id AND n.job_id = d.job_id
                      AND n.status = 'pending' AND n.id > d.id
                    ORDER BY n.id LIMIT 1) n
             WHERE d.status <> 'pending' AND $6 <> 'gone'
            RETURNING id
        ), gone AS (
            UPDATE webhook_endpoints SET state = 'disabled', disabled_reason = $8, updated_at = now()
             WHERE $6 = 'gone' AND id = (SELECT endpoint_id FROM d) AND state = 'enabled'
            RETURNING id, user_id, url
        ), dropped AS (
            UPDATE webhook_deliveries SET status = 'disabled', updated_at = now(),
                   last_error = 'dropped: ' || $8
             WHERE endpoint_id = (SELECT id FROM gone) AND status = 'pending' AND id <> $1
        ), audit AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT $10, 'webhook.disable', user_id,
                   jsonb_build_object('endpoint', id, 'url', url, 'reason', $8::text) FROM gone
        )
        SELECT status, EXISTS (SELECT 1 FROM wake) AS woke FROM d",
    )
    .bind(r.delivery_id)
    .bind(r.seq)
    .bind(r.status_code.map(i32::from))
    .bind(r.response_ms.min(i32::MAX as u64) as i32)
    .bind(r.error)
    .bind(verdict)
    .bind(retry_secs)
    .bind(gone_reason)
    .bind(WEBHOOK_KEY)
    .bind(super::SYSTEM_ACTOR)
    .fetch_optional(pool)
    .await?)
}
