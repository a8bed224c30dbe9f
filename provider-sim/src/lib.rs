//! A provider simulator: a real HTTP server of a TaskID-style video API with
//! knobs for latency, generation time and injected faults, and prompt
//! markers that force one task's outcome.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Prompt markers, each forcing an outcome for the task whose prompt has it.
pub const MARKERS_HELP: &str = "\
Prompt markers (force one task's outcome, whatever the rates):
  [sim:fail]         the task ends failed (\"content policy violation (simulated)\")
  [sim:hang]         the task never finishes
  [sim:reject]       the submission is refused with 400 (a permanent error)
  [sim:5xx]          the first 2 submissions of this prompt answer 503, then it works
  [sim:429]          the first 2 submissions of this prompt answer 429 with Retry-After, then it works
  [sim:5xx-always]   every submission answers 503";

/// The simulator's knobs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added to every response.
    pub latency: Duration,
    /// From submission to a finished task.
    pub generation: Duration,
    /// Share of requests answered 503.
    pub fail_rate: f64,
    /// Share of requests answered 429 with `Retry-After`.
    pub rate_limit_rate: f64,
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_secs: u64,
    /// Share of tasks that end failed.
    pub permanent_fail_rate: f64,
    /// Share of tasks that never finish.
    pub hang_rate: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            generation: Duration::from_millis(500),
            fail_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            permanent_fail_rate: 0.0,
            hang_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Succeed,
    Fail,
    Hang,
}

#[derive(Debug)]
struct Task {
    created: Instant,
    outcome: Outcome,
    canceled: bool,
}

/// Counters a test or benchmark reads.
#[derive(Debug, Default)]
pub struct Stats {
    pub submit_requests: AtomicU64,
    pub tasks_created: AtomicU64,
    pub idempotent_replays: AtomicU64,
    pub status_requests: AtomicU64,
    pub cancels: AtomicU64,
    pub injected_5xx: AtomicU64,
    pub injected_429: AtomicU64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
pub struct StatsSnapshot {
    pub submit_requests: u64,
    pub tasks_created: u64,
    pub idempotent_replays: u64,
    pub status_requests: u64,
    pub cancels: u64,
    pub injected_5xx: u64,
    pub injected_429: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            submit_requests: l(&self.submit_requests),
            tasks_created: l(&self.tasks_created),
            idempotent_replays: l(&self.idempotent_replays),
            status_requests: l(&self.status_requests),
            cancels: l(&self.cancels),
            injected_5xx: l(&self.injected_5xx),
            injected_429: l(&self.injected_429),
        }
    }
}

#[derive(Default)]
struct Tasks {
    by_id: HashMap<String, Task>,
    by_key: HashMap<String, String>,
    /// Submissions seen per prompt, for the `[sim:5xx]` family.
    attempts_by_prompt: HashMap<String, u32>,
}

struct Sim {
    config: SimConfig,
    tasks: Mutex<Tasks>,
    stats: Arc<Stats>,
}

/// A running simulator.
pub struct SimHandle {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl SimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Binds `addr` (port 0 picks one) and serves in the background.
pub async fn start(config: SimConfig, addr: &str) -> anyhow::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let sim = Arc::new(Sim {
        config,
        tasks: Mutex::new(Tasks::default()),
        stats: stats.clone(),
    });
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, router(sim))
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(SimHandle {
        addr,
        stats,
        shutdown,
    })
}

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/tasks", post(submit))
        .route("/v1/tasks/{id}", get(status))
        .route("/v1/tasks/{id}/cancel", post(cancel))
        .route("/v1/stats", get(stats))
        .with_state(sim)
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

impl Sim {
    /// Applies latency and the random per-request faults.
    async fn before(&self) -> Option<Response> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let (fail, limit) = {
            let mut rng = rand::rng();
            (
                rng.random_bool(self.config.fail_rate.clamp(0.0, 1.0)),
                rng.random_bool(self.config.rate_limit_rate.clamp(0.0, 1.0)),
            )
        };
        if fail {
            return Some(self.unavailable());
        }
        if limit {
            return Some(self.rate_limited());
        }
        None
    }

    fn unavailable(&self) -> Response {
        self.stats.injected_5xx.fetch_add(1, Ordering::Relaxed);
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "simulated outage",
        )
    }

    fn rate_limited(&self) -> Response {
        self.stats.injected_429.fetch_add(1, Ordering::Relaxed);
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "slow down (simulated)",
        );
        r.headers_mut().insert(
            "retry-after",
            self.config
                .retry_after_secs
                .to_string()
                .parse()
                .expect("digits"),
        );
        r
    }
}

async fn submit(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    Json(body): Json<SubmitBody>,
) -> Response {
    sim.stats.submit_requests.fetch_add(1, Ordering::Relaxed);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(body.idempotency_key)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let prompt = body.prompt.as_str();
    let attempt = {
        let mut tasks = sim.tasks.lock().expect("sim lock");
        let n = tasks
            .attempts_by_prompt
            .entry(body.prompt.clone())
            .or_insert(0);
        *n += 1;
        *n
    };
    if prompt.contains("[sim:5xx-always]") || (prompt.contains("[sim:5xx]") && attempt <= 2) {
        return sim.unavailable();
    }
    if prompt.contains("[sim:429]") && attempt <= 2 {
        return sim.rate_limited();
    }
    if prompt.contains("[sim:reject]") {
        return error(
            StatusCode::BAD_REQUEST,
            "content_policy",
            "the prompt violates the content policy (simulated)",
        );
    }
    if let Some(r) = sim.before().await {
        return r;
    }
    let outcome = if prompt.contains("[sim:fail]") {
        Outcome::Fail
    } else if prompt.contains("[sim:hang]") {
        Outcome::Hang
    } else {
        let mut rng = rand::rng();
        if rng.random_bool(sim.config.hang_rate.clamp(0.0, 1.0)) {
            Outcome::Hang
        } else if rng.random_bool(sim.config.permanent_fail_rate.clamp(0.0, 1.0)) {
            Outcome::Fail
        } else {
            Outcome::Succeed
        }
    };
    let mut tasks = sim.tasks.lock().expect("sim lock");
    if let Some(id) = tasks.by_key.get(&key) {
        sim.stats.idempotent_replays.fetch_add(1, Ordering::Relaxed);
        return Json(json!({"task_id": id})).into_response();
    }
    let id = format!("task_{}", uuid::Uuid::new_v4().simple());
    tasks.by_key.insert(key, id.clone());
    tasks.by_id.insert(
        id.clone(),
        Task {
            created: Instant::now(),
            outcome,
            canceled: false,
        },
    );
    sim.stats.tasks_created.fetch_add(1, Ordering::Relaxed);
    (StatusCode::CREATED, Json(json!({"task_id": id}))).into_response()
}

async fn status(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    sim.stats.status_requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = sim.before().await {
        return r;
    }
    let tasks = sim.tasks.lock().expect("sim lock");
    let Some(task) = tasks.by_id.get(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such task");
    };
    let elapsed = task.created.elapsed();
    let generation = sim.config.generation;
    let body = if task.canceled {
        json!({"status": "failed", "error": "canceled"})
    } else if elapsed < generation / 2 || (task.outcome == Outcome::Hang && elapsed < generation) {
        json!({"status": "pending"})
    } else if elapsed < generation || task.outcome == Outcome::Hang {
        json!({"status": "running"})
    } else if task.outcome == Outcome::Fail {
        json!({"status": "failed", "error": "content policy violation (simulated)"})
    } else {
        json!({"status": "succeeded", "video_url": format!("https://videos.sim.invalid/{id}.mp4")})
    };
    Json(body).into_response()
}

async fn cancel(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> Response {
    if let Some(r) = sim.before().await {
        return r;
    }
    let mut tasks = sim.tasks.lock().expect("sim lock");
    match tasks.by_id.get_mut(&id) {
        Some(task) => {
            task.canceled = true;
            sim.stats.cancels.fetch_add(1, Ordering::Relaxed);
            Json(json!({"task_id": id, "status": "canceled"})).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "not_found", "no such task"),
    }
}

async fn stats(State(sim): State<Arc<Sim>>) -> Json<StatsSnapshot> {
    Json(sim.stats.snapshot())
}
