//! `/v1/admin/system` and `/v1/admin/ledger/verify`: the system at a glance
//! and the ledger's verification.

use crate::queue_stats::{queue_stats, QueueStats};
use axum::extract::State;
use axum::Json;
use genq_store::ops;
use genq_store::store::gate;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    pub ok: bool,
    #[schema(value_type = Vec<Object>)]
    pub violations: Vec<ops::Violation>,
}

/// The last recorded verification of the ledger (the worker runs one about
/// once a minute); reading it runs nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastVerificationView {
    /// Absent until a verification has been recorded.
    pub last_verification: Option<ops::VerificationRecord>,
}

/// The last recorded verification: for the admin and the viewer role; it
/// changes nothing and scans nothing.
#[utoipa::path(
    get, path = "/v1/admin/ledger/verify", tag = "admin", operation_id = "last_ledger_verification",
    responses(
        (status = 200, description = "The last recorded verification", body = LastVerificationView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ledger_verification(
    State(state): State<AppState>,
    _viewer: AdminViewer,
) -> Result<Json<LastVerificationView>, ApiError> {
    Ok(Json(LastVerificationView {
        last_verification: ops::last_verification(&state.pool).await?,
    }))
}

/// Recompute every balance from the ledger and check the invariants (a
/// full scan, recorded): admin only.
#[utoipa::path(
    post, path = "/v1/admin/ledger/verify", tag = "admin", operation_id = "verify_ledger",
    responses(
        (status = 200, description = "The verification", body = VerifyView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role reads the last result with GET)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ledger_verify(
    State(state): State<AppState>,
    admin: AdminUser,
) -> Result<Json<VerifyView>, ApiError> {
    // Recorded, so the System page shows when the ledger was last checked.
    let violations = ops::verify_and_record(&state.pool, &admin.0.actor()).await?;
    Ok(Json(VerifyView {
        ok: violations.is_empty(),
        violations,
    }))
}

/// The system at a glance: jobs per status, the last hour, the outbox
/// backlog, open dead letters, the last ledger verification, and the
/// queues' depths and consumers from RabbitMQ's management API when
/// `amqp.management_url` is set.
#[utoipa::path(
    get, path = "/v1/admin/system", tag = "admin", operation_id = "system_summary",
    responses(
        (status = 200, description = "The summary", body = SystemView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn system(
    State(state): State<AppState>,
    _admin: AdminViewer,
) -> Result<Json<SystemView>, ApiError> {
    let (summary, queues) = tokio::join!(
        ops::system_summary(&state.pool),
        queue_stats(
            &state.http,
            state.settings.amqp.management_url.as_ref(),
            &state.settings.amqp.url,
            &state.settings.queue.prefix,
        )
    );
    Ok(Json(SystemView {
        summary: summary?,
        queues,
        lines: lines(&state).await?,
    }))
}

/// How many of a user's lines the System page lists per provider.
const TOP_LINES: i64 = 10;

/// Each capped provider (and any provider with a line): its caps, what it
/// runs, and who waits.
async fn lines(state: &AppState) -> Result<Vec<ProviderLinesView>, ApiError> {
    let (waiting, users) = gate::overview(&state.pool, TOP_LINES).await?;
    let in_flight = gate::in_flight(&state.pool).await?;
    let mut names: Vec<String> = state.gate.caps.keys().cloned().collect();
    names.extend(waiting.iter().map(|w| w.provider.clone()));
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|name| {
            let caps = state.gate.caps(&name);
            let w = waiting.iter().find(|w| w.provider == name);
            ProviderLinesView {
                max_concurrent: caps.max_concurrent,
                max_per_minute: caps.max_per_minute,
                in_flight: in_flight.get(&name).copied().unwrap_or(0),
                waiting_jobs: w.map_or(0, |w| w.waiting_jobs),
                waiting_users: w.map_or(0, |w| w.waiting_users),
                longest_lines: users
                    .iter()
                    .filter(|u| u.provider == name)
                    .map(|u| UserLineView {
                        user_id: u.user_id,
                        email: u.email.clone(),
                        waiting: u.waiting,
                        high: u.high,
                    })
                    .collect(),
                provider: name,
            }
        })
        .collect())
}

/// A provider's slots and lines.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderLinesView {
    pub provider: String,
    /// 0: no cap.
    pub max_concurrent: u32,
    /// 0: no cap.
    pub max_per_minute: u32,
    /// Its jobs submitting or running now.
    pub in_flight: i64,
    pub waiting_jobs: i64,
    pub waiting_users: i64,
    /// The longest lines (at most 10), longest first.
    pub longest_lines: Vec<UserLineView>,
}

/// One user's line at a provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserLineView {
    pub user_id: uuid::Uuid,
    pub email: Option<String>,
    pub waiting: i64,
    /// Of which high priority.
    pub high: i64,
}

/// [`ops::SystemSummary`] and the broker's queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemView {
    #[serde(flatten)]
    pub summary: ops::SystemSummary,
    /// Depths and consumers from RabbitMQ's management API, or why not.
    pub queues: QueueStats,
    /// Each capped provider's slots, and the users waiting for them.
    pub lines: Vec<ProviderLinesView>,
}
