//! Provider lifecycles through the whole system (API, worker, simulator
//! dialect, Postgres, RabbitMQ): Runway's THROTTLED waits without spending
//! attempts, Replicate's `aborted` is refunded, and a running fal task is
//! canceled at the provider.

use std::time::Duration;

use crate::harness::{eventually, test_settings, TestEnv};
use genq_core::config::ProviderKind;
use genq_provider_sim::{Dialect, SimConfig};
use reqwest::StatusCode;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

async fn env_for(kind: ProviderKind, dialect: Dialect, generation: Duration) -> TestEnv {
    let mut settings = test_settings();
    settings.provider.kind = kind.as_str().into();
    settings.provider.api_key = secrecy::SecretString::from("test-key");
    let sim = SimConfig {
        generation,
        dialect,
        url_ttl: Some(Duration::from_secs(60)),
        ..SimConfig::default()
    };
    TestEnv::with_sim_and_settings(sim, settings).await
}

async fn attempts(env: &TestEnv, id: &str) -> i32 {
    sqlx::query_scalar("SELECT attempts FROM jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

fn provider_states(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "provider")
        .map(|e| e["data"]["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn runway_throttled_waits_on_the_timeline_without_spending_attempts() {
    let env = env_for(
        ProviderKind::Runway,
        Dialect::Runway,
        Duration::from_millis(600),
    )
    .await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("tia", "tia@example.com").await;
    env.grant("tia@example.com", 10).await;
    let (s, job) = env.submit(&t, "a quiet street [sim:throttle]").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    let done = env.wait_for_status(&t, id, "succeeded", WAIT).await;
    let states = provider_states(&done);
    assert!(states.iter().any(|s| s == "throttled"), "{states:?}");
    // Throttled is a wait at the provider, not a failure: one submission.
    assert_eq!(attempts(&env, id).await, 1);
    assert_eq!(env.sim().stats.snapshot().tasks_created, 1);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn replicate_aborted_is_refunded() {
    let env = env_for(
        ProviderKind::Replicate,
        Dialect::Replicate,
        Duration::from_millis(300),
    )
    .await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("abe", "abe@example.com").await;
    env.grant("abe@example.com", 10).await;
    let (_, job) = env.submit(&t, "a train [sim:abort]").await;
    let id = job["id"].as_str().unwrap();
    let done = env.wait_for_status(&t, id, "failed", WAIT).await;
    assert_eq!(done["error"]["code"], "provider_aborted", "{done:#}");
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["spent"].as_i64()),
        (Some(18), Some(0))
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_running_fal_task_is_canceled_at_the_provider() {
    let env = env_for(ProviderKind::Fal, Dialect::Fal, Duration::from_secs(30)).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("cy", "cy@example.com").await;
    env.grant("cy@example.com", 10).await;
    let (_, job) = env.submit(&t, "a slow sunrise").await;
    let id = job["id"].as_str().unwrap();
    env.wait_for_status(&t, id, "running", WAIT).await;
    let (s, canceled) = env
        .post(
            &format!("/v1/generations/{id}/cancel"),
            &t,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    let asked = eventually(WAIT, || async {
        (env.sim().stats.snapshot().cancels >= 1).then_some(())
    })
    .await;
    assert!(asked.is_some(), "the provider was never asked to cancel");
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["available"], 18, "{credits}");
    worker.stop().await;
    env.cleanup().await;
}
