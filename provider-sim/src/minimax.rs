//! The minimax dialect: MiniMax's video generation API as published
//! (platform.minimax.io openapi.json): `POST /v1/video_generation` →
//! `{"task_id", "base_resp"}`, `GET /v1/query/video_generation?task_id=`
//! (Preparing, Queueing, Processing, Success + `file_id`, Fail), `GET
//! /v1/files/retrieve?file_id=` → `file.download_url`; Bearer auth. Every
//! answer carries `base_resp {status_code, status_msg}`; most errors,
//! rate limits included, come as HTTP 200 with a nonzero code. No cancel.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

use crate::{credential, Phase, Refusal, Sim};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/video_generation", post(create))
        .route("/v1/query/video_generation", get(status))
        .route("/v1/files/retrieve", get(retrieve))
}

fn base(code: i64, message: &str) -> Value {
    json!({"status_code": code, "status_msg": message})
}

/// An error told in `base_resp`, with the HTTP status MiniMax uses for it.
fn error(status: StatusCode, code: i64, message: &str) -> Response {
    (status, Json(json!({"base_resp": base(code, message)}))).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            1013,
            "internal service error (simulated)",
        ),
        Refusal::RateLimited { .. } => error(
            StatusCode::OK,
            1002,
            "rate limit exceeded (RPM) (simulated)",
        ),
        Refusal::Rejected => error(
            StatusCode::OK,
            2013,
            "invalid params: the prompt is not allowed (simulated)",
        ),
    }
}

fn unauthorized(headers: &HeaderMap) -> Option<Response> {
    credential(headers, "Bearer")
        .is_none()
        .then(|| error(StatusCode::OK, 1004, "login fail: Please carry the API secret key in the 'Authorization' field of the request header"))
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
        return error(StatusCode::OK, 2013, "invalid params: prompt is required");
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // Task IDs are digits; the output's file ID is the same number.
    let id = rand::rng()
        .random_range(100_000_000_000_000u64..999_999_999_999_999)
        .to_string();
    let (id, _) = sim.create(id, None, prompt, None, json!({"model": body["model"]}));
    Json(json!({"task_id": id, "base_resp": base(0, "success")})).into_response()
}

async fn status(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    sim.status_request();
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let id = q.get("task_id").map(String::as_str).unwrap_or_default();
    let Some(t) = sim.view(id) else {
        return error(StatusCode::OK, 2013, "invalid params: task not found");
    };
    let ok = base(0, "success");
    let (status, base_resp) = match t.phase {
        Phase::Queued => ("Preparing", ok),
        Phase::Throttled { .. } => ("Queueing", ok),
        Phase::Running { .. } => ("Processing", ok),
        Phase::Succeeded => ("Success", ok),
        Phase::Failed | Phase::Canceled => {
            ("Fail", base(1000, "video generation failed (simulated)"))
        }
        Phase::Aborted => ("Fail", base(1001, "video generation timed out (simulated)")),
        Phase::Moderated => (
            "Fail",
            base(
                1027,
                "output video sensitive: the generated video was flagged (simulated)",
            ),
        ),
        Phase::Unknown => ("Reviewing", ok),
    };
    let mut body = json!({"task_id": t.id, "status": status, "base_resp": base_resp});
    if t.phase == Phase::Succeeded {
        body["file_id"] = json!(t.id);
        body["video_width"] = json!(1366);
        body["video_height"] = json!(768);
    }
    Json(body).into_response()
}

async fn retrieve(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = unauthorized(&headers) {
        return r;
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    let id = q.get("file_id").map(String::as_str).unwrap_or_default();
    match sim.view(id).filter(|t| t.phase == Phase::Succeeded) {
        Some(t) => Json(json!({
            "file": {
                "file_id": t.id.parse::<u64>().unwrap_or_default(),
                "bytes": crate::video_len(sim.config.video_bytes),
                "created_at": crate::unix_ms(t.created_at) / 1000,
                "filename": "output.mp4",
                "purpose": "video_generation",
                "download_url": t.video_url,
            },
            "base_resp": base(0, "success"),
        }))
        .into_response(),
        None => error(StatusCode::OK, 1000, "file not found"),
    }
}
