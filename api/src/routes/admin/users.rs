//! `/v1/admin/users/{user}/…`: the whole diagnosis of a user, as `genqctl
//! diagnose` gives it, and the user's limits (jobs at the provider at once,
//! the right to high priority).

use axum::extract::State;
use axum::Json;
use genq_core::config::MAX_ACTIVE_MAX;
use genq_store::ops;
use genq_store::store::{self, gate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

/// The whole diagnosis of a user: account, credits, jobs with timelines, audit, conclusion.
#[utoipa::path(
    get, path = "/v1/admin/users/{user}/diagnosis", tag = "admin", operation_id = "diagnose_user",
    params(("user" = String, Path, description = "The user's email (with an @), external ID (`sub`) or genq ID",
        example = "viewer@example.com")),
    responses(
        (status = 200, description = "The diagnosis", body = Object),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn diagnose(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<ops::Diagnosis>, ApiError> {
    let who = super::user_in_path(user)?;
    ops::diagnose(&state.pool, &who, state.settings.credits.video_cost)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))
}

/// A change to one user's limits; a field left out keeps its value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// At most this many of the user's jobs submitting or running at once
    /// (0: no limit; `null`: back to the deployment's
    /// `limits.max_active_per_user`).
    #[schema(minimum = 0, maximum = 10000, nullable)]
    #[serde(default, deserialize_with = "crate::extract::opt_opt_integer")]
    pub max_active: Option<Option<i64>>,
    /// May the user submit `priority: high`.
    pub priority: Option<bool>,
    #[schema(schema_with = super::credits::optional_reason_schema)]
    pub reason: Option<String>,
}

/// One user's limits as they apply now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    pub user_id: uuid::Uuid,
    /// The user's own limit (`null`: the deployment's; 0: none).
    pub max_active: Option<i32>,
    /// What applies: the user's own limit, or the deployment's (0: none).
    pub effective_max_active: u32,
    pub priority: bool,
    pub updated_by: Option<String>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl LimitsView {
    fn new(state: &AppState, user_id: uuid::Uuid, own: Option<gate::UserLimits>) -> Self {
        let max_active = own.as_ref().and_then(|l| l.max_active);
        Self {
            user_id,
            max_active,
            effective_max_active: state.gate.user_limit(max_active),
            priority: own.as_ref().is_some_and(|l| l.priority),
            updated_by: own.as_ref().map(|l| l.updated_by.clone()),
            updated_at: own.map(|l| l.updated_at),
        }
    }
}

/// Set a user's limits (admin role): how many of their jobs may be at the
/// provider at once, and whether they may ask for high priority. Audited
/// with the admin as actor; a raised limit starts waiting jobs at once.
#[utoipa::path(
    put, path = "/v1/admin/users/{user}/limits", tag = "admin", operation_id = "set_user_limits",
    params(("user" = String, Path, description = "The user's email (with an @), external ID (`sub`) or genq ID")),
    request_body(content = LimitsRequest, example = json!({"max_active": 4, "priority": true, "reason": "pro plan"})),
    responses(
        (status = 200, description = "The limits as they apply now", body = LimitsView),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn set_limits(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<LimitsRequest>,
) -> Result<Json<LimitsView>, ApiError> {
    let who = super::user_in_path(user)?;
    let max_active = match body.max_active {
        Some(Some(n)) if !(0..=i64::from(MAX_ACTIVE_MAX)).contains(&n) => {
            return Err(ApiError::invalid(
                "max_active",
                format!("max_active must be between 0 (no limit) and {MAX_ACTIVE_MAX}, or null."),
            ))
        }
        other => other.map(|v| v.map(|n| n as i32)),
    };
    let reason = body
        .reason
        .as_deref()
        .map(|r| genq_core::domain::check_text("reason", r, 500))
        .transpose()?;
    let target = store::find_user(&state.pool, &who)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    let change = gate::LimitsChange {
        max_active,
        priority: body.priority,
    };
    let after = gate::set_user_limits(
        &state.pool,
        target.id,
        &change,
        &admin.0.actor(),
        reason.as_deref(),
    )
    .await?;
    tracing::info!(user_id = %target.id, max_active = ?after.max_active, priority = after.priority, "user limits set");
    Ok(Json(LimitsView::new(&state, target.id, Some(after))))
}

/// A user's limits (admin or viewer role).
#[utoipa::path(
    get, path = "/v1/admin/users/{user}/limits", tag = "admin", operation_id = "get_user_limits",
    params(("user" = String, Path, description = "The user's email (with an @), external ID (`sub`) or genq ID")),
    responses(
        (status = 200, description = "The limits as they apply now", body = LimitsView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_limits(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<LimitsView>, ApiError> {
    let who = super::user_in_path(user)?;
    let target = store::find_user(&state.pool, &who)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    let own = gate::user_limits(&state.pool, target.id).await?;
    Ok(Json(LimitsView::new(&state, target.id, own)))
}
