//! The simulated outside world a worker talks to: a video provider that
//! answers from the seed (every status word, 429/5xx/timeouts, permanent
//! refusals, success after a cancel), can crash the worker right after the
//! provider acted, or let the user's cancel land while a call is in flight;
//! and a tiny HTTP server the finished videos are downloaded from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use genq_providers::provider::{
    FailureKind, ProviderError, ProviderResult, TaskRequest, TaskStatus, VideoProvider,
};
use genq_store::store;
use rand::rngs::StdRng;
use rand::Rng;
use sqlx::PgPool;
use uuid::Uuid;

/// The panic payload of a simulated crash (silenced by the panic hook).
pub const CRASH: &str = "genq-sim: simulated crash";

/// Everything the seed decides, shared by the simulator and its provider.
pub struct World {
    pub rng: StdRng,
    pub trace: Vec<String>,
    /// No faults (the quiesce phase): the provider answers and finishes.
    pub calm: bool,
    /// One-shot: the next provider call crashes the worker after it acted.
    pub crash_after_call: bool,
    /// One-shot: the owner's cancel lands while the next provider call runs.
    pub cancel_during_call: bool,
    /// Provider tasks canceled at the provider.
    pub canceled: BTreeMap<String, bool>,
    /// Job aliases for the trace (j0, j1, …).
    pub aliases: BTreeMap<Uuid, usize>,
    pub video_base: String,
    /// Errors from genq's code inside provider calls (the interleaved
    /// cancel): the simulator reports each as a violation.
    pub failures: Vec<String>,
}

impl World {
    pub fn alias(&self, id: Uuid) -> String {
        match self.aliases.get(&id) {
            Some(n) => format!("j{n}"),
            None => "j?".into(),
        }
    }

    pub fn note(&mut self, line: String) {
        self.trace.push(line);
    }
}

pub type Shared = Arc<Mutex<World>>;

pub fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct SimProvider {
    pub world: Shared,
    pub pool: PgPool,
}

fn job_of_key(key: &str) -> Option<Uuid> {
    Uuid::parse_str(key.get(..36)?).ok()
}

fn transient(message: &str) -> ProviderError {
    ProviderError::transient(message)
}

impl SimProvider {
    /// The owner's cancel, landing while the provider works on the call.
    async fn interleave(&self, job: Option<Uuid>) {
        let take = std::mem::take(&mut lock(&self.world).cancel_during_call);
        let Some(job) = job.filter(|_| take) else {
            return;
        };
        let owner: Option<Uuid> = sqlx::query_scalar("SELECT user_id FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten();
        let outcome = match owner {
            Some(user) => cancel_words(store::cancel_job(&self.pool, user, job, "user").await),
            None => "no such job".into(),
        };
        let mut w = lock(&self.world);
        let alias = w.alias(job);
        if outcome.starts_with("ERROR") {
            w.failures
                .push(format!("the cancel of {alias} failed: {outcome}"));
        }
        w.note(format!(
            "    the user cancels {alias} during the call -> {outcome}"
        ));
    }

    /// Crashes the worker now if the step asked for it.
    fn maybe_crash(&self) {
        if std::mem::take(&mut lock(&self.world).crash_after_call) {
            lock(&self.world).note("    the worker crashes after the provider call".into());
            std::panic::panic_any(CRASH);
        }
    }

    fn submit_answer(w: &mut World, key: &str) -> ProviderResult<String> {
        let task = format!("task-{key}");
        if w.calm {
            return Ok(task);
        }
        let roll = w.rng.random_range(0..100);
        match roll {
            0..70 => Ok(task),
            70..78 => Err(transient("503 Service Unavailable")),
            78..84 => Err(ProviderError::Transient {
                message: "429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(2)),
            }),
            84..88 => Err(transient("timed out (the provider hung)")),
            88..93 => Err(ProviderError::permanent("400", "bad request")),
            93..96 => Err(ProviderError::content_rejected("flagged by moderation")),
            _ => Ok(task),
        }
    }

    fn status_answer(w: &mut World, task: &str) -> ProviderResult<TaskStatus> {
        let video = |w: &World, kind: &str| format!("{}/v/{kind}/{task}.mp4", w.video_base);
        if w.calm {
            return Ok(if w.rng.random_range(0..100) < 70 {
                TaskStatus::Succeeded {
                    video_url: video(w, "ok"),
                }
            } else {
                TaskStatus::Failed {
                    code: FailureKind::Provider,
                    reason: "the provider failed".into(),
                }
            });
        }
        let canceled = w.canceled.get(task).copied().unwrap_or(false);
        if canceled && w.rng.random_bool(0.5) {
            return Ok(TaskStatus::Failed {
                code: FailureKind::Canceled,
                reason: "canceled".into(),
            });
        }
        let failed = |code, reason: &str| {
            Ok(TaskStatus::Failed {
                code,
                reason: reason.into(),
            })
        };
        // A canceled task may still answer succeeded: providers race too.
        let roll = w.rng.random_range(0..100);
        match roll {
            0..12 => Ok(TaskStatus::Pending),
            12..20 => Ok(TaskStatus::Queued {
                position: Some(w.rng.random_range(1..50)),
            }),
            20..24 => Ok(TaskStatus::Queued { position: None }),
            24..28 => Ok(TaskStatus::Throttled),
            28..40 => Ok(TaskStatus::Running),
            40..44 => Ok(TaskStatus::Unknown {
                status: "warming_up".into(),
            }),
            44..48 => Err(transient("timed out (the provider hung)")),
            48..52 => Err(ProviderError::Transient {
                message: "429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(5)),
            }),
            52..56 => Err(transient("502 Bad Gateway")),
            56..58 => Err(ProviderError::permanent("404", "no such task")),
            58..76 => Ok(TaskStatus::Succeeded {
                video_url: video(w, "ok"),
            }),
            76..79 => Ok(TaskStatus::Succeeded {
                video_url: video(w, "gone"),
            }),
            79..82 => Ok(TaskStatus::Succeeded {
                video_url: video(w, "flaky"),
            }),
            82..86 => failed(FailureKind::Provider, "the provider failed"),
            86..89 => failed(FailureKind::ContentRejected, "flagged by moderation"),
            89..91 => failed(FailureKind::Aborted, "aborted before it started"),
            91..93 => failed(FailureKind::Canceled, "canceled"),
            _ => Ok(TaskStatus::Running),
        }
    }
}

fn said<T: std::fmt::Debug>(r: &ProviderResult<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(ProviderError::Transient {
            message,
            retry_after,
        }) => format!("transient {message:?} retry_after {retry_after:?}"),
        Err(ProviderError::Permanent { code, message }) => format!("permanent {code} {message:?}"),
    }
}

tokio::task_local! {
    /// In a step that handles several messages at once: this handler's
    /// place among them, and the place whose turn it is at the provider.
    pub static TURN: (usize, tokio::sync::watch::Receiver<usize>);
}

/// Waits until it is this handler's turn at the provider (at once outside
/// a step of several messages). Handlers reach the provider in the order
/// of their messages, each after the previous one has finished, so the
/// world's random answers come in one order whatever the timing: the same
/// seed replays the same trace. Their database moves before that (claims)
/// run together and may share a batch statement.
pub async fn wait_turn() {
    let Ok((me, mut turn)) = TURN.try_with(|(me, turn)| (*me, turn.clone())) else {
        return;
    };
    let _ = turn.wait_for(|t| *t >= me).await;
}

impl VideoProvider for SimProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            wait_turn().await;
            let job = job_of_key(&request.idempotency_key);
            self.interleave(job).await;
            {
                let mut w = lock(&self.world);
                let answer = Self::submit_answer(&mut w, &request.idempotency_key);
                let alias = job.map(|j| w.alias(j)).unwrap_or_default();
                let line = match &answer {
                    Ok(_) => format!("    provider submit {alias} -> task"),
                    Err(_) => format!("    provider submit {alias} -> {}", said(&answer)),
                };
                w.note(line);
                drop(w);
                self.maybe_crash();
                answer
            }
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            wait_turn().await;
            let job = task_id.strip_prefix("task-").and_then(job_of_key);
            self.interleave(job).await;
            let mut w = lock(&self.world);
            let answer = Self::status_answer(&mut w, task_id);
            let alias = job.map(|j| w.alias(j)).unwrap_or_default();
            let line = format!("    provider status {alias} -> {}", said(&answer))
                .replace(&format!("{}/v/", w.video_base), "")
                .replace(&format!("/{task_id}.mp4"), "");
            w.note(line);
            drop(w);
            self.maybe_crash();
            answer
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            wait_turn().await;
            let mut w = lock(&self.world);
            let fails = !w.calm && w.rng.random_range(0..100) < 20;
            let answer = if fails {
                Err(transient("503 Service Unavailable"))
            } else {
                w.canceled.insert(task_id.to_owned(), true);
                Ok(())
            };
            let job = task_id.strip_prefix("task-").and_then(job_of_key);
            let alias = job.map(|j| w.alias(j)).unwrap_or_default();
            let line = format!("    provider cancel {alias} -> {}", said(&answer));
            w.note(line);
            answer
        })
    }
}

/// A cancel's answer in the trace's words.
pub fn cancel_words(r: Result<store::CancelOutcome, store::StoreError>) -> String {
    match r {
        Ok(store::CancelOutcome::Canceled { at_provider, .. }) => {
            format!("canceled (at provider: {at_provider})")
        }
        Ok(store::CancelOutcome::NotCancelable(job)) => format!("not cancelable ({})", job.status),
        Ok(store::CancelOutcome::NotFound) => "not found".into(),
        Err(e) => format!("ERROR {e}"),
    }
}

/// Serves `/v/{ok|gone|flaky}/{name}`: a video, a 404 (an expired link) or
/// a 503; returns the base URL.
pub async fn serve_videos() -> anyhow::Result<String> {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::routing::get;
    async fn video(Path((kind, _name)): Path<(String, String)>) -> (StatusCode, Vec<u8>) {
        match kind.as_str() {
            "ok" => {
                let mut body = b"\0\0\0\x18ftypisom\0\0\0\0".to_vec();
                body.resize(256, 7);
                (StatusCode::OK, body)
            }
            "gone" => (StatusCode::NOT_FOUND, b"expired".to_vec()),
            _ => (StatusCode::SERVICE_UNAVAILABLE, b"try later".to_vec()),
        }
    }
    let app = axum::Router::new().route("/v/{kind}/{name}", get(video));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(base)
}
