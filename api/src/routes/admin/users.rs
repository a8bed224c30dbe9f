//! `GET /v1/admin/users/{user}/diagnosis`: the whole diagnosis of a user, as
//! `genqctl diagnose` gives it.

use axum::extract::State;
use axum::Json;
use genq_store::ops;

use crate::auth::AdminViewer;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiPath;
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
