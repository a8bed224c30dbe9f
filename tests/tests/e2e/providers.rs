//! Each provider adapter against the simulator speaking that provider's
//! dialect, over real HTTP (no database or broker): success and the output
//! video, expiring URLs, moderation, throttling, abort, unknown statuses,
//! cancel, duplicate submits, and the fault markers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::env_of;
use genq_core::config::{ProviderKind, ProviderSettings, Settings};
use genq_provider_sim::{Dialect, SimConfig, SimHandle};
use genq_providers::provider::{
    self, FailureKind, ProviderError, TaskRequest, TaskStatus, VideoProvider,
};
use secrecy::SecretString;

const WAIT: Duration = Duration::from_secs(15);
const URL_TTL: Duration = Duration::from_millis(1_500);

struct Rig {
    sim: SimHandle,
    provider: Arc<dyn VideoProvider>,
    kind: ProviderKind,
}

fn dialect_of(kind: ProviderKind) -> Dialect {
    match kind {
        ProviderKind::TaskId => Dialect::TaskId,
        ProviderKind::Replicate => Dialect::Replicate,
        ProviderKind::Fal => Dialect::Fal,
        ProviderKind::Runway => Dialect::Runway,
        ProviderKind::Luma => Dialect::Luma,
        ProviderKind::Kling => Dialect::Kling,
        ProviderKind::Veo => Dialect::Veo,
        ProviderKind::Seedance => Dialect::Seedance,
        ProviderKind::MiniMax => Dialect::MiniMax,
    }
}

async fn rig_with(kind: ProviderKind, generation: Duration) -> Rig {
    let sim = genq_provider_sim::start(
        SimConfig {
            generation,
            dialect: dialect_of(kind),
            url_ttl: Some(URL_TTL),
            ..SimConfig::default()
        },
        "127.0.0.1:0",
    )
    .await
    .expect("sim starts");
    let key = match kind {
        ProviderKind::Kling => "test-access-key:test-secret-key",
        _ => "test-provider-key",
    };
    let settings = ProviderSettings {
        kind: kind.as_str().into(),
        base_url: sim.base_url(),
        api_key: SecretString::from(key),
        timeout_ms: 5_000,
        ..ProviderSettings::default()
    };
    let provider = provider::build(&settings).expect("adapter builds");
    Rig {
        sim,
        provider,
        kind,
    }
}

async fn rig(kind: ProviderKind) -> Rig {
    rig_with(kind, Duration::from_millis(300)).await
}

fn request(prompt: &str, key: &str) -> TaskRequest {
    TaskRequest {
        idempotency_key: key.into(),
        prompt: prompt.into(),
        duration_seconds: 5,
        aspect_ratio: "16:9".into(),
        cancel_after: None,
        callback_url: None,
    }
}

impl Rig {
    async fn submit(&self, prompt: &str) -> String {
        let key = uuid::Uuid::new_v4().to_string();
        self.provider
            .submit(&request(prompt, &key))
            .await
            .unwrap_or_else(|e| panic!("{}: submit {prompt:?}: {e}", self.kind))
    }

    /// Polls until `done` holds (or panics at the deadline); returns every status seen.
    async fn poll_until(&self, id: &str, done: impl Fn(&TaskStatus) -> bool) -> Vec<TaskStatus> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let s = self
                .provider
                .status(id)
                .await
                .unwrap_or_else(|e| panic!("{}: status of {id}: {e}", self.kind));
            let finished = done(&s);
            seen.push(s);
            if finished {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{}: task {id} never got there; seen {seen:?}",
                self.kind
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(&self, prompt: &str) -> (TaskStatus, Vec<TaskStatus>) {
        let id = self.submit(prompt).await;
        let seen = self.poll_until(&id, |s| !s.is_working()).await;
        (seen.last().cloned().expect("a status"), seen)
    }
}

/// Submit → Succeeded, the video downloads, and later its URL expires.
async fn succeeds_and_the_url_expires(r: &Rig) {
    let (last, seen) = r.finish("a lighthouse at dusk").await;
    let TaskStatus::Succeeded { video_url } = last else {
        panic!("{}: expected success, saw {seen:?}", r.kind);
    };
    assert!(
        seen.iter().any(|s| matches!(s, TaskStatus::Running)),
        "{}: {seen:?}",
        r.kind
    );
    let http = reqwest::Client::new();
    // Veo's files are read with the API key; the others ignore it.
    let get = |url: &str| http.get(url).header("x-goog-api-key", "test-provider-key");
    let resp = get(&video_url).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}: {video_url}", r.kind);
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(&bytes[4..8], b"ftyp", "{}: not an MP4", r.kind);
    // Poll the URL (with a deadline) until the provider's storage refuses it.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = get(&video_url).send().await.unwrap().status();
        if status == 403 || status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            Instant::now() < deadline,
            "{}: the URL never expired",
            r.kind
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(r.sim.stats.snapshot().expired_downloads >= 1);
}

async fn moderation_is_a_readable_content_rejection(r: &Rig) {
    let (last, seen) = r.finish("something [sim:moderation]").await;
    match last {
        TaskStatus::Failed {
            code: FailureKind::ContentRejected,
            reason,
        } => {
            assert!(
                reason.len() > 20 && reason.contains(' '),
                "{}: not words: {reason:?}",
                r.kind
            );
            assert_eq!(
                FailureKind::ContentRejected.error_code(),
                "content_rejected"
            );
        }
        _ => panic!("{}: expected a content rejection, saw {seen:?}", r.kind),
    }
}

async fn throttled_or_queued_before_success(r: &Rig) {
    let (last, seen) = r.finish("busy hour [sim:throttle]").await;
    assert!(
        matches!(last, TaskStatus::Succeeded { .. }),
        "{}: {seen:?}",
        r.kind
    );
    let waited = |s: &TaskStatus| match r.kind {
        ProviderKind::Runway => matches!(s, TaskStatus::Throttled),
        ProviderKind::Fal => matches!(s, TaskStatus::Queued { position: Some(p) } if *p > 0),
        ProviderKind::TaskId => matches!(s, TaskStatus::Queued { .. }),
        _ => matches!(s, TaskStatus::Queued { .. } | TaskStatus::Throttled),
    };
    // A Veo operation says only whether it is done: no queue to see.
    if r.kind == ProviderKind::Veo {
        return;
    }
    let first_run = seen
        .iter()
        .position(|s| matches!(s, TaskStatus::Running))
        .expect("it ran");
    assert!(
        seen[..first_run].iter().any(waited),
        "{}: no wait seen before running: {seen:?}",
        r.kind
    );
}

async fn abort_and_failure(r: &Rig) {
    let (last, seen) = r.finish("late [sim:abort]").await;
    match (r.kind, &last) {
        (
            ProviderKind::Replicate | ProviderKind::TaskId,
            TaskStatus::Failed {
                code: FailureKind::Aborted,
                ..
            },
        ) => {}
        (ProviderKind::Replicate | ProviderKind::TaskId, _) => {
            panic!("{}: expected aborted, saw {seen:?}", r.kind)
        }
        (_, TaskStatus::Failed { code, .. }) => assert_ne!(*code, FailureKind::ContentRejected),
        _ => panic!("{}: expected a failure, saw {seen:?}", r.kind),
    }
    let (last, seen) = r.finish("broken [sim:fail]").await;
    assert!(
        matches!(
            last,
            TaskStatus::Failed {
                code: FailureKind::Provider,
                ..
            }
        ),
        "{}: {seen:?}",
        r.kind
    );
}

async fn unknown_is_never_success(r: &Rig) {
    let id = r.submit("odd [sim:unknown]").await;
    for _ in 0..5 {
        match r.provider.status(&id).await.unwrap() {
            TaskStatus::Unknown { status } => assert!(!status.is_empty()),
            other => panic!("{}: expected Unknown, got {other:?}", r.kind),
        }
    }
}

async fn cancel_stops_the_task(r: &Rig) {
    let id = r.submit("forever [sim:hang]").await;
    r.poll_until(&id, |s| matches!(s, TaskStatus::Running))
        .await;
    r.provider.cancel(&id).await.expect("cancel answers");
    match r.kind {
        // Luma has no cancel: the generation is deleted.
        ProviderKind::Luma => {
            let e = r.provider.status(&id).await.unwrap_err();
            assert!(matches!(e, ProviderError::Permanent { .. }), "{e:?}");
        }
        // Kling, Veo and MiniMax have no cancel; Seedance cancels only a
        // queued task: a running task goes on.
        ProviderKind::Kling
        | ProviderKind::Veo
        | ProviderKind::MiniMax
        | ProviderKind::Seedance => {
            assert_eq!(r.provider.status(&id).await.unwrap(), TaskStatus::Running);
        }
        _ => {
            let seen = r.poll_until(&id, |s| !s.is_working()).await;
            assert!(
                matches!(
                    seen.last(),
                    Some(TaskStatus::Failed {
                        code: FailureKind::Canceled,
                        ..
                    })
                ),
                "{}: {seen:?}",
                r.kind
            );
        }
    }
    // Canceling again, or a finished task, is not an error.
    r.provider
        .cancel(&id)
        .await
        .expect("a second cancel answers");
}

async fn duplicate_submits(r: &Rig) {
    let key = uuid::Uuid::new_v4().to_string();
    let a = r.provider.submit(&request("twice", &key)).await.unwrap();
    let b = r.provider.submit(&request("twice", &key)).await.unwrap();
    match r.kind {
        // Idempotency-Key / external_task_id: one task.
        ProviderKind::TaskId | ProviderKind::Kling => {
            assert_eq!(a, b, "{}", r.kind);
            assert_eq!(r.sim.stats.snapshot().tasks_created, 1);
        }
        // No idempotency at the provider (docs/providers.md): two tasks.
        _ => assert_ne!(a, b, "{}", r.kind),
    }
}

async fn fault_markers(r: &Rig) {
    let k = |p: &str| request(p, &uuid::Uuid::new_v4().to_string());
    match r.provider.submit(&k("slow [sim:429]")).await {
        // Seedance and MiniMax say "rate limited" without saying how long.
        Err(ProviderError::Transient {
            retry_after: None, ..
        }) if matches!(r.kind, ProviderKind::Seedance | ProviderKind::MiniMax) => {}
        Err(ProviderError::Transient {
            retry_after: Some(d),
            ..
        }) => assert_eq!(d, Duration::from_secs(1)),
        other => panic!("{}: 429 → {other:?}", r.kind),
    }
    let e = r
        .provider
        .submit(&k("down [sim:5xx-always]"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProviderError::Transient { .. }),
        "{}: {e:?}",
        r.kind
    );
    let e = r.provider.submit(&k("bad [sim:reject]")).await.unwrap_err();
    assert!(
        matches!(e, ProviderError::Permanent { ref code, .. } if code != provider::CONTENT_REJECTED),
        "{}: {e:?}",
        r.kind
    );
}

async fn everything(kind: ProviderKind) {
    let r = rig(kind).await;
    succeeds_and_the_url_expires(&r).await;
    moderation_is_a_readable_content_rejection(&r).await;
    throttled_or_queued_before_success(&r).await;
    abort_and_failure(&r).await;
    unknown_is_never_success(&r).await;
    cancel_stops_the_task(&r).await;
    fault_markers(&r).await;
    // On a fresh simulator, so the task count is this test's alone.
    duplicate_submits(&rig(kind).await).await;
}

#[tokio::test]
async fn taskid_adapter_against_the_taskid_dialect() {
    everything(ProviderKind::TaskId).await;
}

#[tokio::test]
async fn replicate_adapter_against_the_replicate_dialect() {
    everything(ProviderKind::Replicate).await;
}

#[tokio::test]
async fn fal_adapter_against_the_fal_dialect() {
    everything(ProviderKind::Fal).await;
}

#[tokio::test]
async fn runway_adapter_against_the_runway_dialect() {
    everything(ProviderKind::Runway).await;
}

#[tokio::test]
async fn luma_adapter_against_the_luma_dialect() {
    everything(ProviderKind::Luma).await;
}

#[tokio::test]
async fn kling_adapter_against_the_kling_dialect() {
    everything(ProviderKind::Kling).await;
}

#[tokio::test]
async fn veo_adapter_against_the_veo_dialect() {
    everything(ProviderKind::Veo).await;
}

#[tokio::test]
async fn seedance_adapter_against_the_seedance_dialect() {
    everything(ProviderKind::Seedance).await;
}

#[tokio::test]
async fn minimax_adapter_against_the_minimax_dialect() {
    everything(ProviderKind::MiniMax).await;
}

/// Seedance cancels a task that is still queued.
#[tokio::test]
async fn seedance_cancels_a_queued_task() {
    let r = rig_with(ProviderKind::Seedance, Duration::from_secs(60)).await;
    let id = r.submit("a long queue").await;
    assert_eq!(
        r.provider.status(&id).await.unwrap(),
        TaskStatus::Queued { position: None }
    );
    r.provider.cancel(&id).await.expect("cancel answers");
    let seen = r.poll_until(&id, |s| !s.is_working()).await;
    assert!(
        matches!(
            seen.last(),
            Some(TaskStatus::Failed {
                code: FailureKind::Canceled,
                ..
            })
        ),
        "{seen:?}"
    );
}

/// Veo's videos are read with the API key, sent only to the provider's own
/// origin: the simulator refuses a download without it.
#[tokio::test]
async fn veo_videos_need_the_key_to_download() {
    let r = rig(ProviderKind::Veo).await;
    let (last, seen) = r.finish("a quiet pond").await;
    let TaskStatus::Succeeded { video_url } = last else {
        panic!("{seen:?}");
    };
    let http = reqwest::Client::new();
    assert_eq!(http.get(&video_url).send().await.unwrap().status(), 403);
}

/// Replicate's `Cancel-After`: a prediction still starting at its deadline
/// ends `aborted` (not billed).
#[tokio::test]
async fn replicate_cancel_after_aborts_a_prediction_that_never_started() {
    let r = rig_with(ProviderKind::Replicate, Duration::from_secs(60)).await;
    let mut req = request("a slow queue", "k1");
    req.cancel_after = Some(Duration::from_secs(5));
    let id = r.provider.submit(&req).await.unwrap();
    let seen = r.poll_until(&id, |s| !s.is_working()).await;
    assert!(
        matches!(
            seen.last(),
            Some(TaskStatus::Failed {
                code: FailureKind::Aborted,
                ..
            })
        ),
        "{seen:?}"
    );
    assert_eq!(FailureKind::Aborted.error_code(), "provider_aborted");
}

/// `provider.kind` from the environment, the defaults per kind, and
/// validation messages that name the key.
#[test]
fn provider_kind_is_configured_from_the_environment() {
    let load = |pairs: &[(&str, &str)]| Settings::load_from(None, env_of(pairs));
    let s = load(&[
        ("GENQ__PROVIDER__KIND", "replicate"),
        ("GENQ__PROVIDER__API_KEY", "r8_test"),
    ])
    .expect("loads");
    assert_eq!(s.provider.kind(), ProviderKind::Replicate);
    assert_eq!(s.provider.effective_base_url(), "https://api.replicate.com");
    assert_eq!(s.provider.effective_model(), "minimax/video-01");

    let e = load(&[
        ("GENQ__PROVIDER__KIND", "sora"),
        ("GENQ__PROVIDER__API_KEY", "r8_test"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("provider.kind") && e.contains("GENQ__PROVIDER__KIND"),
        "{e}"
    );

    let e = load(&[("GENQ__PROVIDER__KIND", "runway")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("provider.api_key"), "{e}");

    let e = load(&[
        ("GENQ__PROVIDER__KIND", "kling"),
        ("GENQ__PROVIDER__API_KEY", "no-colon"),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("ACCESS_KEY:SECRET_KEY"), "{e}");

    let s = load(&[]).expect("defaults load");
    assert_eq!(s.provider.kind(), ProviderKind::TaskId);
    assert_eq!(s.provider.effective_base_url(), "http://127.0.0.1:8090");
}

/// The worker end to end on a non-default provider (Runway's dialect, real
/// Postgres and RabbitMQ): a video, a content refusal told in words and
/// refunded, and an unknown status ended by the job's deadline.
#[tokio::test]
async fn a_worker_on_runway_tells_content_rejections_and_ends_unknown_statuses_by_deadline() {
    use crate::harness::{test_settings, TestEnv};
    let mut settings = test_settings();
    settings.provider.kind = "runway".into();
    settings.provider.api_key = SecretString::from("test-runway-key");
    settings.worker.job_timeout_secs = 3;
    let sim = SimConfig {
        generation: Duration::from_millis(300),
        dialect: Dialect::Runway,
        url_ttl: Some(Duration::from_secs(60)),
        ..SimConfig::default()
    };
    let env = TestEnv::with_sim_and_settings(sim, settings).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("rosa", "rosa@example.com").await;
    env.grant("rosa@example.com", 22).await;
    let mut ids = Vec::new();
    for prompt in ["a harbour at dawn", "x [sim:moderation]", "y [sim:unknown]"] {
        let (status, job) = env.submit(&t, prompt).await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let wait = Duration::from_secs(30);
    let ok = env.wait_for_status(&t, &ids[0], "succeeded", wait).await;
    assert_eq!(
        ok["result_url"],
        format!("/v1/generations/{}/video", ids[0])
    );
    // The timeline tells the provider's states: the unknown one included.
    let unknown_so_far = env
        .wait_for_job(&t, &ids[2], wait, |j| {
            j["events"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e["kind"] == "provider"
                        && e["data"]["state"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("unknown:"))
                })
            })
        })
        .await;
    assert!(unknown_so_far["events"].is_array());
    let refused = env.wait_for_status(&t, &ids[1], "failed", wait).await;
    assert_eq!(refused["error"]["code"], "content_rejected", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("content moderation"), "{message}");
    let unknown = env.wait_for_status(&t, &ids[2], "failed", wait).await;
    assert_eq!(unknown["error"]["code"], "deadline_exceeded", "{unknown}");
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["spent"], 10, "{credits}");
    assert_eq!(credits["reserved"], 0, "{credits}");
    assert_eq!(credits["available"], 20, "{credits}");
    worker.stop().await;
    env.cleanup().await;
}
