//! `/v1/credits`: the caller's balance (can they afford a video?) and ledger.

use axum::extract::State;
use axum::Json;
use genq_core::domain::DURATION_DEFAULT_SECS;
use genq_store::store::{self, LedgerEntry};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use crate::routes::page_limit;
use crate::state::AppState;

/// The caller's credits, with what a video costs, so a front end can
/// disable its button and say why.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreditsView {
    pub available: i64,
    pub reserved: i64,
    pub spent: i64,
    /// Credits of a refunded or disputed payment that were already spent;
    /// while any are owed, no job starts (a purchase repays them first).
    /// Absent when nothing is owed.
    #[serde(skip_serializing_if = "is_zero")]
    #[schema(required = false, minimum = 1)]
    pub owed: i64,
    /// The credits that expire next, and when; absent when none expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiring: Option<Expiring>,
    /// What a video of the default provider (no `model`) costs.
    pub video_cost: i64,
    /// Whether the caller can afford a video of the default provider.
    pub can_generate: bool,
    /// The models a submission may name, with their prices; absent when
    /// none are configured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelPrice>,
}

/// A model a submission may name (`model`), and what one video of it costs.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelPrice {
    #[schema(example = "fast")]
    pub name: String,
    /// Credits a video of this model costs (at the asked length; by
    /// default, the default length).
    pub cost: i64,
    /// Set when the model is priced per second of video: `cost` is this
    /// times the length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_second: Option<i64>,
    /// Whether the caller can afford a video of this model.
    pub can_generate: bool,
}

/// Each configured model's price for a video of `duration_secs`, and
/// whether an account with `a` can pay it.
pub fn model_prices(state: &AppState, a: &store::Account, duration_secs: u32) -> Vec<ModelPrice> {
    state
        .settings
        .model_prices()
        .into_iter()
        .map(|(name, price)| {
            let cost = price.cost(duration_secs);
            ModelPrice {
                name: name.to_owned(),
                cost,
                cost_per_second: price.per_second(),
                can_generate: a.available >= cost && a.owed == 0,
            }
        })
        .collect()
}

/// The caller's balance.
#[utoipa::path(
    get, path = "/v1/credits", tag = "credits", operation_id = "get_credits",
    responses(
        (status = 200, description = "Balance, the cost of a video and each model's price", body = CreditsView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn balance(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<CreditsView>, ApiError> {
    Ok(Json(credits_view(&state, user.id).await?))
}

/// Credits that expire together.
#[derive(Debug, Serialize, ToSchema)]
pub struct Expiring {
    pub amount: i64,
    pub at: chrono::DateTime<chrono::Utc>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

pub async fn credits_view(state: &AppState, user_id: Uuid) -> Result<CreditsView, ApiError> {
    let a = store::account(&state.pool, user_id).await?;
    let expiring = store::lots::next_expiry(&state.pool, user_id)
        .await?
        .map(|(amount, at)| Expiring { amount, at });
    let cost = state.settings.credits.video_cost;
    Ok(CreditsView {
        available: a.available,
        reserved: a.reserved,
        spent: a.spent,
        owed: a.owed,
        expiring,
        video_cost: cost,
        can_generate: a.available >= cost && a.owed == 0,
        models: model_prices(state, &a, DURATION_DEFAULT_SECS),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    pub items: Vec<LedgerEntry>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerParams {
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// The caller's ledger entries, newest first.
#[utoipa::path(
    get, path = "/v1/credits/ledger", tag = "credits", operation_id = "list_ledger_entries",
    params(LedgerParams),
    responses(
        (status = 200, description = "A page of ledger entries", body = LedgerPage),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn ledger(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<LedgerParams>,
) -> Result<Json<LedgerPage>, ApiError> {
    let limit = page_limit(params.limit)?;
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::invalid("cursor", "The cursor is not valid."))
        })
        .transpose()?;
    let (items, next) = store::credits::ledger_entries(&state.pool, user.id, limit, before).await?;
    Ok(Json(LedgerPage {
        items,
        next_cursor: next.map(|id| id.to_string()),
    }))
}
