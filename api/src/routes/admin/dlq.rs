//! `/v1/admin/dlq`: the dead-letter archive, filtered and paged, and
//! replaying or discarding a letter.

use axum::extract::State;
use axum::Json;
use genq_store::store::dead_letters as dlq;
use genq_store::store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::page_limit;
use crate::state::AppState;

use super::MAX_AGE_SECS;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DlqParams {
    // The text filters refuse control characters (a 400); their pattern says so.
    /// Include replayed and discarded letters (when `state` is absent).
    pub all: Option<bool>,
    /// Only letters in this state: `open`, `replayed` or `discarded`.
    #[param(value_type = Option<DlqState>)]
    pub state: Option<String>,
    /// A substring of the reason (case-insensitive).
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub reason: Option<String>,
    /// The queue the message died in, exactly.
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub source_queue: Option<String>,
    /// The job's user: genq ID, identity provider `sub` or email, exactly.
    #[param(max_length = 320, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub user: Option<String>,
    /// Only letters received at least this many seconds ago (at most ten years).
    #[param(minimum = 0, maximum = 315_360_000)]
    pub older_than_secs: Option<u64>,
    /// A substring (case-insensitive) of the reason, the message, the source
    /// queue, the user's email or `sub`, or the job ID.
    #[param(max_length = 200, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    pub q: Option<String>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// Only letters with a greater ID: the next page after a page whose
    /// last letter had this ID (the list is in ID order).
    #[param(minimum = 0)]
    pub after_id: Option<i64>,
}

/// The state of a dead letter.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DlqState {
    Open,
    Replayed,
    Discarded,
}

/// A text filter: trimmed, empty as absent, bounded, no control characters.
fn filter_text(value: Option<String>, field: &str, max: usize) -> Result<Option<String>, ApiError> {
    // Checked before trimming: Rust's trim takes U+000B and U+0085 as
    // whitespace, and the documented pattern refuses every control character.
    let Some(raw) = value else { return Ok(None) };
    if raw.chars().count() > max || raw.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("{field} must be at most {max} characters, without control characters."),
        ));
    }
    let v = raw.trim();
    Ok((!v.is_empty()).then(|| v.to_owned()))
}

/// Dead letters archived from the broker, oldest first, narrowed by the filters.
#[utoipa::path(
    get, path = "/v1/admin/dlq", tag = "admin", operation_id = "list_dead_letters",
    params(DlqParams),
    responses(
        (status = 200, description = "Dead letters", body = Vec<dlq::DeadLetter>),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dlq_list(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiQuery(p): ApiQuery<DlqParams>,
) -> Result<Json<Vec<dlq::DeadLetter>>, ApiError> {
    let letter_state = match p.state.as_deref() {
        None => (!p.all.unwrap_or(false)).then(|| "open".to_owned()),
        Some(s @ ("open" | "replayed" | "discarded")) => Some(s.to_owned()),
        Some(_) => {
            return Err(ApiError::invalid(
                "state",
                "state must be open, replayed or discarded.",
            ))
        }
    };
    let older_than = match p.older_than_secs {
        Some(secs) if secs > MAX_AGE_SECS => {
            return Err(ApiError::invalid(
                "older_than_secs",
                format!("older_than_secs must be at most {MAX_AGE_SECS}."),
            ));
        }
        other => other.map(std::time::Duration::from_secs),
    };
    if p.after_id.is_some_and(|id| id < 0) {
        return Err(ApiError::invalid("after_id", "after_id must be 0 or more."));
    }
    let filter = dlq::Filter {
        state: letter_state,
        reason: filter_text(p.reason, "reason", 200)?,
        source_queue: filter_text(p.source_queue, "source_queue", 200)?,
        user: filter_text(p.user, "user", genq_core::domain::EMAIL_MAX)?,
        older_than,
        search: filter_text(p.q, "q", 200)?,
        after: p.after_id,
    };
    let letters = dlq::list_filtered(&state.pool, &filter, page_limit(p.limit)?).await?;
    Ok(Json(letters))
}

fn letter_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound("No such dead letter.".into()))
}

/// One dead letter.
#[utoipa::path(
    get, path = "/v1/admin/dlq/{id}", tag = "admin", operation_id = "get_dead_letter",
    params(("id" = i64, Path, description = "The dead letter's ID")),
    responses(
        (status = 200, description = "The dead letter", body = dlq::DeadLetter),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dlq_show(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<dlq::DeadLetter>, ApiError> {
    dlq::get(&state.pool, letter_id(&id)?)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("No such dead letter.".into()))
}

/// What a replay or discard did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResolutionView {
    pub id: i64,
    pub job_id: Option<Uuid>,
    /// False when nothing was done; `message` says why.
    pub done: bool,
    pub message: String,
}

fn resolution(r: Result<dlq::Resolution, StoreError>) -> Result<Json<ResolutionView>, ApiError> {
    match r {
        Ok(r) => Ok(Json(ResolutionView {
            id: r.id,
            job_id: r.job_id,
            done: r.done,
            message: r.message,
        })),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("No such dead letter.".into())),
        Err(e) => Err(e.into()),
    }
}

/// Run a dead letter's job again (reserving again if it was refunded).
#[utoipa::path(
    post, path = "/v1/admin/dlq/{id}/replay", tag = "admin", operation_id = "replay_dead_letter",
    params(("id" = i64, Path, description = "The dead letter's ID")),
    responses(
        (status = 200, description = "Replayed, or why not", body = ResolutionView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dlq_replay(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ResolutionView>, ApiError> {
    let replayed = dlq::replay(&state.pool, letter_id(&id)?, &admin.0.actor()).await;
    if replayed.as_ref().is_ok_and(|r| r.done) {
        state.outbox_bell.ring();
    }
    resolution(replayed)
}

/// Close a dead letter; its job, if still open, is closed and refunded.
#[utoipa::path(
    post, path = "/v1/admin/dlq/{id}/discard", tag = "admin", operation_id = "discard_dead_letter",
    params(("id" = i64, Path, description = "The dead letter's ID")),
    responses(
        (status = 200, description = "Discarded, or why not", body = ResolutionView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such dead letter", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn dlq_discard(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ResolutionView>, ApiError> {
    resolution(dlq::discard(&state.pool, letter_id(&id)?, &admin.0.actor()).await)
}
