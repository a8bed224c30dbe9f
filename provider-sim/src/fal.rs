//! The fal dialect: fal.ai's queue as documented (fal.ai/docs, model-apis
//! queue; api-reference/inference-api): `POST /{endpoint-id}` → `request_id`
//! and URLs; `GET /{owner}/{app}/requests/{id}/status` (202 IN_QUEUE with
//! `queue_position`, 202 IN_PROGRESS, 200 COMPLETED); the result at
//! `GET /{owner}/{app}/requests/{id}`; `PUT …/cancel` answering
//! CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND. `Authorization: Key`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{credential, with_retry_after, Cancel, Phase, Refusal, Sim};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new().fallback(handle)
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
                "Too many concurrent requests (simulated)",
            ),
            retry_after_secs,
        ),
        Refusal::Rejected => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": [{
                "loc": ["body", "prompt"],
                "msg": "the prompt is not allowed (simulated)",
                "type": "value_error",
            }]})),
        )
            .into_response(),
    }
}

async fn handle(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if credential(&headers, "Key").is_none() {
        return detail(
            StatusCode::UNAUTHORIZED,
            "No valid Authorization header (Key …)",
        );
    }
    let path = uri.path().trim_matches('/').to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    match (method, parts.as_slice()) {
        (Method::GET, [owner, app, "requests", id, "status"]) => {
            status(&sim, &format!("{owner}/{app}"), id).await
        }
        (Method::GET, [owner, app, "requests", id]) => {
            result(&sim, &format!("{owner}/{app}"), id).await
        }
        (Method::PUT, [owner, app, "requests", id, "cancel"]) => {
            cancel(&sim, &format!("{owner}/{app}"), id).await
        }
        (Method::POST, [owner, app, ..]) if !parts.contains(&"requests") => {
            let webhook = uri.query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "fal_webhook")
                    .map(|(_, v)| v.into_owned())
            });
            submit(&sim, &path, &format!("{owner}/{app}"), &body, webhook).await
        }
        _ => detail(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn urls(sim: &Sim, app: &str, id: &str) -> (String, String, String) {
    let response = format!("{}/{app}/requests/{id}", sim.base);
    (
        response.clone(),
        format!("{response}/status"),
        format!("{response}/cancel"),
    )
}

async fn submit(
    sim: &Arc<Sim>,
    endpoint: &str,
    app: &str,
    body: &[u8],
    webhook: Option<String>,
) -> Response {
    let input: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(prompt) = input["prompt"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]})),
        )
            .into_response();
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // fal's queue has no idempotency key: every submit is a new request.
    let id = uuid::Uuid::new_v4().to_string();
    let (id, _) = sim.create(
        id,
        None,
        prompt,
        None,
        json!({"app": app, "endpoint": endpoint, "callback_url": webhook}),
    );
    sim.created(&id).await;
    let (response_url, status_url, cancel_url) = urls(sim, app, &id);
    Json(json!({
        "status": "IN_QUEUE",
        "request_id": id,
        "response_url": response_url,
        "status_url": status_url,
        "cancel_url": cancel_url,
        "queue_position": 0,
    }))
    .into_response()
}

/// The request, if it exists under this app.
fn find(sim: &Sim, app: &str, id: &str) -> Option<crate::View> {
    sim.view(id).filter(|t| t.meta["app"] == app)
}

async fn status(sim: &Sim, app: &str, id: &str) -> Response {
    sim.status_request();
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let Some(t) = find(sim, app, id) else {
        return detail(StatusCode::NOT_FOUND, "Request not found");
    };
    let (response_url, status_url, cancel_url) = urls(sim, app, id);
    let mut body = json!({
        "request_id": id,
        "response_url": response_url,
        "status_url": status_url,
        "cancel_url": cancel_url,
    });
    let (code, word) = match t.phase {
        Phase::Queued => {
            body["queue_position"] = json!(0);
            (StatusCode::ACCEPTED, "IN_QUEUE")
        }
        Phase::Throttled { position } => {
            body["queue_position"] = json!(position);
            (StatusCode::ACCEPTED, "IN_QUEUE")
        }
        Phase::Running { .. } => {
            body["logs"] = json!([]);
            (StatusCode::ACCEPTED, "IN_PROGRESS")
        }
        Phase::Unknown => (StatusCode::ACCEPTED, "IN_REVIEW"),
        Phase::Succeeded => (StatusCode::OK, "COMPLETED"),
        failed => {
            let (error, error_type) = failure(failed, &t.prompt);
            body["error"] = json!(error);
            body["error_type"] = json!(error_type);
            (StatusCode::OK, "COMPLETED")
        }
    };
    body["status"] = json!(word);
    (code, Json(body)).into_response()
}

/// A finished request's error text and type.
fn failure(phase: Phase, _prompt: &str) -> (&'static str, &'static str) {
    match phase {
        Phase::Moderated => (
            "The content was flagged by a content checker.",
            "content_policy_violation",
        ),
        Phase::Aborted => (
            "The request timed out before a runner started it (simulated).",
            "request_timeout",
        ),
        Phase::Canceled => ("The request was cancelled.", "request_cancelled"),
        _ => (
            "Generation failed (simulated runner error).",
            "runner_error",
        ),
    }
}

async fn result(sim: &Sim, app: &str, id: &str) -> Response {
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let Some(t) = find(sim, app, id) else {
        return detail(StatusCode::NOT_FOUND, "Request not found");
    };
    match t.phase {
        Phase::Succeeded => Json(json!({
            "video": {
                "url": t.video_url,
                "content_type": "video/mp4",
                "file_name": "output.mp4",
                "file_size": crate::video_len(sim.config.video_bytes),
            }
        }))
        .into_response(),
        Phase::Moderated => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": [{
                "loc": ["body", "prompt"],
                "msg": "The content was flagged by a content checker.",
                "type": "content_policy_violation",
                "url": "https://docs.fal.ai/errors#content_policy_violation",
                "input": t.prompt,
            }]})),
        )
            .into_response(),
        Phase::Failed => detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            failure(Phase::Failed, "").0,
        ),
        Phase::Aborted => detail(StatusCode::GATEWAY_TIMEOUT, failure(Phase::Aborted, "").0),
        Phase::Canceled => detail(StatusCode::BAD_REQUEST, failure(Phase::Canceled, "").0),
        _ => detail(StatusCode::BAD_REQUEST, "Request is still in progress"),
    }
}

async fn cancel(sim: &Sim, app: &str, id: &str) -> Response {
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let answer = if find(sim, app, id).is_none() {
        Cancel::NotFound
    } else {
        sim.cancel(id)
    };
    let (code, word) = match answer {
        Cancel::Requested => (StatusCode::ACCEPTED, "CANCELLATION_REQUESTED"),
        Cancel::AlreadyDone => (StatusCode::BAD_REQUEST, "ALREADY_COMPLETED"),
        Cancel::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
    };
    (code, Json(json!({"status": word}))).into_response()
}
