//! The veo dialect: the Gemini API's video generation as published
//! (ai.google.dev api reference, google.longrunning.Operation):
//! `POST /v1beta/models/{model}:predictLongRunning` → `{"name"}`,
//! `GET /v1beta/models/{model}/operations/{id}` → the operation, `done` once
//! finished with `error` or `response.generateVideoResponse`
//! (`generatedSamples[].video.uri`, or `raiMediaFilteredReasons` when the
//! safety filters removed the video); the key in `x-goog-api-key`, also on
//! downloads; errors are `{"error": {code, message, status, details}}`, a 429
//! telling its wait in a `google.rpc.RetryInfo`. No cancel.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{Phase, Refusal, Sim, View};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1beta/models/{spec}", post(create))
        .route("/v1beta/models/{model}/operations/{id}", get(status))
}

/// Google's error shape.
fn error(status: StatusCode, word: &str, message: &str, details: Value) -> Response {
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "status": word,
        "details": details,
    }});
    (status, Json(body)).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later. (simulated)",
            json!([]),
        ),
        // Google says how long to wait in the body, not in Retry-After.
        Refusal::RateLimited { retry_after_secs } => error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota (simulated)",
            json!([{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{retry_after_secs}s"),
            }]),
        ),
        Refusal::Rejected => error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument: the prompt is not allowed (simulated)",
            json!([]),
        ),
    }
}

/// The key must come in `x-goog-api-key` (on downloads too).
pub(crate) fn has_key(headers: &HeaderMap) -> bool {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| !k.trim().is_empty())
}

fn unauthorized() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        "Method doesn't allow unregistered callers. Please use an API Key.",
        json!([]),
    )
}

fn operation(t: &View) -> Value {
    let model = t.meta["model"].as_str().unwrap_or("veo");
    let name = format!("models/{model}/operations/{}", t.id);
    let response = |inner: Value| {
        json!({"name": name, "done": true, "response": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": inner,
        }})
    };
    let failed = |code: u16, message: &str| json!({"name": name, "done": true, "error": {"code": code, "message": message}});
    match t.phase {
        Phase::Queued | Phase::Throttled { .. } | Phase::Running { .. } => json!({"name": name}),
        Phase::Succeeded => response(json!({
            "generatedSamples": [{"video": {"uri": t.video_url}}],
        })),
        Phase::Moderated => response(json!({
            "raiMediaFilteredCount": 1,
            "raiMediaFilteredReasons": [
                "Your prompt was blocked by our safety filters; try rephrasing it (simulated)."
            ],
        })),
        Phase::Failed => failed(
            13,
            "Video generation failed due to an internal error (simulated).",
        ),
        Phase::Aborted => failed(
            4,
            "The operation exceeded its deadline before it ran (simulated).",
        ),
        Phase::Canceled => failed(1, "The operation was cancelled (simulated)."),
        Phase::Unknown => json!({"name": name, "done": true, "response": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningPendingReview",
        }}),
    }
}

async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(spec): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let Some(model) = spec.strip_suffix(":predictLongRunning") else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Method not found.",
            json!([]),
        );
    };
    if !has_key(&headers) {
        return unauthorized();
    }
    let Some(prompt) = body["instances"][0]["prompt"].as_str() else {
        return refused(Refusal::Rejected);
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // No idempotency key: every call is a new operation.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (id, _) = sim.create(id, None, prompt, None, json!({"model": model}));
    let t = sim.view(&id).expect("just created");
    Json(json!({"name": operation(&t)["name"]})).into_response()
}

async fn status(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path((_model, id)): Path<(String, String)>,
) -> Response {
    sim.status_request();
    if !has_key(&headers) {
        return unauthorized();
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    match sim.view(&id) {
        Some(t) => Json(operation(&t)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Operation not found.",
            json!([]),
        ),
    }
}
