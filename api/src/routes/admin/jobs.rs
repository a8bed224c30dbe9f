//! `/v1/admin/jobs`: jobs of every user, one with its timeline and ledger
//! rows, and canceling one with its refund.

use axum::extract::State;
use axum::Json;
use genq_core::domain::JobStatus;
use genq_store::ops;
use genq_store::store::{self};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::generations::JobView;
use crate::routes::page_limit;
use crate::state::AppState;

use super::MAX_AGE_SECS;

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
    let trace_id = job.trace_id().map(str::to_owned);
    Ok(Json(
        JobView::from_job(job)
            .with_events(events)
            .with_trace(trace_id.as_deref(), &state.settings),
    ))
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
