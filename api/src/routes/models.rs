//! `GET /v1/models`: what a video would cost, for the default provider and
//! each model the caller may name, at a given length.

use axum::extract::State;
use axum::Json;
use genq_core::domain::{DurationSeconds, DURATION_DEFAULT_SECS};
use genq_store::store;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::routes::credits::{model_prices, ModelPrice};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ModelsParams {
    /// The video's length, as it would be submitted (1 to 60; 5 by default).
    #[param(minimum = 1, maximum = 60)]
    pub duration_seconds: Option<i64>,
}

/// What a video of `duration_seconds` costs, by model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelsView {
    pub duration_seconds: u32,
    /// A video of the default provider (no `model`).
    pub default_cost: i64,
    /// Whether the caller can afford a video of the default provider.
    pub can_generate: bool,
    /// The models a submission may name (empty when none are configured).
    pub models: Vec<ModelPrice>,
}

/// The prices of a video, for the default provider and each model.
#[utoipa::path(
    get, path = "/v1/models", tag = "credits", operation_id = "list_models",
    params(ModelsParams),
    responses(
        (status = 200, description = "What a video of that length would cost, and whether the caller can pay it", body = ModelsView),
        (status = 400, description = "Invalid `duration_seconds`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn models(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<ModelsParams>,
) -> Result<Json<ModelsView>, ApiError> {
    let duration = match params.duration_seconds {
        Some(d) => DurationSeconds::parse(d)?.get(),
        None => DURATION_DEFAULT_SECS,
    };
    let a = store::account(&state.pool, user.id).await?;
    let default_cost = state.settings.credits.video_cost;
    Ok(Json(ModelsView {
        duration_seconds: duration,
        default_cost,
        can_generate: a.available >= default_cost && a.owed == 0,
        models: model_prices(&state, &a, duration),
    }))
}
