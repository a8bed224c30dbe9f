//! A provider simulator: a real HTTP server that speaks one provider's API
//! (the dialect: taskid by default, or replicate, fal, runway, luma, kling,
//! veo, seedance, minimax),
//! with knobs for latency, generation time and injected faults, prompt
//! markers that force one task's outcome, and output videos it serves itself
//! at URLs that expire. This file owns the task engine every dialect shares.

mod callbacks;
mod fal;
mod files;
mod kling;
mod luma;
mod minimax;
mod replicate;
mod runway;
mod seedance;
mod taskid;
mod veo;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use callbacks::CallbackFaults;
pub use files::{video_len, video_pieces, SAMPLE_MP4};

/// Prompt markers, each forcing an outcome for the task whose prompt has it.
pub const MARKERS_HELP: &str = "\
Prompt markers (force one task's outcome, whatever the rates; every dialect):
  [sim:fail]         the task ends failed (taskid: \"content policy violation (simulated)\")
  [sim:hang]         the task never finishes
  [sim:reject]       the submission is refused with 400 (a permanent error)
  [sim:5xx]          the first 2 submissions of this prompt answer 503, then it works
  [sim:429]          the first 2 submissions of this prompt answer 429 with Retry-After, then it works
  [sim:5xx-always]   every submission answers 503
  [sim:moderation]   the task is refused by content moderation, in the dialect's own words and codes
  [sim:throttle]     the task waits (runway THROTTLED, fal IN_QUEUE with positions, others queued) before running
  [sim:abort]        the deadline passes before the task runs (replicate aborted; others a failure)
  [sim:unknown]      the task reports a status word no adapter knows, forever
  [sim:not-video]    the task succeeds, but its output URL serves an HTML page, not a video";

/// Which provider API the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dialect {
    /// genq's TaskID API: /v1/tasks
    #[default]
    #[value(name = "taskid")]
    TaskId,
    /// Replicate predictions: /v1/predictions
    Replicate,
    /// fal.ai queue: /{owner}/{app}/requests/{id}
    Fal,
    /// Runway tasks: /v1/text_to_video, /v1/tasks/{id}
    Runway,
    /// Luma Dream Machine: /dream-machine/v1/generations
    Luma,
    /// Kling: /v1/videos/text2video
    Kling,
    /// Google Veo (Gemini API): /v1beta/models/{model}:predictLongRunning
    Veo,
    /// ByteDance Seedance (BytePlus ModelArk): /api/v3/contents/generations/tasks
    Seedance,
    /// MiniMax Hailuo: /v1/video_generation
    #[value(name = "minimax")]
    MiniMax,
}

/// The simulator's knobs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added to every response.
    pub latency: Duration,
    /// From submission to a finished task (twice that for `[sim:throttle]`).
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
    pub dialect: Dialect,
    /// How long an output URL works after the video is ready (`None`: one hour).
    pub url_ttl: Option<Duration>,
    /// How long serving one output video takes (it is sent in pieces).
    pub download: Duration,
    /// Calling back when tasks end, and its faults.
    pub callbacks: CallbackFaults,
    /// The size of each output video: a real MP4 padded with a `free` box
    /// (at least the sample's own size, [`SAMPLE_MP4`]).
    pub video_bytes: u64,
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
            dialect: Dialect::TaskId,
            url_ttl: None,
            download: Duration::ZERO,
            callbacks: CallbackFaults::default(),
            video_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Outcome {
    Succeed,
    Fail,
    Hang,
    Moderation,
    Throttle,
    Abort,
    Unknown,
}

/// Where a task is, in the engine's words; each dialect words it its way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    Queued,
    /// Held back; `position` counts down to 0.
    Throttled {
        position: u32,
    },
    Running {
        progress: f64,
    },
    Succeeded,
    Failed,
    Moderated,
    Aborted,
    Canceled,
    Unknown,
}

impl Phase {
    pub(crate) fn is_terminal(self) -> bool {
        !matches!(
            self,
            Self::Queued | Self::Throttled { .. } | Self::Running { .. } | Self::Unknown
        )
    }
}

#[derive(Debug)]
pub(crate) struct Task {
    created: Instant,
    pub(crate) created_at: SystemTime,
    outcome: Outcome,
    canceled_at: Option<Instant>,
    /// Replicate's `Cancel-After`.
    cancel_after: Option<Duration>,
    pub(crate) prompt: String,
    /// What the dialect wants to echo back (model, external ID, …).
    pub(crate) meta: serde_json::Value,
}

/// A task as a dialect answers it.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub(crate) id: String,
    pub(crate) phase: Phase,
    pub(crate) video_url: Option<String>,
    pub(crate) created_at: SystemTime,
    pub(crate) prompt: String,
    pub(crate) meta: serde_json::Value,
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
    pub downloads: AtomicU64,
    pub expired_downloads: AtomicU64,
    pub callbacks_sent: AtomicU64,
    pub callbacks_forged: AtomicU64,
    pub callbacks_dropped: AtomicU64,
    /// Callbacks answered with anything but a 2xx (or not answered).
    pub callbacks_refused: AtomicU64,
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
    #[serde(default)]
    pub downloads: u64,
    #[serde(default)]
    pub expired_downloads: u64,
    #[serde(default)]
    pub callbacks_sent: u64,
    #[serde(default)]
    pub callbacks_forged: u64,
    #[serde(default)]
    pub callbacks_dropped: u64,
    #[serde(default)]
    pub callbacks_refused: u64,
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
            downloads: l(&self.downloads),
            expired_downloads: l(&self.expired_downloads),
            callbacks_sent: l(&self.callbacks_sent),
            callbacks_forged: l(&self.callbacks_forged),
            callbacks_dropped: l(&self.callbacks_dropped),
            callbacks_refused: l(&self.callbacks_refused),
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

/// Why a request is refused before it reaches a task.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    Unavailable,
    RateLimited { retry_after_secs: u64 },
    Rejected,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cancel {
    NotFound,
    AlreadyDone,
    Requested,
}

pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    tasks: Mutex<Tasks>,
    pub(crate) stats: Arc<Stats>,
    /// `http://addr`, for the output URLs the simulator serves.
    base: String,
    /// Sends the callbacks (bounded: a timeout, no redirects).
    callback_client: reqwest::Client,
    /// Signs fal's callbacks; its public half is at `/.well-known/jwks.json`.
    fal_key: ed25519_dalek::SigningKey,
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
        base: format!("http://{addr}"),
        callback_client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        fal_key: ed25519_dalek::SigningKey::from_bytes(&rand::rng().random()),
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
    let common = Router::new()
        .route("/v1/stats", get(stats))
        .route("/.well-known/jwks.json", get(callbacks::jwks))
        .route("/files/{id}/output.mp4", get(files::download));
    let dialect = match sim.config.dialect {
        Dialect::TaskId => taskid::routes(),
        Dialect::Replicate => replicate::routes(),
        Dialect::Fal => fal::routes(),
        Dialect::Runway => runway::routes(),
        Dialect::Luma => luma::routes(),
        Dialect::Kling => kling::routes(),
        Dialect::Veo => veo::routes(),
        Dialect::Seedance => seedance::routes(),
        Dialect::MiniMax => minimax::routes(),
    };
    common.merge(dialect).with_state(sim)
}

/// The outcome a new task's prompt (or the rates) give it.
fn outcome_of(prompt: &str, config: &SimConfig) -> Outcome {
    for (marker, outcome) in [
        ("[sim:fail]", Outcome::Fail),
        ("[sim:hang]", Outcome::Hang),
        ("[sim:moderation]", Outcome::Moderation),
        ("[sim:throttle]", Outcome::Throttle),
        ("[sim:abort]", Outcome::Abort),
        ("[sim:unknown]", Outcome::Unknown),
    ] {
        if prompt.contains(marker) {
            return outcome;
        }
    }
    let mut rng = rand::rng();
    if rng.random_bool(config.hang_rate.clamp(0.0, 1.0)) {
        Outcome::Hang
    } else if rng.random_bool(config.permanent_fail_rate.clamp(0.0, 1.0)) {
        Outcome::Fail
    } else {
        Outcome::Succeed
    }
}

/// The phase of an untouched task `e` after its creation.
fn natural_phase(outcome: Outcome, e: Duration, g: Duration) -> Phase {
    let half = g / 2;
    let progress = |e: Duration| {
        ((e.saturating_sub(half)).as_secs_f64() / half.as_secs_f64().max(0.001)).min(0.99)
    };
    match outcome {
        Outcome::Unknown => Phase::Unknown,
        Outcome::Abort if e < half => Phase::Queued,
        Outcome::Abort => Phase::Aborted,
        Outcome::Throttle if e < g => {
            let left = g.saturating_sub(e).as_secs_f64() / g.as_secs_f64().max(0.001);
            Phase::Throttled {
                position: (left * 3.0).floor() as u32,
            }
        }
        Outcome::Throttle => natural_phase(Outcome::Succeed, e - g, g),
        _ if e < half => Phase::Queued,
        Outcome::Hang => Phase::Running {
            progress: progress(e.min(g)),
        },
        _ if e < g => Phase::Running {
            progress: progress(e),
        },
        Outcome::Fail => Phase::Failed,
        Outcome::Moderation => Phase::Moderated,
        _ => Phase::Succeeded,
    }
}

impl Task {
    pub(crate) fn phase(&self, now: Instant, g: Duration) -> Phase {
        let e = now.saturating_duration_since(self.created);
        // The earlier of the provider's deadline and a cancel wins.
        let deadline = self.cancel_after.map(|d| (d, true));
        let canceled = self
            .canceled_at
            .map(|c| (c.saturating_duration_since(self.created), false));
        let mut events: Vec<(Duration, bool)> = deadline.into_iter().chain(canceled).collect();
        events.sort_by_key(|(at, _)| *at);
        for (at, is_deadline) in events {
            if e < at {
                break;
            }
            let then = natural_phase(self.outcome, at, g);
            if !then.is_terminal() {
                return match then {
                    Phase::Queued | Phase::Throttled { .. } if is_deadline => Phase::Aborted,
                    _ => Phase::Canceled,
                };
            }
        }
        natural_phase(self.outcome, e, g)
    }

    /// When the video became ready (for the output URL's expiry).
    pub(crate) fn ready_at(&self, g: Duration) -> Instant {
        let g = if self.outcome == Outcome::Throttle {
            g * 2
        } else {
            g
        };
        self.created + g
    }
}

impl Sim {
    /// Applies latency and the random per-request faults.
    pub(crate) async fn before(&self) -> Result<(), Refusal> {
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
            return Err(self.count(Refusal::Unavailable));
        }
        if limit {
            return Err(self.count(self.rate_limited()));
        }
        Ok(())
    }

    fn rate_limited(&self) -> Refusal {
        Refusal::RateLimited {
            retry_after_secs: self.config.retry_after_secs,
        }
    }

    fn count(&self, r: Refusal) -> Refusal {
        match r {
            Refusal::Unavailable => self.stats.injected_5xx.fetch_add(1, Ordering::Relaxed),
            Refusal::RateLimited { .. } => self.stats.injected_429.fetch_add(1, Ordering::Relaxed),
            Refusal::Rejected => 0,
        };
        r
    }

    /// A submission's markers and faults, in the historical order.
    pub(crate) async fn admit(&self, prompt: &str) -> Result<(), Refusal> {
        self.stats.submit_requests.fetch_add(1, Ordering::Relaxed);
        let attempt = {
            let mut tasks = self.tasks.lock().expect("sim lock");
            let n = tasks
                .attempts_by_prompt
                .entry(prompt.to_owned())
                .or_insert(0);
            *n += 1;
            *n
        };
        if prompt.contains("[sim:5xx-always]") || (prompt.contains("[sim:5xx]") && attempt <= 2) {
            return Err(self.count(Refusal::Unavailable));
        }
        if prompt.contains("[sim:429]") && attempt <= 2 {
            return Err(self.count(self.rate_limited()));
        }
        if prompt.contains("[sim:reject]") {
            return Err(Refusal::Rejected);
        }
        self.before().await
    }

    /// Creates a task with `id`, or returns the one `key` already made
    /// (`true`: a replay).
    pub(crate) fn create(
        &self,
        id: String,
        key: Option<String>,
        prompt: &str,
        cancel_after: Option<Duration>,
        meta: serde_json::Value,
    ) -> (String, bool) {
        let outcome = outcome_of(prompt, &self.config);
        let mut tasks = self.tasks.lock().expect("sim lock");
        if let Some(existing) = key.as_ref().and_then(|k| tasks.by_key.get(k)) {
            self.stats
                .idempotent_replays
                .fetch_add(1, Ordering::Relaxed);
            return (existing.clone(), true);
        }
        if let Some(k) = key {
            tasks.by_key.insert(k, id.clone());
        }
        tasks.by_id.insert(
            id.clone(),
            Task {
                created: Instant::now(),
                created_at: SystemTime::now(),
                outcome,
                canceled_at: None,
                cancel_after,
                prompt: prompt.to_owned(),
                meta,
            },
        );
        self.stats.tasks_created.fetch_add(1, Ordering::Relaxed);
        (id, false)
    }

    /// The task `id` (or the one idempotency `key` made) as it is now.
    pub(crate) fn view(&self, id: &str) -> Option<View> {
        let tasks = self.tasks.lock().expect("sim lock");
        let id = tasks.by_key.get(id).map(String::as_str).unwrap_or(id);
        let task = tasks.by_id.get(id)?;
        let phase = task.phase(Instant::now(), self.config.generation);
        Some(View {
            id: id.to_owned(),
            phase,
            video_url: (phase == Phase::Succeeded).then(|| self.video_url(id)),
            created_at: task.created_at,
            prompt: task.prompt.clone(),
            meta: task.meta.clone(),
        })
    }

    pub(crate) fn status_request(&self) {
        self.stats.status_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Cancels `id`; a finished task stays as it ended.
    pub(crate) fn cancel(&self, id: &str) -> Cancel {
        let mut tasks = self.tasks.lock().expect("sim lock");
        let Some(task) = tasks.by_id.get_mut(id) else {
            return Cancel::NotFound;
        };
        self.stats.cancels.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if task.phase(now, self.config.generation).is_terminal() {
            return Cancel::AlreadyDone;
        }
        task.canceled_at.get_or_insert(now);
        Cancel::Requested
    }

    /// Forgets `id` (Runway's and Luma's DELETE); false if there was none.
    pub(crate) fn delete(&self, id: &str) -> bool {
        self.tasks
            .lock()
            .expect("sim lock")
            .by_id
            .remove(id)
            .is_some()
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.config.url_ttl.unwrap_or(Duration::from_secs(3600))
    }

    fn video_url(&self, id: &str) -> String {
        format!("{}/files/{id}/output.mp4", self.base)
    }
}

async fn stats(State(sim): State<Arc<Sim>>) -> Json<StatsSnapshot> {
    Json(sim.stats.snapshot())
}

/// The token of `Authorization: {scheme} {token}`, if there is one.
pub(crate) fn credential<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, token) = value.split_once(' ')?;
    (s.eq_ignore_ascii_case(scheme) && !token.trim().is_empty()).then_some(token.trim())
}

/// A `Retry-After` header on a 429.
pub(crate) fn with_retry_after(mut r: Response, secs: u64) -> Response {
    r.headers_mut().insert(
        header::RETRY_AFTER,
        secs.to_string().parse().expect("digits"),
    );
    r
}

/// RFC 3339 (UTC) of a system time, as the JSON APIs write it.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
