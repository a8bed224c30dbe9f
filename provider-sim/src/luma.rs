//! The luma dialect: Luma's Dream Machine API as published
//! (github.com/lumalabs/lumaai-api openapi.yaml; lumalabs/lumaai-python):
//! `POST /dream-machine/v1/generations` → a Generation (201),
//! `GET /dream-machine/v1/generations/{id}` (state queued, dreaming,
//! completed, failed + `state_reason`), `DELETE …/{id}`; Bearer auth;
//! errors are `{"detail": "…"}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{credential, rfc3339, with_retry_after, Phase, Refusal, Sim, View};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/dream-machine/v1/generations", post(create))
        .route("/dream-machine/v1/generations/video", post(create))
        .route(
            "/dream-machine/v1/generations/{id}",
            get(status).delete(delete),
        )
}

fn detail(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({"detail": detail}))).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => detail(StatusCode::SERVICE_UNAVAILABLE, "simulated outage"),
        Refusal::RateLimited { retry_after_secs } => with_retry_after(
            detail(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit exceeded (simulated)",
            ),
            retry_after_secs,
        ),
        Refusal::Rejected => detail(
            StatusCode::BAD_REQUEST,
            "Invalid request: the prompt is too long or malformed (simulated)",
        ),
    }
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    match credential(headers, "Bearer") {
        Some(_) => None,
        None => Some(detail(StatusCode::UNAUTHORIZED, "Invalid API key provided")),
    }
}

pub(crate) fn generation(t: &View) -> Value {
    let (state, reason) = match t.phase {
        Phase::Queued | Phase::Throttled { .. } => ("queued", None),
        Phase::Running { .. } => ("dreaming", None),
        Phase::Succeeded => ("completed", None),
        Phase::Failed => ("failed", Some("Generation failed (simulated)")),
        Phase::Moderated => (
            "failed",
            Some("400: prompt not allowed because advanced moderation failed (simulated)"),
        ),
        Phase::Aborted => (
            "failed",
            Some("Generation timed out in the queue (simulated)"),
        ),
        Phase::Canceled => ("failed", Some("Generation was stopped (simulated)")),
        Phase::Unknown => ("pending_review", None),
    };
    let assets = match &t.video_url {
        Some(url) => json!({"video": url}),
        None => Value::Null,
    };
    json!({
        "id": t.id,
        "generation_type": "video",
        "state": state,
        "state_reason": reason,
        "created_at": rfc3339(t.created_at),
        "assets": assets,
        "model": t.meta["model"],
        "request": {"prompt": t.prompt, "model": t.meta["model"]},
    })
}

async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let Some(prompt) = body["prompt"].as_str() else {
        return detail(StatusCode::BAD_REQUEST, "prompt is required");
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // Luma has no idempotency key: every create is a new generation.
    let (id, _) = sim.create(
        uuid::Uuid::new_v4().to_string(),
        None,
        prompt,
        None,
        json!({"model": body["model"], "callback_url": body["callback_url"]}),
    );
    sim.created(&id).await;
    let t = sim.view(&id).expect("just created");
    (StatusCode::CREATED, Json(generation(&t))).into_response()
}

async fn status(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    sim.status_request();
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    match sim.view(&id) {
        Some(t) => Json(generation(&t)).into_response(),
        None => detail(StatusCode::NOT_FOUND, "Generation not found"),
    }
}

/// Luma has no cancel: deleting is the only way to let a generation go.
async fn delete(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    sim.cancel(&id);
    if sim.delete(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        detail(StatusCode::NOT_FOUND, "Generation not found")
    }
}
