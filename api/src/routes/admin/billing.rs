//! `/v1/admin/billing/events` (what each payment event did, those needing
//! attention first to look at) and `/v1/admin/users/{user}/waive` (pardon
//! what a user owes from a reversed payment).

use axum::extract::State;
use axum::Json;
use genq_store::store;
use genq_store::store::billing::{self, BillingEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::credits::{credits_view, CreditsView};
use crate::state::AppState;

/// Most events one listing returns.
const EVENTS_MAX: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BillingEventsParams {
    /// At most this many, newest first (1 to 500; 100 by default).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only events that need an operator (not credited, never by guess).
    pub attention: Option<bool>,
}

/// The payment provider's events of the last 30 days, newest first.
#[utoipa::path(
    get, path = "/v1/admin/billing/events", tag = "admin", operation_id = "list_billing_events",
    params(BillingEventsParams),
    responses(
        (status = 200, description = "The events and what each did", body = Vec<BillingEvent>),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn billing_events(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiQuery(params): ApiQuery<BillingEventsParams>,
) -> Result<Json<Vec<BillingEvent>>, ApiError> {
    let limit = match params.limit {
        None => 100,
        Some(l) if (1..=EVENTS_MAX).contains(&l) => l,
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be between 1 and {EVENTS_MAX}."),
            ))
        }
    };
    Ok(Json(
        billing::events(&state.pool, limit, params.attention.unwrap_or(false)).await?,
    ))
}

/// Owed credits to pardon.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaiveRequest {
    /// At most this many (1 to 1,000,000,000); absent: all that is owed.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(default, deserialize_with = "crate::extract::opt_integer")]
    pub amount: Option<i64>,
    #[schema(schema_with = super::credits::reason_schema)]
    pub reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WaiveResponse {
    /// What was waived (0 when nothing was owed).
    pub waived: i64,
    pub credits: CreditsView,
}

/// Waive what a user owes (admin role), audited with the admin as actor.
#[utoipa::path(
    post, path = "/v1/admin/users/{user}/waive", tag = "admin", operation_id = "waive_owed",
    params(("user" = String, Path, description = "The user's email (with an @), external ID (`sub`) or genq ID")),
    request_body(content = WaiveRequest, example = json!({"reason": "goodwill, ticket 12"})),
    responses(
        (status = 200, description = "Waived (possibly nothing)", body = WaiveResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn waive(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<WaiveRequest>,
) -> Result<Json<WaiveResponse>, ApiError> {
    let who = super::user_in_path(user)?;
    if body
        .amount
        .is_some_and(|a| !(1..=1_000_000_000).contains(&a))
    {
        return Err(ApiError::invalid(
            "amount",
            "amount must be between 1 and 1000000000.",
        ));
    }
    let reason = genq_core::domain::check_text("reason", &body.reason, 500)?;
    let target = store::find_user(&state.pool, &who)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    let waived = billing::waive_owed(
        &state.pool,
        target.id,
        body.amount,
        &admin.0.actor(),
        &reason,
    )
    .await?;
    tracing::info!(user_id = %target.id, waived, "owed credits waived");
    Ok(Json(WaiveResponse {
        waived,
        credits: credits_view(&state, target.id).await?,
    }))
}
