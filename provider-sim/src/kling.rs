//! The kling dialect: Kling's API as documented (app.klingai.com/global/dev
//! api reference: general info, text to video): `POST /v1/videos/text2video`
//! with `external_task_id` (unique per account), `GET
//! /v1/videos/text2video/{task_id or external_task_id}` (submitted,
//! processing, succeed, failed + `task_status_msg`); a Bearer JWT on every
//! request; every answer is `{"code", "message", "request_id", "data"}`.
//! There is no cancel endpoint.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{credential, unix_ms, with_retry_after, Phase, Refusal, Sim, View};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/videos/text2video", post(create))
        .route("/v1/videos/text2video/{id}", get(status))
}

fn envelope(status: StatusCode, code: u32, message: &str, data: Value) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "request_id": uuid::Uuid::new_v4().to_string(),
        "data": data,
    });
    (status, Json(body)).into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    envelope(status, code, message, Value::Null)
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            5001,
            "Server temporarily unavailable, usually due to maintenance (simulated)",
        ),
        Refusal::RateLimited { retry_after_secs } => with_retry_after(
            error(
                StatusCode::TOO_MANY_REQUESTS,
                1302,
                "The API request is too fast, exceeding the platform's rate limit (simulated)",
            ),
            retry_after_secs,
        ),
        Refusal::Rejected => error(
            StatusCode::BAD_REQUEST,
            1201,
            "Invalid request parameters: the prompt is not allowed (simulated)",
        ),
    }
}

/// The error Kling answers without a JWT-shaped Bearer token (each request is signed with HS256).
fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    match credential(headers, "Bearer") {
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            1001,
            "Authorization is empty",
        )),
        Some(t) if t.split('.').count() != 3 => Some(error(
            StatusCode::UNAUTHORIZED,
            1002,
            "Authorization is invalid",
        )),
        Some(_) => None,
    }
}

pub(crate) fn task(t: &View) -> Value {
    let (word, msg) = match t.phase {
        Phase::Queued | Phase::Throttled { .. } => ("submitted", ""),
        Phase::Running { .. } => ("processing", ""),
        Phase::Succeeded => ("succeed", ""),
        Phase::Failed => ("failed", "Generation failed, please try again (simulated)"),
        Phase::Moderated => (
            "failed",
            "Failure to pass the risk control system: the content is not allowed (simulated)",
        ),
        Phase::Aborted => (
            "failed",
            "Task timed out before it was processed (simulated)",
        ),
        Phase::Canceled => ("failed", "Task was stopped (simulated)"),
        Phase::Unknown => ("reviewing", ""),
    };
    let created = unix_ms(t.created_at);
    let mut data = json!({
        "task_id": t.id,
        "task_status": word,
        "task_status_msg": msg,
        "task_info": {"external_task_id": t.meta["external_task_id"]},
        "created_at": created,
        "updated_at": created,
    });
    if let Some(url) = &t.video_url {
        data["task_result"] =
            json!({"videos": [{"id": format!("v{}", t.id), "url": url, "duration": "5"}]});
    }
    data
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
        return error(StatusCode::BAD_REQUEST, 1201, "prompt is required");
    };
    let external = body["external_task_id"].as_str().map(str::to_owned);
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // external_task_id is unique per account: a second use is refused.
    if external.as_deref().is_some_and(|k| sim.view(k).is_some()) {
        return error(
            StatusCode::BAD_REQUEST,
            1201,
            "external_task_id already exists (simulated)",
        );
    }
    let id = (uuid::Uuid::new_v4().as_u128() % 10u128.pow(18)).to_string();
    let (id, _) = sim.create(
        id,
        external.clone(),
        prompt,
        None,
        json!({"external_task_id": external, "model": body["model_name"], "callback_url": body["callback_url"]}),
    );
    sim.created(&id).await;
    let t = sim.view(&id).expect("just created");
    envelope(StatusCode::OK, 0, "SUCCEED", task(&t))
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
        Some(t) => envelope(StatusCode::OK, 0, "SUCCEED", task(&t)),
        None => error(
            StatusCode::NOT_FOUND,
            1203,
            "The requested resource does not exist (simulated)",
        ),
    }
}
