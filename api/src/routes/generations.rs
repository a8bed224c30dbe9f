//! `/v1/generations`: submit a video, read the caller's jobs, cancel one.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use genq_core::config::{ProviderChoice, Settings};
use genq_core::domain::{
    AspectRatio, DurationSeconds, InvalidInput, JobStatus, Priority, Prompt, VideoRequest,
};
use genq_core::trace::TraceParent;
use genq_store::store::{
    self, CancelOutcome, Job, JobCursor, JobEvent, NewSubmission, SubmitOutcome,
};
use serde::{Deserialize, Serialize};

use super::events::JobEventView;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::page_limit;
use crate::state::AppState;

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A request for one video.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGeneration {
    /// What the video shows; 1 to 2,000 characters once trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
    )]
    pub prompt: String,
    /// 1 to 60 seconds; 5 when absent.
    #[schema(minimum = 1, maximum = 60)]
    #[serde(default, deserialize_with = "crate::extract::opt_integer")]
    pub duration_seconds: Option<i64>,
    /// "16:9" (default), "9:16" or "1:1".
    #[schema(value_type = Option<AspectRatio>, example = "16:9")]
    pub aspect_ratio: Option<String>,
    /// One of the configured models (their names and prices: `GET /v1/credits`);
    /// absent means the default, at `video_cost`. The price is the model's.
    #[schema(
        min_length = 1,
        max_length = 40,
        pattern = "^[a-z0-9_-]+$",
        example = "fast"
    )]
    pub model: Option<String>,
    /// "normal" (default) or "high": ahead of the caller's normal jobs, and
    /// of users without high jobs, when a provider's slots are scarce. Only
    /// for users an operator (or their plan) gave priority; others get a
    /// 403 naming `priority`.
    #[schema(value_type = Option<Priority>, example = "normal")]
    pub priority: Option<String>,
}

impl CreateGeneration {
    fn parse(self) -> Result<VideoRequest, ApiError> {
        Ok(VideoRequest {
            prompt: Prompt::parse(&self.prompt)?,
            duration: match self.duration_seconds {
                Some(d) => DurationSeconds::parse(d)?,
                None => DurationSeconds::default(),
            },
            aspect_ratio: match self.aspect_ratio.as_deref() {
                Some(a) => AspectRatio::parse(a)?,
                None => AspectRatio::default(),
            },
            model: self.model,
            priority: match self.priority.as_deref() {
                Some(p) => Priority::parse(p)?,
                None => Priority::default(),
            },
        })
    }
}

/// Why a job failed or was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A presigned link to a video, and when it stops working.
#[derive(Debug, Serialize, ToSchema)]
pub struct VideoLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// A video job as the caller sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub status: JobStatus,
    pub prompt: String,
    pub cost: i64,
    /// The model the submission named; absent for the default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub duration_seconds: Option<u32>,
    pub aspect_ratio: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub provider_task_id: Option<String>,
    /// genq's own copy of the video, once succeeded (a path on this API;
    /// never the provider's link, which expires).
    pub result_url: Option<String>,
    pub error: Option<JobError>,
    pub priority: Priority,
    /// While the job waits in line for a slot (its provider's cap or the
    /// caller's limit): its place, 1 being next. Only on
    /// `GET /v1/generations/{id}`; an estimate that holds if nothing else
    /// arrives.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub queue_position: Option<i64>,
    /// With S3 storage: a short-lived link to the video in the bucket
    /// (`storage.presign_secs`), for a player that can't send the token.
    /// Only on `GET /v1/generations/{id}` of a succeeded job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_link: Option<VideoLink>,
    /// The timeline; only on `GET /v1/generations/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<JobEventView>>,
    /// The job's trace ID (W3C), when traces were on at its submission;
    /// operators' views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The job's trace in the deployment's trace viewer
    /// (`observability.trace_url_template`); operators' views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

impl JobView {
    pub fn from_job(job: Job) -> Self {
        let error = job.error_code.clone().map(|code| JobError {
            code,
            message: job.error_message.clone().unwrap_or_default(),
        });
        Self {
            id: job.id,
            status: job.status,
            duration_seconds: Some(job.params.duration_seconds),
            aspect_ratio: Some(job.params.aspect_ratio.as_str().to_owned()),
            prompt: job.prompt,
            cost: job.cost,
            model: job.model,
            created_at: job.created_at,
            updated_at: job.updated_at,
            provider_task_id: job.provider_task_id,
            result_url: job.video_key.as_ref().map(|_| video_path(job.id)),
            error,
            priority: job.priority,
            queue_position: None,
            video_link: None,
            events: None,
            trace_id: None,
            trace_url: None,
        }
    }

    /// Adds the job's trace ID and viewer link (operators' views).
    pub fn with_trace(mut self, trace_id: Option<&str>, settings: &Settings) -> Self {
        self.trace_id = trace_id.map(str::to_owned);
        self.trace_url = self
            .trace_id
            .as_deref()
            .and_then(|id| settings.observability.trace_url(id));
        self
    }

    pub fn with_events(mut self, events: Vec<JobEvent>) -> Self {
        self.events = Some(events.into_iter().map(|e| JobEventView::from(&e)).collect());
        self
    }
}

/// The headers of a submission.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documents the header; it is read from the HeaderMap
pub struct SubmitHeaders {
    /// Repeat a request safely: the same key and body return the same job.
    /// Printable ASCII, 1 to 200 characters, not starting or ending with a
    /// space; any other key is refused with 400.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 200,
        pattern = r"^[!-~]([ -~]*[!-~])?$"
    )]
    idempotency_key: Option<String>,
}

/// The `Idempotency-Key` header, checked against the documented rule:
/// printable ASCII, 1 to [`MAX_IDEMPOTENCY_KEY`] characters, no space first or last.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.as_bytes();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            format!("The Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY} characters."),
        ));
    }
    if !key.iter().all(|b| (b' '..=b'~').contains(b))
        || key.first() == Some(&b' ')
        || key.last() == Some(&b' ')
    {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "The Idempotency-Key must be printable ASCII, not starting or ending with a space.",
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// Submit a video: reserves its cost and queues it.
#[utoipa::path(
    post, path = "/v1/generations", tag = "generations", operation_id = "create_generation",
    request_body = CreateGeneration,
    params(SubmitHeaders),
    responses(
        (status = 202, description = "Accepted and queued (or an idempotent replay)", body = JobView),
        (status = 400, description = "Invalid body or Idempotency-Key (`field` names it)", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 402, description = "Not enough credits (`insufficient_credits`, with `required` and `available`), or credits owed from a reversed payment (`credits_owed`, with `owed`); the attempt is recorded as a rejected job", body = ErrorBody),
        (status = 403, description = "`priority: high` without the right to it (`field` is `priority`); nothing is recorded", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with a different body", body = ErrorBody),
        (status = 429, description = "Too many submissions; see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before submitting again"))),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, job_id, trace_id))]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateGeneration>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = body.parse()?;
    // The price and provider come from configuration, never from the client.
    let choice = provider_for(&state.settings, request.model.as_deref())?;
    if request.priority == Priority::High {
        let allowed = store::gate::user_limits(&state.pool, user.id)
            .await?
            .is_some_and(|l| l.priority);
        if !allowed {
            return Err(ApiError::ForbiddenField(InvalidInput::new(
                "priority",
                "High priority is not on your plan; leave priority out (or \"normal\").",
            )));
        }
    }
    // An allowance kept in Postgres is taken by the submitting statement
    // itself (one round trip, and a refusal changes nothing); one kept in
    // memory, here.
    let allowance = state.submit_allowance();
    if allowance.is_none() {
        state.check_memory_rate(user.id).map_err(rate_limited)?;
    }
    let job_id = Uuid::now_v7();
    let span = tracing::Span::current();
    span.record("job_id", tracing::field::display(job_id));
    genq_core::trace::job_attributes(&span, job_id, user.id, Some(choice.provider));
    // The job's trace: this span's context, kept with the job so that every
    // process's work on it joins the trace.
    let trace = TraceParent::of(&span);
    if let Some(t) = &trace {
        span.record("trace_id", tracing::field::display(t.trace_id()));
    }
    let started = std::time::Instant::now();
    let outcome = state
        .submitter
        .submit(&NewSubmission {
            job_id,
            user_id: user.id,
            request: &request,
            cost: choice.price.cost(request.duration.get()),
            idempotency_key: key.as_deref(),
            provider: choice.provider,
            allowance,
            trace: trace.as_ref(),
        })
        .await?;
    // The submitting statement, whatever its answer (accepted, refused).
    metrics::histogram!("genq_submit_seconds").record(started.elapsed().as_secs_f64());
    match outcome {
        SubmitOutcome::Accepted { job, replayed } => {
            metrics::counter!("genq_submissions_total", "outcome" => if replayed { "replayed" } else { "accepted" }).increment(1);
            if !replayed {
                state.outbox_bell.ring();
                tracing::info!("job accepted");
            }
            Ok((StatusCode::ACCEPTED, Json(JobView::from_job(job))).into_response())
        }
        SubmitOutcome::Rejected {
            job,
            required,
            available,
        } => {
            metrics::counter!("genq_submissions_total", "outcome" => "insufficient_credits")
                .increment(1);
            tracing::info!(required, available, "submission refused for credits");
            Err(ApiError::InsufficientCredits {
                required,
                available,
                job_id: job.id,
            })
        }
        SubmitOutcome::Owed { job, owed } => {
            metrics::counter!("genq_submissions_total", "outcome" => "credits_owed").increment(1);
            tracing::info!(owed, "submission refused: credits owed");
            Err(ApiError::CreditsOwed {
                owed,
                job_id: job.id,
            })
        }
        SubmitOutcome::IdempotencyConflict => Err(ApiError::IdempotencyConflict),
        SubmitOutcome::RateLimited { retry_after } => Err(rate_limited(retry_after)),
    }
}

/// The 429 of a spent allowance, counted.
fn rate_limited(wait: std::time::Duration) -> ApiError {
    metrics::counter!("genq_submissions_total", "outcome" => "rate_limited").increment(1);
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs() + 1,
    }
}

/// What a submission naming `model` runs on and costs; an unknown model is
/// a 400 on `model` listing the known ones.
fn provider_for<'a>(
    settings: &'a Settings,
    model: Option<&'a str>,
) -> Result<ProviderChoice<'a>, ApiError> {
    if let Some(choice) = settings.provider_for(model) {
        return Ok(choice);
    }
    let known: Vec<&str> = settings.models.keys().map(String::as_str).collect();
    let asked: String = model.unwrap_or_default().chars().take(60).collect();
    let message = if known.is_empty() {
        format!(
            "Unknown model {asked:?}: no models are configured; leave model out for the default."
        )
    } else {
        format!(
            "Unknown model {asked:?}; the models are: {} (or leave model out for the default).",
            known.join(", ")
        )
    };
    Err(ApiError::invalid("model", message))
}

/// Where the owner reads genq's copy of a job's video (relative to the API).
pub fn video_path(job_id: Uuid) -> String {
    format!("/v1/generations/{job_id}/video")
}

pub fn parse_job_id(raw: &str) -> Result<Uuid, ApiError> {
    // A malformed ID names no job of the caller's: the same answer as another user's job.
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("No such job.".into()))
}

/// One of the caller's jobs, with its timeline.
#[utoipa::path(
    get, path = "/v1/generations/{id}", tag = "generations", operation_id = "get_generation",
    params(("id" = Uuid, Path, description = "The job's ID")),
    responses(
        (status = 200, description = "The job and its timeline", body = JobView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such job of the caller's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = store::get_job(&state.pool, id)
        .await?
        .filter(|j| j.user_id == user.id)
        .ok_or_else(|| ApiError::NotFound("No such job.".into()))?;
    let events = store::job_events(&state.pool, id).await?;
    let position = store::gate::queue_position(&state.pool, &job, &state.gate).await?;
    let link = match job.video_key.as_deref() {
        Some(key) => state
            .videos
            .presigned(key)
            .await
            .map_err(|e| ApiError::Unavailable(e.into()))?,
        None => None,
    };
    let mut view = JobView::from_job(job).with_events(events);
    view.queue_position = position;
    view.video_link = link.map(|(url, expires_at)| VideoLink {
        url: url.into(),
        expires_at,
    });
    Ok(Json(view))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,16}_[0-9a-f]{32}$")]
    pub cursor: Option<String>,
    /// Only jobs in this status.
    #[param(value_type = Option<JobStatus>)]
    pub status: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobView>,
    pub next_cursor: Option<String>,
}

/// The caller's jobs, newest first, refused attempts included.
#[utoipa::path(
    get, path = "/v1/generations", tag = "generations", operation_id = "list_generations",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs", body = JobPage),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<JobPage>, ApiError> {
    let limit = page_limit(params.limit)?;
    let cursor = params
        .cursor
        .as_deref()
        .map(|c| {
            JobCursor::decode(c)
                .ok_or_else(|| ApiError::invalid("cursor", "The cursor is not valid."))
        })
        .transpose()?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                let known: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::invalid(
                    "status",
                    format!("status must be one of {}.", known.join(", ")),
                )
            })
        })
        .transpose()?;
    let (jobs, next) = store::list_jobs(&state.pool, user.id, limit, cursor, status).await?;
    Ok(Json(JobPage {
        items: jobs.into_iter().map(JobView::from_job).collect(),
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// Cancel a job that has not finished; its credits are refunded at once.
#[utoipa::path(
    post, path = "/v1/generations/{id}/cancel", tag = "generations", operation_id = "cancel_generation",
    params(("id" = Uuid, Path, description = "The job's ID")),
    responses(
        (status = 200, description = "Canceled and refunded", body = JobView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such job of the caller's", body = ErrorBody),
        (status = 409, description = "The job has already finished", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, job_id = %id))]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    match store::cancel_job(&state.pool, user.id, id, &user.actor()).await? {
        CancelOutcome::Canceled { job, at_provider } => {
            if at_provider {
                // A worker cancels the provider's task from the outbox.
                state.outbox_bell.ring();
            }
            tracing::info!("job canceled");
            Ok(Json(JobView::from_job(job)))
        }
        CancelOutcome::NotCancelable(job) => Err(ApiError::InvalidState(format!(
            "The job is {} and can no longer be canceled.",
            job.status
        ))),
        CancelOutcome::NotFound => Err(ApiError::NotFound("No such job.".into())),
    }
}
