//! The seedance dialect: BytePlus ModelArk's video generation as documented
//! (docs.byteplus.com ModelArk: create, retrieve and cancel a video
//! generation task): `POST /api/v3/contents/generations/tasks` → `{"id"}`,
//! `GET …/tasks/{id}` (queued, running, succeeded + `content.video_url`,
//! failed + `error {code, message}`, cancelled, expired), `DELETE
//! …/tasks/{id}` (cancels a queued task; refused while running; removes a
//! finished one); Bearer auth; errors are `{"error": {code, message, type}}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{credential, Cancel, Phase, Refusal, Sim, View};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/api/v3/contents/generations/tasks", post(create))
        .route(
            "/api/v3/contents/generations/tasks/{id}",
            get(status).delete(delete),
        )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        json!({"error": {"code": code, "message": message, "param": "", "type": "BadRequest"}});
    (status, Json(body)).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServerOverloaded",
            "The service is overloaded; try again later (simulated).",
        ),
        // ModelArk says which limit in the code; it sends no Retry-After.
        Refusal::RateLimited { .. } => error(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimitExceeded.EndpointRPMExceeded",
            "The request rate of this endpoint exceeded its RPM limit (simulated).",
        ),
        Refusal::Rejected => error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "A parameter in the request is invalid: the prompt is not allowed (simulated).",
        ),
    }
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    credential(headers, "Bearer").is_none().then(|| {
        error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "The API key in the request is missing or invalid.",
        )
    })
}

pub(crate) fn task(t: &View) -> Value {
    let failed = |code: &str, message: &str| json!({"code": code, "message": message});
    let (status, error) = match t.phase {
        Phase::Queued | Phase::Throttled { .. } => ("queued", Value::Null),
        Phase::Running { .. } => ("running", Value::Null),
        Phase::Succeeded => ("succeeded", Value::Null),
        Phase::Failed => (
            "failed",
            failed("InternalServiceError", "The video could not be generated (simulated)."),
        ),
        Phase::Moderated => (
            "failed",
            failed(
                "OutputVideoSensitiveContentDetected",
                "The request failed because the output video may contain sensitive information (simulated).",
            ),
        ),
        Phase::Aborted => ("expired", Value::Null),
        Phase::Canceled => ("cancelled", Value::Null),
        Phase::Unknown => ("paused", Value::Null),
    };
    let created = crate::unix_ms(t.created_at) / 1000;
    let mut body = json!({
        "id": t.id,
        "model": t.meta["model"],
        "status": status,
        "error": error,
        "created_at": created,
        "updated_at": created,
    });
    if let Some(url) = &t.video_url {
        body["content"] = json!({"video_url": url});
        body["usage"] = json!({"completion_tokens": 108900, "total_tokens": 108900});
    }
    body
}

async fn create(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    let prompt = body["content"].as_array().and_then(|items| {
        items
            .iter()
            .find(|i| i["type"] == "text")
            .and_then(|i| i["text"].as_str())
    });
    let Some(prompt) = prompt else {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            "content is required",
        );
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    let id = format!(
        "cgt-{}-{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..5]
    );
    let meta = json!({"model": body["model"], "callback_url": body["callback_url"]});
    let (id, _) = sim.create(id, None, prompt, None, meta);
    sim.created(&id).await;
    Json(json!({"id": id})).into_response()
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
        Some(t) => Json(task(&t)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The task does not exist.",
        ),
    }
}

/// Cancels a queued task, refuses a running one, and deletes a finished one.
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
    let Some(t) = sim.view(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The task does not exist.",
        );
    };
    match t.phase {
        Phase::Queued | Phase::Throttled { .. } => {
            if sim.cancel(&id) == Cancel::NotFound {
                return error(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    "The task does not exist.",
                );
            }
            Json(json!({})).into_response()
        }
        Phase::Running { .. } | Phase::Unknown => error(
            StatusCode::CONFLICT,
            "InvalidAction.TaskRunning",
            "A running task cannot be cancelled (simulated).",
        ),
        _ => {
            sim.delete(&id);
            Json(json!({})).into_response()
        }
    }
}
