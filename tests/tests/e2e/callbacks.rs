//! Provider callbacks end to end: for each dialect that calls back, a task
//! ends within seconds of the provider finishing although its first poll is
//! a minute away; a forged callback is a 401 that moves nothing; dropped
//! callbacks leave the job to the safety-net poll; early, duplicated and
//! delayed ones change nothing but when the job is asked.

use std::time::{Duration, Instant};

use crate::harness::{eventually, test_settings, TestEnv};
use chrono::{DateTime, Utc};
use genq_core::config::ProviderKind;
use genq_provider_sim::{CallbackFaults, Dialect, SimConfig};
use reqwest::StatusCode;
use secrecy::SecretString;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);
const GENERATION: Duration = Duration::from_secs(1);
const SECRET: &str = "a-callback-secret-of-at-least-32-bytes!";

fn dialect_of(kind: ProviderKind) -> Dialect {
    match kind {
        ProviderKind::Replicate => Dialect::Replicate,
        ProviderKind::Fal => Dialect::Fal,
        ProviderKind::Kling => Dialect::Kling,
        ProviderKind::Luma => Dialect::Luma,
        ProviderKind::Seedance => Dialect::Seedance,
        other => panic!("{other} does not call back"),
    }
}

/// An environment on `kind` with callbacks on, the first poll a minute
/// after the submit and the safety net at `safety_net`.
async fn env_for(
    kind: ProviderKind,
    faults: CallbackFaults,
    safety_net: Duration,
    webhook_secret: Option<&str>,
) -> TestEnv {
    let mut settings = test_settings();
    settings.provider.kind = kind.as_str().into();
    settings.provider.name = kind.as_str().into();
    settings.provider.api_key = SecretString::from("test-access-key:test-secret-key");
    settings.worker.poll_initial_ms = 60_000;
    settings.worker.poll_max_ms = 60_000;
    settings.provider.poll_with_callbacks_ms = safety_net.as_millis() as u64;
    // The API's own address is known once it listens; set below for the worker.
    settings.provider.callback_base_url = "http://127.0.0.1:9".into();
    settings.provider.callback_secret = SecretString::from(SECRET);
    if let Some(s) = webhook_secret {
        settings.provider.webhook_secret = SecretString::from(s);
    }
    let sim = SimConfig {
        generation: GENERATION,
        dialect: dialect_of(kind),
        url_ttl: Some(Duration::from_secs(120)),
        callbacks: CallbackFaults {
            enabled: true,
            webhook_secret: webhook_secret.map(str::to_owned),
            ..faults
        },
        ..SimConfig::default()
    };
    let mut env = TestEnv::with_sim_and_settings(sim, settings).await;
    env.settings.provider.callback_base_url = env.base.clone();
    env
}

async fn event_at(env: &TestEnv, job: Uuid, to_status: &str) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT at FROM job_events WHERE job_id = $1 AND to_status = $2")
        .bind(job)
        .bind(to_status)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn submit(env: &TestEnv, token: &str, prompt: &str) -> Uuid {
    let (status, job) = env.submit(token, prompt).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().parse().unwrap()
}

/// With the first poll a minute away, the callback ends the job: within
/// 3 s of the provider finishing (its `running` event plus the generation).
async fn ends_by_callback(kind: ProviderKind) {
    let env = env_for(
        kind,
        CallbackFaults::default(),
        Duration::from_secs(300),
        None,
    )
    .await;
    let worker = env.spawn_worker().await;
    let token = env.new_user("cb", "cb@example.com").await;
    env.grant("cb@example.com", 10).await;
    let id = submit(&env, &token, "a lighthouse at dusk").await;
    // A callback with a made-up token is refused and moves nothing.
    let forged = format!(
        "{}/v1/providers/{kind}/callback?job={id}&token=forged",
        env.base
    );
    let r = env.client.post(&forged).body("{}").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{kind}");
    env.wait_for_status(&token, &id.to_string(), "succeeded", WAIT)
        .await;
    let accepted = event_at(&env, id, "running").await;
    let done = event_at(&env, id, "succeeded").await;
    let after_finish = (done - accepted)
        .to_std()
        .unwrap()
        .saturating_sub(GENERATION);
    println!(
        "{kind}: succeeded {} ms after the provider finished",
        after_finish.as_millis()
    );
    assert!(
        after_finish < Duration::from_secs(3),
        "{kind}: {after_finish:?} after the provider finished"
    );
    let stats = env.sim().stats.snapshot();
    assert!(stats.callbacks_sent >= 1, "{kind}: {stats:?}");
    assert_eq!(stats.callbacks_refused, 0, "{kind}: {stats:?}");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn replicate_ends_by_callback() {
    ends_by_callback(ProviderKind::Replicate).await;
}

#[tokio::test]
async fn fal_ends_by_callback() {
    ends_by_callback(ProviderKind::Fal).await;
}

#[tokio::test]
async fn kling_ends_by_callback() {
    ends_by_callback(ProviderKind::Kling).await;
}

#[tokio::test]
async fn luma_ends_by_callback() {
    ends_by_callback(ProviderKind::Luma).await;
}

#[tokio::test]
async fn seedance_ends_by_callback() {
    ends_by_callback(ProviderKind::Seedance).await;
}

async fn callback_at(env: &TestEnv, job: Uuid) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT callback_at FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Forged callbacks (a wrong token, another job's token, a bad Replicate
/// signature) are 401s that move nothing; the simulator's own forgeries
/// are refused while its real callbacks end the job.
#[tokio::test]
async fn forged_callbacks_are_refused_and_move_nothing() {
    let secret = genq_core::webhooks::Secret::generate();
    let faults = CallbackFaults {
        forge: true,
        ..CallbackFaults::default()
    };
    let env = env_for(
        ProviderKind::Replicate,
        faults,
        Duration::from_secs(300),
        Some(secret.expose()),
    )
    .await;
    let token = env.new_user("f", "f@example.com").await;
    env.grant("f@example.com", 10).await;
    // No worker yet: the job stays queued while we knock.
    let id = submit(&env, &token, "a quiet pond").await;
    let keys = genq_core::callbacks::CallbackKeys::from_settings(&env.settings).unwrap();
    let post = |url: String, signature: Option<String>| {
        let body = br#"{"id":"p1","status":"succeeded"}"#.to_vec();
        let mut req = env.client.post(url).body(body.clone());
        if let Some(sig) = signature {
            let ts = Utc::now().timestamp();
            let sig = if sig == "good" {
                secret.sign("msg_1", ts, &body)
            } else {
                sig
            };
            req = req
                .header("webhook-id", "msg_1")
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig);
        }
        req.send()
    };
    let path = |job: Uuid, token: &str| {
        format!(
            "{}/v1/providers/replicate/callback?job={job}&token={token}",
            env.base
        )
    };
    let good = keys.token("replicate", id);
    let other = keys.token("replicate", Uuid::new_v4());
    for (url, sig) in [
        (path(id, "forged"), Some("good".to_owned())),
        (path(id, &other), Some("good".to_owned())),
        (path(id, &good), None),
        (path(id, &good), Some("v1,AAAA".to_owned())),
    ] {
        let r = post(url.clone(), sig).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{url}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    }
    assert_eq!(
        callback_at(&env, id).await,
        None,
        "a forged callback moved the job"
    );
    let r = env
        .client
        .post(format!(
            "{}/v1/providers/replicate/callback?job=nope",
            env.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = env
        .client
        .post(format!(
            "{}/v1/providers/nobody/callback?job={id}&token={good}",
            env.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Signed and with its token, a callback for a job not at the provider
    // (still queued here) is received and ignored.
    let r = post(path(id, &good), Some("good".into())).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["outcome"], "ignored", "{body}");

    // The simulator forges one before each real callback.
    ends_despite_forgeries(env, &token, id).await;
}

/// With a worker, the job ends by the simulator's real callbacks while
/// every one it forged was refused.
async fn ends_despite_forgeries(env: TestEnv, token: &str, id: Uuid) {
    let worker = env.spawn_worker().await;
    env.wait_for_status(token, &id.to_string(), "succeeded", WAIT)
        .await;
    let stats = env.sim().stats.snapshot();
    assert!(stats.callbacks_forged >= 1, "{stats:?}");
    assert!(stats.callbacks_sent >= 1, "{stats:?}");
    assert_eq!(stats.callbacks_refused, stats.callbacks_forged, "{stats:?}");
    worker.stop().await;
    env.cleanup().await;
}

/// Every callback dropped: the job ends through the safety-net poll.
async fn dropped_callbacks_leave_the_job_to_the_safety_net(kind: ProviderKind) {
    let faults = CallbackFaults {
        drop_rate: 1.0,
        ..CallbackFaults::default()
    };
    let mut env = env_for(kind, faults, Duration::from_secs(1), None).await;
    // The first poll before the task ends, so the safety net is what ends it.
    env.settings.worker.poll_initial_ms = 250;
    let worker = env.spawn_worker().await;
    let token = env.new_user("d", "d@example.com").await;
    env.grant("d@example.com", 10).await;
    let id = submit(&env, &token, "a harbour at dawn").await;
    env.wait_for_status(&token, &id.to_string(), "succeeded", WAIT)
        .await;
    let stats = env.sim().stats.snapshot();
    assert_eq!(stats.callbacks_sent, 0, "{kind}: {stats:?}");
    assert!(stats.status_requests >= 2, "{kind}: {stats:?}");
    assert!(stats.callbacks_dropped >= 1, "{kind}: {stats:?}");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn replicate_without_callbacks_ends_by_the_safety_net() {
    dropped_callbacks_leave_the_job_to_the_safety_net(ProviderKind::Replicate).await;
}

#[tokio::test]
async fn fal_without_callbacks_ends_by_the_safety_net() {
    dropped_callbacks_leave_the_job_to_the_safety_net(ProviderKind::Fal).await;
}

#[tokio::test]
async fn kling_without_callbacks_ends_by_the_safety_net() {
    dropped_callbacks_leave_the_job_to_the_safety_net(ProviderKind::Kling).await;
}

#[tokio::test]
async fn luma_without_callbacks_ends_by_the_safety_net() {
    dropped_callbacks_leave_the_job_to_the_safety_net(ProviderKind::Luma).await;
}

#[tokio::test]
async fn seedance_without_callbacks_ends_by_the_safety_net() {
    dropped_callbacks_leave_the_job_to_the_safety_net(ProviderKind::Seedance).await;
}

/// A callback before the submit is answered, then the real one twice and
/// late, then a stale one (out of order): one settlement, the ledger sound,
/// and no wait for the minute-long first poll.
#[tokio::test]
async fn early_duplicated_delayed_and_reordered_callbacks_settle_once() {
    let faults = CallbackFaults {
        early: true,
        duplicate: true,
        reorder: true,
        delay: Duration::from_millis(300),
        ..CallbackFaults::default()
    };
    let env = env_for(ProviderKind::Kling, faults, Duration::from_secs(300), None).await;
    let worker = env.spawn_worker().await;
    let token = env.new_user("e", "e@example.com").await;
    env.grant("e@example.com", 30).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit(&env, &token, &format!("a field of wheat {i}")).await);
    }
    for id in &ids {
        env.wait_for_status(&token, &id.to_string(), "succeeded", WAIT)
            .await;
        // The early callback was noted while the job was being submitted.
        assert!(callback_at(&env, *id).await.is_some());
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited for the first poll"
    );
    // Early, real, duplicate and stale for each job, all answered.
    let all_sent = eventually(WAIT, || async {
        let s = env.sim().stats.snapshot();
        (s.callbacks_sent >= 12).then_some(s)
    })
    .await;
    assert!(all_sent.is_some(), "{:?}", env.sim().stats.snapshot());
    let settled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credit_ledger WHERE job_id = ANY($1) AND kind = 'commit'",
    )
    .bind(&ids)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(settled, 3);
    let violations = genq_store::ops::verify_ledger(&env.pool).await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    worker.stop().await;
    env.cleanup().await;
}

/// fal signs its callbacks with ED25519 (keys at its JWKS): the simulator's
/// forgeries (a good token, a bad signature) are refused, an unsigned
/// callback too, and the real ones end the job.
#[tokio::test]
async fn fal_callbacks_must_carry_fals_signature() {
    let faults = CallbackFaults {
        forge: true,
        ..CallbackFaults::default()
    };
    let env = env_for(ProviderKind::Fal, faults, Duration::from_secs(300), None).await;
    let token = env.new_user("s", "s@example.com").await;
    env.grant("s@example.com", 10).await;
    let id = submit(&env, &token, "a lantern in fog").await;
    let keys = genq_core::callbacks::CallbackKeys::from_settings(&env.settings).unwrap();
    let url = format!(
        "{}/v1/providers/fal/callback?job={id}&token={}",
        env.base,
        keys.token("fal", id)
    );
    let r = env.client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "unsigned");
    assert_eq!(callback_at(&env, id).await, None);
    ends_despite_forgeries(env, &token, id).await;
}
