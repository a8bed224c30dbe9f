//! The replicate dialect: Replicate's predictions API as documented
//! (replicate.com/docs/reference/http, topics/predictions/lifecycle):
//! `POST /v1/models/{owner}/{name}/predictions`, `POST /v1/predictions`,
//! `GET /v1/predictions/{id}`, `POST /v1/predictions/{id}/cancel`; Bearer auth;
//! `Cancel-After` honoured (aborted before start, canceled while running);
//! errors are problem details `{"title", "detail", "status"}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::{credential, rfc3339, with_retry_after, Cancel, Phase, Refusal, Sim, View};

pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/predictions", post(create_versioned))
        .route(
            "/v1/models/{owner}/{name}/predictions",
            post(create_official),
        )
        .route("/v1/predictions/{id}", get(status))
        .route("/v1/predictions/{id}/cancel", post(cancel))
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let mut r = (
        status,
        Json(json!({"title": title, "detail": detail, "status": status.as_u16()})),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/problem+json".parse().expect("static"),
    );
    r
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::Unavailable => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            "simulated outage",
        ),
        Refusal::RateLimited { retry_after_secs } => with_retry_after(
            problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Request was throttled.",
                &format!("Request was throttled. Expected available in {retry_after_secs} second."),
            ),
            retry_after_secs,
        ),
        Refusal::Rejected => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Input validation failed",
            "- input.prompt: the prompt is not allowed (simulated)",
        ),
    }
}

fn unauthenticated() -> Response {
    problem(
        StatusCode::UNAUTHORIZED,
        "Unauthenticated",
        "You did not pass a valid authentication token",
    )
}

fn authorized(headers: &HeaderMap) -> bool {
    credential(headers, "Bearer").is_some() || credential(headers, "Token").is_some()
}

/// Go-style durations as Replicate takes them: `90s`, `5m`, `1h30m`, `500ms`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
        rest = &rest[unit_len..];
    }
    Some(total)
}

async fn create_versioned(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["version"].as_str().unwrap_or_default().to_owned();
    create(sim, headers, body, model).await
}

async fn create_official(
    State(sim): State<Arc<Sim>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    create(sim, headers, body, format!("{owner}/{name}")).await
}

async fn create(sim: Arc<Sim>, headers: HeaderMap, body: Value, model: String) -> Response {
    if !authorized(&headers) {
        return unauthenticated();
    }
    let Some(prompt) = body["input"]["prompt"].as_str() else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Input validation failed",
            "- input: prompt is required",
        );
    };
    let cancel_after = match headers
        .get("cancel-after")
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => None,
        Some(v) => match parse_duration(v) {
            Some(d) if d >= Duration::from_secs(5) => Some(d),
            _ => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Cancel-After header",
                    "Cancel-After must be a duration of at least 5s, such as 30s or 5m",
                )
            }
        },
    };
    if let Err(r) = sim.admit(prompt).await {
        return refused(r);
    }
    // Replicate has no idempotency key: every create is a new prediction.
    let id: String = uuid::Uuid::new_v4().simple().to_string()[..26].to_owned();
    let meta = json!({"model": model, "callback_url": body["webhook"]});
    let (id, _) = sim.create(id, None, prompt, cancel_after, meta);
    sim.created(&id).await;
    let view = sim.view(&id).expect("just created");
    (StatusCode::CREATED, Json(prediction(&sim, &view))).into_response()
}

pub(crate) fn prediction(sim: &Sim, t: &View) -> Value {
    let (status, output, error) = match t.phase {
        Phase::Queued | Phase::Throttled { .. } => ("starting", Value::Null, Value::Null),
        Phase::Running { .. } => ("processing", Value::Null, Value::Null),
        Phase::Succeeded => ("succeeded", json!(t.video_url), Value::Null),
        Phase::Failed => (
            "failed",
            Value::Null,
            json!("Prediction failed: CUDA out of memory (simulated)"),
        ),
        Phase::Moderated => (
            "failed",
            Value::Null,
            json!("NSFW content detected. Try running it again, or try a different prompt. (simulated)"),
        ),
        Phase::Aborted => ("aborted", Value::Null, Value::Null),
        Phase::Canceled => ("canceled", Value::Null, Value::Null),
        Phase::Unknown => ("booting", Value::Null, Value::Null),
    };
    let get = format!("{}/v1/predictions/{}", sim.base, t.id);
    json!({
        "id": t.id,
        "model": t.meta["model"],
        "version": t.meta["model"],
        "input": {"prompt": t.prompt},
        "logs": "",
        "output": output,
        "data_removed": false,
        "error": error,
        "status": status,
        "created_at": rfc3339(t.created_at),
        "urls": {
            "get": get,
            "cancel": format!("{get}/cancel"),
            "web": format!("https://replicate.com/p/{}", t.id),
        },
    })
}

fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "Not found", "Not found.")
}

async fn status(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    sim.status_request();
    if !authorized(&headers) {
        return unauthenticated();
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    match sim.view(&id) {
        Some(t) => Json(prediction(&sim, &t)).into_response(),
        None => not_found(),
    }
}

async fn cancel(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&headers) {
        return unauthenticated();
    }
    if let Err(r) = sim.before().await {
        return refused(r);
    }
    if sim.cancel(&id) == Cancel::NotFound {
        return not_found();
    }
    match sim.view(&id) {
        Some(t) => Json(prediction(&sim, &t)).into_response(),
        None => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
    }
}
