//! The taskid dialect (the default): genq's own TaskID API, unchanged for
//! existing callers: `POST /v1/tasks` (`Idempotency-Key`), `GET /v1/tasks/{id}`,
//! `POST /v1/tasks/{id}/cancel`; errors are `{"code", "message"}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::{with_retry_after, Cancel, Phase, Refusal, Sim};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/tasks", post(submit))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/cancel", post(cancel))
}

#[derive(Deserialize)]
struct SubmitBody {
    prompt: String,
    #[serde(default)]
    idempotency_key: Option<String>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "simulated outage",
        ),
        Refusal::RateLimited { retry_after_secs } => with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "slow down (simulated)",
            ),
            retry_after_secs,
        ),
        Refusal::Rejected => error(
            StatusCode::BAD_REQUEST,
            "content_policy",
            "the prompt violates the content policy (simulated)",
        ),
    }
}

async fn submit(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<SubmitBody>,
) -> Response {
    if let Err(r) = sim.admit(&body.prompt).await {
        return refused(r);
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(body.idempotency_key)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let id = format!("task_{}", uuid::Uuid::new_v4().simple());
    let (id, replay) = sim.create(id, Some(key), &body.prompt, None, json!({}));
    let code = if replay {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (code, Json(json!({"task_id": id}))).into_response()
}

async fn status(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    sim.status_request();
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let Some(task) = sim.view(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such task");
    };
    let body = match task.phase {
        Phase::Queued => json!({"status": "pending"}),
        Phase::Throttled { position } => json!({"status": "queued", "queue_position": position}),
        Phase::Running { .. } => json!({"status": "running"}),
        Phase::Succeeded => json!({"status": "succeeded", "video_url": task.video_url}),
        Phase::Failed => {
            json!({"status": "failed", "error": "content policy violation (simulated)"})
        }
        Phase::Moderated => json!({
            "status": "failed",
            "error": "The prompt was refused by content moderation (simulated).",
            "error_code": "content_rejected",
        }),
        Phase::Aborted => json!({
            "status": "aborted",
            "error": "The deadline passed before the task started (simulated).",
        }),
        Phase::Canceled => json!({"status": "canceled", "error": "canceled"}),
        Phase::Unknown => json!({"status": "paused"}),
    };
    Json(body).into_response()
}

async fn cancel(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    match sim.cancel(&id) {
        Cancel::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such task"),
        _ => Json(json!({"task_id": id, "status": "canceled"})).into_response(),
    }
}
