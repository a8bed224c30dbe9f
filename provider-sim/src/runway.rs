//! The runway dialect: Runway's developer API as documented
//! (docs.dev.runwayml.com: api reference, errors, task failures):
//! `POST /v1/text_to_video` → `{"id"}`, `GET /v1/tasks/{id}` (PENDING,
//! THROTTLED, RUNNING, SUCCEEDED, FAILED + failureCode, CANCELLED),
//! `DELETE /v1/tasks/{id}`; Bearer auth and a required `X-Runway-Version`;
//! errors are `{"error": "…"}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{credential, rfc3339, with_retry_after, Cancel, Phase, Refusal, Sim};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/text_to_video", post(create))
        .route("/v1/image_to_video", post(create))
        .route("/v1/tasks/{id}", get(status).delete(delete))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Runway is shedding load (simulated)",
        ),
        Refusal::RateLimited { retry_after_secs } => with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "You have exceeded the rate limit (simulated)",
            ),
            retry_after_secs,
        ),
        Refusal::Rejected => error(
            StatusCode::BAD_REQUEST,
            "promptText: the prompt is not allowed (simulated)",
        ),
    }
}

/// The error Runway answers without Bearer auth or the version header.
fn refused_auth(headers: &HeaderMap) -> Option<Response> {
    if credential(headers, "Bearer").is_none() {
        return Some(error(StatusCode::UNAUTHORIZED, "The API key is not valid"));
    }
    if headers.get("x-runway-version").is_none() {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "The X-Runway-Version header is required",
        ));
    }
    None
}

async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = refused_auth(&headers) {
        return r;
    }
    let Some(prompt) = body["promptText"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "promptText: Required");
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // Runway has no idempotency key: every create is a new task.
    let (id, _) = sim.create(
        uuid::Uuid::new_v4().to_string(),
        None,
        prompt,
        None,
        json!({"model": body["model"]}),
    );
    Json(json!({"id": id})).into_response()
}

async fn status(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    sim.status_request();
    if let Some(r) = refused_auth(&headers) {
        return r;
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let Some(t) = sim.view(&id) else {
        return error(StatusCode::NOT_FOUND, "Task not found");
    };
    let mut body = json!({"id": t.id, "createdAt": rfc3339(t.created_at)});
    let word = match t.phase {
        Phase::Queued => "PENDING",
        Phase::Throttled { .. } => "THROTTLED",
        Phase::Running { progress } => {
            body["progress"] = json!(progress);
            "RUNNING"
        }
        Phase::Succeeded => {
            body["output"] = json!([t.video_url]);
            "SUCCEEDED"
        }
        Phase::Failed | Phase::Moderated | Phase::Aborted => {
            let (failure, code) = match t.phase {
                Phase::Moderated => (
                    "The prompt was flagged by content moderation (simulated).",
                    "SAFETY.INPUT.TEXT",
                ),
                Phase::Aborted => (
                    "The task could not be started in time (simulated).",
                    "INTERNAL",
                ),
                _ => (
                    "An unexpected error occurred (simulated).",
                    "INTERNAL.BAD_OUTPUT.CODE01",
                ),
            };
            body["failure"] = json!(failure);
            body["failureCode"] = json!(code);
            "FAILED"
        }
        Phase::Canceled => "CANCELLED",
        Phase::Unknown => "PAUSED",
    };
    body["status"] = json!(word);
    Json(body).into_response()
}

/// Cancels a pending, throttled or running task; deletes a finished one.
async fn delete(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = refused_auth(&headers) {
        return r;
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    match sim.cancel(&id) {
        Cancel::NotFound => error(StatusCode::NOT_FOUND, "Task not found"),
        Cancel::AlreadyDone => {
            sim.delete(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Cancel::Requested => StatusCode::NO_CONTENT.into_response(),
    }
}
