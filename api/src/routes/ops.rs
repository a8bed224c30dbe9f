//! `/v1/admin/...` operator endpoints: diagnose a user, jobs across users,
//! the dead-letter archive, ledger verification. Same logic as `genqctl`.

use axum::extract::State;
use axum::Json;
use genq_shared::domain::JobStatus;
use genq_shared::ops;
use genq_shared::queues::{queue_stats, QueueStats};
use genq_shared::store::dead_letters as dlq;
use genq_shared::store::{self, StoreError, UserRef};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::generations::JobView;
use crate::routes::page_limit;
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
    // No user has control characters in their names; don't send them to SQL.
    if user.chars().any(char::is_control) || user.len() > genq_shared::domain::EMAIL_MAX {
        return Err(ApiError::NotFound("No such user.".into()));
    }
    let who = if user.contains('@') {
        UserRef::Email(user)
    } else {
        UserRef::from_id(&user)
    };
    ops::diagnose(&state.pool, &who, state.settings.credits.video_cost)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))
}

/// The largest age filter: ten years, far inside Postgres' interval range.
const MAX_AGE_SECS: u64 = 315_360_000;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AdminJobParams {
    #[param(value_type = Option<JobStatus>)]
    pub status: Option<String>,
    /// Only jobs not updated for this many seconds (at most ten years).
    #[param(minimum = 0, maximum = 315_360_000)]
    pub older_than_secs: Option<u64>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// Jobs of every user, least recently updated first.
#[utoipa::path(
    get, path = "/v1/admin/jobs", tag = "admin", operation_id = "admin_list_jobs",
    params(AdminJobParams),
    responses(
        (status = 200, description = "Jobs", body = Vec<JobView>),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn jobs(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiQuery(p): ApiQuery<AdminJobParams>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let status = p
        .status
        .as_deref()
        .map(|s| JobStatus::parse(s).ok_or_else(|| ApiError::invalid("status", "Unknown status.")))
        .transpose()?;
    let older = match p.older_than_secs {
        Some(secs) if secs > MAX_AGE_SECS => {
            return Err(ApiError::invalid(
                "older_than_secs",
                format!("older_than_secs must be at most {MAX_AGE_SECS}."),
            ));
        }
        other => other.map(std::time::Duration::from_secs),
    };
    let jobs = ops::list_jobs(&state.pool, status, older, page_limit(p.limit)?).await?;
    Ok(Json(jobs.into_iter().map(JobView::from_job).collect()))
}

/// Any user's job, with its timeline.
#[utoipa::path(
    get, path = "/v1/admin/jobs/{id}", tag = "admin", operation_id = "admin_get_job",
    params(("id" = Uuid, Path, description = "The job's ID")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = crate::routes::generations::parse_job_id(&id)?;
    let job = store::get_job(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such job.".into()))?;
    let events = store::job_events(&state.pool, id).await?;
    Ok(Json(JobView::from_job(job).with_events(events)))
}

/// Any user's job's ledger entries, oldest first: what the job reserved,
/// spent and refunded.
#[utoipa::path(
    get, path = "/v1/admin/jobs/{id}/ledger", tag = "admin", operation_id = "admin_job_ledger",
    params(("id" = Uuid, Path, description = "The job's ID")),
    responses(
        (status = 200, description = "The job's ledger entries", body = Vec<store::LedgerEntry>),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn job_ledger(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Vec<store::LedgerEntry>>, ApiError> {
    let id = crate::routes::generations::parse_job_id(&id)?;
    if store::get_job(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("No such job.".into()));
    }
    Ok(Json(
        store::credits::job_ledger_entries(&state.pool, id).await?,
    ))
}

/// Cancel any user's job that has not finished; its credits are refunded at
/// once, the timeline and the audit log name the admin.
#[utoipa::path(
    post, path = "/v1/admin/jobs/{id}/cancel", tag = "admin", operation_id = "admin_cancel_job",
    params(("id" = Uuid, Path, description = "The job's ID")),
    responses(
        (status = 200, description = "Canceled and refunded", body = JobView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has already finished", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id, job_id = %id))]
pub async fn job_cancel(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = crate::routes::generations::parse_job_id(&id)?;
    let job = store::get_job(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such job.".into()))?;
    let actor = admin.0.actor();
    match store::cancel_job(&state.pool, job.user_id, id, &actor).await? {
        store::CancelOutcome::Canceled { job, at_provider } => {
            if at_provider {
                // A worker cancels the provider's task from the outbox.
                state.outbox_bell.ring();
            }
            store::credits::audit(
                &state.pool,
                &actor,
                "job.cancel",
                job.user_id,
                Some(job.id),
                serde_json::json!({"refunded": job.cost}),
            )
            .await?;
            tracing::info!("job canceled by an admin");
            Ok(Json(JobView::from_job(job)))
        }
        store::CancelOutcome::NotCancelable(job) => Err(ApiError::InvalidState(format!(
            "The job is {} and can no longer be canceled.",
            job.status
        ))),
        store::CancelOutcome::NotFound => Err(ApiError::NotFound("No such job.".into())),
    }
}

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
        user: filter_text(p.user, "user", genq_shared::domain::EMAIL_MAX)?,
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
    }))
}

/// [`ops::SystemSummary`] and the broker's queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemView {
    #[serde(flatten)]
    pub summary: ops::SystemSummary,
    /// Depths and consumers from RabbitMQ's management API, or why not.
    pub queues: QueueStats,
}
