//! Live job events as Server-Sent Events: one job's timeline
//! (`/v1/generations/{id}/events`, ending after its terminal status) and
//! every event of the caller (`/v1/events`); plus the short-lived stream
//! tokens that `EventSource`, which can't send headers, opens them with.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::{request::Parts, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use futures::Stream;
use genq_core::domain::JobStatus;
use genq_store::store::{self, JobEvent};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::generations::parse_job_id;
use crate::auth::{self, AuthUser, BearerClaims};
use crate::error::{ApiError, ErrorBody};
use crate::events::{EventFeed, StreamSlot};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

/// Events read from the database per query while catching up.
const CATCH_UP_BATCH: i64 = 500;

/// One entry of a job's timeline: in `GET /v1/generations/{id}`'s `events`,
/// and as the `data` of an SSE `job` event (whose `id:` is `id`).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobEventView {
    /// The event's position; send it back as `Last-Event-ID` to resume.
    pub id: i64,
    pub job_id: Uuid,
    pub at: DateTime<Utc>,
    /// What happened: `status` for a status change, or a note such as
    /// `retry` or `archived`.
    pub kind: String,
    #[schema(value_type = Option<JobStatus>)]
    pub from_status: Option<String>,
    /// Set when the job's status changed; a terminal one (`rejected`,
    /// `succeeded`, `failed`, `canceled`, `dead`) ends a job's stream.
    #[schema(value_type = Option<JobStatus>)]
    pub to_status: Option<String>,
    pub message: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
}

impl From<&JobEvent> for JobEventView {
    fn from(e: &JobEvent) -> Self {
        Self {
            id: e.id,
            job_id: e.job_id,
            at: e.at,
            kind: e.kind.clone(),
            from_status: e.from_status.clone(),
            to_status: e.to_status.clone(),
            message: e.message.clone(),
            data: e.data.clone(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// A stream token (`POST /v1/stream-tokens`), for clients that can't
    /// send `Authorization` (a browser's `EventSource`).
    pub access_token: Option<String>,
    /// Resume after this event; the `Last-Event-ID` header wins when both
    /// are sent (a reconnecting `EventSource` sends the header).
    #[param(minimum = 0)]
    pub last_event_id: Option<i64>,
}

/// The header a reconnecting `EventSource` sends.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read from the headers by `StreamCaller`; here for the document
pub struct ResumeHeader {
    /// Resume after this event.
    #[param(rename = "Last-Event-ID", minimum = 0, required = false)]
    last_event_id: i64,
}

/// The caller of a stream: `Authorization: Bearer` with an API token, or
/// `?access_token=` with a stream token.
pub struct StreamCaller {
    user: AuthUser,
    resume: Option<i64>,
}

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ApiQuery(params) = ApiQuery::<StreamParams>::from_request_parts(parts, state).await?;
        let claims = match (auth::bearer(&parts.headers), params.access_token.as_deref()) {
            (Some(token), _) => auth::verify(token?, state).await?,
            (None, Some(token)) => auth::verify_stream(token, state).await?,
            (None, None) => {
                return Err(ApiError::Unauthorized(
                    "Send Authorization: Bearer <token>, or ?access_token=<stream token>.".into(),
                ))
            }
        };
        let query_resume = params
            .last_event_id
            .map(|id| parse_event_id(&id.to_string(), "last_event_id"))
            .transpose()?;
        let resume = match parts.headers.get("last-event-id") {
            Some(v) => Some(parse_event_id(v.to_str().unwrap_or(""), "Last-Event-ID")?),
            None => query_resume,
        };
        let user = AuthUser::from_claims(claims, state).await?;
        Ok(Self { user, resume })
    }
}

fn parse_event_id(raw: &str, field: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| {
            ApiError::invalid(field, format!("{field} must be an event id (0 or more)."))
        })
}

/// A stream token: opens event streams, nothing else.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamToken {
    /// Send as `?access_token=` to `/v1/events` or `/v1/generations/{id}/events`.
    pub token: String,
    /// The token opens streams until then; an open stream outlives it.
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(
    post, path = "/v1/stream-tokens", tag = "events",
    operation_id = "create_stream_token",
    responses(
        (status = 201, description = "A short-lived token that only opens event streams", body = StreamToken),
        (status = 401, description = "Missing or invalid token (a stream token can't mint another)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_stream_token(
    State(state): State<AppState>,
    BearerClaims(claims): BearerClaims,
) -> Result<impl IntoResponse, ApiError> {
    let ttl = state.settings.events.stream_token_ttl_secs as i64;
    let stream_claims = claims.for_stream(ttl);
    let expires_at = DateTime::from_timestamp(stream_claims.exp as i64, 0).unwrap_or_else(Utc::now);
    let token = stream_claims
        .mint(state.settings.auth.jwt_secret.expose_secret().as_bytes())
        .map_err(ApiError::Internal)?;
    Ok((StatusCode::CREATED, Json(StreamToken { token, expires_at })))
}

#[utoipa::path(
    get, path = "/v1/generations/{id}/events", tag = "events",
    operation_id = "stream_generation_events",
    params(("id" = Uuid, Path, description = "The job's ID"), StreamParams, ResumeHeader),
    responses(
        (status = 200, description = "Server-Sent Events: first a `retry:` hint, then each event of the job's timeline as `id: <event id>`, `event: job`, `data: <JobEventView JSON>`, from the start (or after `Last-Event-ID`); comments as heartbeats; the stream ends after the event with a terminal `to_status` (or when the server rotates it; resume with `Last-Event-ID`).",
            content_type = "text/event-stream", body = JobEventView),
        (status = 400, description = "Invalid Last-Event-ID or last_event_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such job of the caller's", body = ErrorBody),
        (status = 429, description = "Too many streams open for this user", body = ErrorBody),
    ),
    security(("bearer" = []), ())
)]
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id, job_id))]
pub async fn job_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    caller: StreamCaller,
) -> Result<impl IntoResponse, ApiError> {
    let job_id = parse_job_id(&id)?;
    tracing::Span::current().record("job_id", tracing::field::display(job_id));
    let job = store::get_job(&state.pool, job_id)
        .await?
        .filter(|j| j.user_id == caller.user.id)
        .ok_or_else(|| ApiError::NotFound("No such job.".into()))?;
    let slot = state.events.open(caller.user.id)?;
    let live = state.events.subscribe();
    let stream = JobStream {
        pool: state.pool.clone(),
        job_id,
        last: caller.resume.unwrap_or(0),
        was_terminal: job.status.is_terminal(),
    };
    Ok(sse(&state, slot, move |tx| stream.run(tx, live)))
}

#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    operation_id = "stream_events",
    params(StreamParams, ResumeHeader),
    responses(
        (status = 200, description = "Server-Sent Events of every job of the caller: a `retry:` hint, then `id: <event id>`, `event: job`, `data: <JobEventView JSON>` for each event from now on (or after `Last-Event-ID`), and heartbeat comments. It ends only when the server rotates it (`events.max_stream_secs`) or stops; the client then resumes with `Last-Event-ID`.",
            content_type = "text/event-stream", body = JobEventView),
        (status = 400, description = "Invalid Last-Event-ID or last_event_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 429, description = "Too many streams open for this user", body = ErrorBody),
    ),
    security(("bearer" = []), ())
)]
#[tracing::instrument(skip_all, fields(user_id = %caller.user.id))]
pub async fn user_events(
    State(state): State<AppState>,
    caller: StreamCaller,
) -> Result<impl IntoResponse, ApiError> {
    let slot = state.events.open(caller.user.id)?;
    // Subscribe before reading where the feed is, so nothing falls between.
    let live = state.events.subscribe();
    let last = match caller.resume.or_else(|| state.events.position()) {
        Some(id) => id,
        None => store::events::latest_id(&state.pool).await?,
    };
    let stream = UserStream {
        feed: state.events.clone(),
        pool: state.pool.clone(),
        user_id: caller.user.id,
        last,
        caught_up: caller.resume.is_none(),
    };
    Ok(sse(&state, slot, move |tx| stream.run(tx, live)))
}

/// A task writing frames into a channel, and the SSE response reading them:
/// the task ends when the client goes, when the stream is over, after
/// `events.max_stream_secs`, or when the API shuts down; the slot is given
/// back then.
fn sse<F, Fut>(state: &AppState, slot: StreamSlot, produce: F) -> impl IntoResponse
where
    F: FnOnce(mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Ended>> + Send + 'static,
{
    let settings = &state.settings.events;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let first = Event::default().retry(Duration::from_millis(settings.retry_ms));
    let closing = state.events.closing().clone();
    let lifetime = Duration::from_secs(settings.max_stream_secs);
    let work = produce(tx.clone());
    tokio::spawn(async move {
        let _slot = slot;
        if tx.send(first).await.is_err() {
            return;
        }
        tokio::select! {
            _ = closing.cancelled() => {}
            // The client went away (noticed when a heartbeat failed to go out).
            _ = tx.closed() => {}
            // Ended on purpose now and then; the client resumes where it was.
            _ = tokio::time::sleep(lifetime) => {}
            r = work => if let Err(Ended::Failed(e)) = r {
                tracing::warn!(error = %e, "an event stream ended on a database error; the client will resume");
            },
        }
    });
    let frames = frames(rx);
    Sse::new(frames).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(settings.heartbeat_secs))
            .text("heartbeat"),
    )
}

fn frames(rx: mpsc::Receiver<Event>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    })
}

/// Why a stream's task stopped early.
enum Ended {
    /// The client went away.
    Gone,
    Failed(store::StoreError),
}

impl From<store::StoreError> for Ended {
    fn from(e: store::StoreError) -> Self {
        Self::Failed(e)
    }
}

async fn send(tx: &mpsc::Sender<Event>, event: &JobEvent) -> Result<(), Ended> {
    let frame = Event::default()
        .id(event.id.to_string())
        .event("job")
        .json_data(JobEventView::from(event))
        .map_err(|_| Ended::Gone)?;
    tx.send(frame).await.map_err(|_| Ended::Gone)
}

fn is_terminal(event: &JobEvent) -> bool {
    event
        .to_status
        .as_deref()
        .and_then(JobStatus::parse)
        .is_some_and(JobStatus::is_terminal)
}

/// Waits until the feed mentions an event that `wanted` accepts (or lagged,
/// which may have hidden one); `false` when the feed closed.
async fn wait_for(
    live: &mut broadcast::Receiver<Arc<JobEvent>>,
    wanted: impl Fn(&JobEvent) -> bool,
) -> bool {
    loop {
        match live.recv().await {
            Ok(e) if wanted(&e) => return true,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return true,
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
}

struct JobStream {
    pool: sqlx::PgPool,
    job_id: Uuid,
    last: i64,
    /// The job was already terminal when the stream opened: a client that
    /// resumes after its terminal event gets an ended stream, not a hang.
    was_terminal: bool,
}

impl JobStream {
    /// Sends the job's events from the database (the truth), waking on the
    /// feed; ends after the terminal event. Reading the job's own rows
    /// after the last one sent never skips one (they are written under the
    /// job's row lock, in id order).
    async fn run(
        mut self,
        tx: mpsc::Sender<Event>,
        mut live: broadcast::Receiver<Arc<JobEvent>>,
    ) -> Result<(), Ended> {
        loop {
            let rows = store::events::job_after(&self.pool, self.job_id, self.last, CATCH_UP_BATCH)
                .await?;
            for row in &rows {
                send(&tx, row).await?;
                self.last = row.id;
                if is_terminal(row) {
                    return Ok(());
                }
            }
            if rows.len() as i64 == CATCH_UP_BATCH {
                continue;
            }
            if self.was_terminal {
                return Ok(());
            }
            let (job_id, last) = (self.job_id, self.last);
            if !wait_for(&mut live, |e| e.job_id == job_id && e.id > last).await {
                return Ok(());
            }
        }
    }
}

struct UserStream {
    feed: EventFeed,
    pool: sqlx::PgPool,
    user_id: Uuid,
    last: i64,
    /// Whether `last` is the feed's own position (nothing to read back).
    caught_up: bool,
}

impl UserStream {
    /// Catches up from the database after a resume or a lag, then forwards
    /// the feed's events of this user (in id order, as the feed sends them).
    async fn run(
        mut self,
        tx: mpsc::Sender<Event>,
        mut live: broadcast::Receiver<Arc<JobEvent>>,
    ) -> Result<(), Ended> {
        loop {
            while !self.caught_up {
                // Only what the feed has passed: above it, ids may still
                // have holes, and the feed will send those events in order.
                let upto = self.feed.position().unwrap_or(i64::MAX);
                let rows = store::events::user_after(
                    &self.pool,
                    self.user_id,
                    self.last,
                    upto,
                    CATCH_UP_BATCH,
                )
                .await?;
                for row in &rows {
                    send(&tx, row).await?;
                    self.last = row.id;
                }
                self.caught_up = (rows.len() as i64) < CATCH_UP_BATCH;
            }
            match live.recv().await {
                Ok(e) if e.user_id == self.user_id && e.id > self.last => {
                    send(&tx, &e).await?;
                    self.last = e.id;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.caught_up = false,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}
