//! Models and provider caps (#9): a submission naming a configured model
//! runs on that model's provider at the configured price; an unknown model
//! is a 400; a provider's concurrency and rate caps hold across workers
//! without burning attempts; a job whose provider the worker lacks ends
//! refunded and dead-lettered.

use std::time::{Duration, Instant};

use crate::harness::{eventually, test_settings, user_id, TestEnv};
use genq_core::config::ModelSettings;
use genq_provider_sim::{Dialect, SimConfig, SimHandle};
use genq_worker::Worker;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(40);

fn sim_config(generation_ms: u64, dialect: Dialect) -> SimConfig {
    SimConfig {
        generation: Duration::from_millis(generation_ms),
        dialect,
        ..SimConfig::default()
    }
}

async fn extra_sim(dialect: Dialect) -> SimHandle {
    genq_provider_sim::start(sim_config(200, dialect), "127.0.0.1:0")
        .await
        .expect("sim starts")
}

fn tasks_created(sim: &SimHandle) -> u64 {
    sim.stats.snapshot().tasks_created
}

async fn job_row(env: &TestEnv, id: &str) -> (String, Option<String>, i64, i32, String) {
    sqlx::query_as("SELECT provider, model, cost, attempts, status FROM jobs WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn ledger(env: &TestEnv, id: &str) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT kind, amount FROM credit_ledger WHERE job_id = $1::uuid ORDER BY id")
        .bind(id)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn submit(env: &TestEnv, token: &str, body: Value) -> String {
    let (status, job) = env.post("/v1/generations", token, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().to_owned()
}

/// The sentences of a job's `waiting` events, oldest first.
pub(crate) fn waiting_events(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "waiting")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_runs_on_its_provider_at_its_price() {
    let runway = extra_sim(Dialect::Runway).await;
    let mut settings = test_settings();
    settings.models.insert(
        "fast".into(),
        ModelSettings {
            kind: "runway".into(),
            base_url: runway.base_url(),
            api_key: secrecy::SecretString::from("test-runway-key"),
            cost: Some(3),
            ..ModelSettings::default()
        },
    );
    settings
        .models
        .insert("plain".into(), ModelSettings::default());
    let env = TestEnv::with_sim_and_settings(sim_config(200, Dialect::TaskId), settings).await;
    let worker = env.spawn_worker().await;
    let token = env.new_user("buyer", "buyer@example.com").await;
    env.grant("buyer@example.com", 10).await;

    // The price list a front end shows.
    let (_, credits) = env.get("/v1/credits", &token).await;
    assert_eq!(credits["video_cost"], 10);
    assert_eq!(
        credits["models"],
        json!([{"name": "fast", "cost": 3, "can_generate": true},
               {"name": "plain", "cost": 10, "can_generate": true}])
    );

    // A model: its provider (the Runway simulator), its price.
    let body = json!({"prompt": "a fox in the snow", "model": "fast"});
    let (status, first) = env
        .call(
            reqwest::Method::POST,
            "/v1/generations",
            Some(&token),
            Some(&body),
            &[("Idempotency-Key", "fox-1")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["cost"], 3);
    assert_eq!(first["model"], "fast");
    let fast = first["id"].as_str().unwrap().to_owned();
    let done = env.wait_for_status(&token, &fast, "succeeded", WAIT).await;
    assert_eq!(done["cost"], 3);
    let (provider, model, cost, attempts, _) = job_row(&env, &fast).await;
    assert_eq!(
        (provider.as_str(), model.as_deref(), cost, attempts),
        ("fast", Some("fast"), 3, 1)
    );
    assert_eq!(
        ledger(&env, &fast).await,
        [("reserve".into(), 3), ("commit".into(), 3)]
    );
    assert_eq!(tasks_created(&runway), 1);
    assert_eq!(tasks_created(env.sim()), 0);

    // The same key with another model is another request.
    let other = json!({"prompt": "a fox in the snow", "model": "plain"});
    let (status, conflict) = env
        .call(
            reqwest::Method::POST,
            "/v1/generations",
            Some(&token),
            Some(&other),
            &[("Idempotency-Key", "fox-1")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");

    // No model: the default provider at credits.video_cost.
    let default = submit(&env, &token, json!({"prompt": "a fox, the default way"})).await;
    env.wait_for_status(&token, &default, "succeeded", WAIT)
        .await;
    let (provider, model, cost, _, _) = job_row(&env, &default).await;
    assert_eq!((provider.as_str(), model, cost), ("sim", None, 10));
    assert_eq!(tasks_created(env.sim()), 1);
    assert_eq!(tasks_created(&runway), 1);
    let uid = user_id(&env.pool, "buyer").await;
    assert_eq!(
        crate::harness::ledger_balances(&env.pool, uid).await,
        (18 - 13, 0, 13)
    );
    worker.stop().await;
    runway.stop();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_refused_naming_the_field() {
    let mut settings = test_settings();
    settings
        .models
        .insert("fast".into(), ModelSettings::default());
    let env = TestEnv::with_settings(settings).await;
    let token = env.new_user("curious", "curious@example.com").await;
    let (status, body) = env
        .post(
            "/v1/generations",
            &token,
            &json!({"prompt": "a cat", "model": "turbo-ultra"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    assert_eq!(body["error"]["field"], "model");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("turbo-ultra") && message.contains("fast"),
        "{message}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "nothing recorded, nothing reserved");

    // The API document tells front ends about both.
    let (_, doc) = env
        .call(reqwest::Method::GET, "/openapi.json", None, None, &[])
        .await;
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["CreateGeneration"]["properties"]["model"].is_object());
    assert!(schemas["CreditsView"]["properties"]["models"].is_object());
    let required = schemas["CreditsView"]["required"].as_array().unwrap();
    assert!(
        !required.contains(&json!("models")),
        "absent without models"
    );
    assert!(schemas["ModelPrice"]["properties"]["cost"].is_object());
    env.cleanup().await;
}

/// A model priced per second costs its price times the length asked for:
/// reserved so, refused naming that price, and said so before submitting.
#[tokio::test]
async fn a_price_per_second_is_charged_for_the_length_asked_for() {
    let mut settings = test_settings();
    settings.credits.initial = 0;
    settings.models.insert(
        "gen4".into(),
        ModelSettings {
            cost_per_second: Some(5),
            ..ModelSettings::default()
        },
    );
    let env = TestEnv::with_settings(settings).await;
    let token = env.new_user("framer", "framer@example.com").await;
    env.grant("framer@example.com", 60).await;
    let (s, prices) = env.get("/v1/models?duration_seconds=10", &token).await;
    assert_eq!(s, StatusCode::OK, "{prices}");
    assert_eq!(prices["duration_seconds"], 10);
    assert_eq!(prices["models"][0]["name"], "gen4");
    assert_eq!(prices["models"][0]["cost"], 50);
    assert_eq!(prices["models"][0]["cost_per_second"], 5);
    assert_eq!(prices["models"][0]["can_generate"], true);
    let (s, _) = env.get("/v1/models?duration_seconds=61", &token).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // /v1/credits says the price at the default length.
    let (_, credits) = env.get("/v1/credits", &token).await;
    assert_eq!(credits["models"][0]["cost"], 25);
    let (s, job) = env
        .post(
            "/v1/generations",
            &token,
            &json!({"prompt": "ten seconds", "model": "gen4", "duration_seconds": 10}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["cost"], 50);
    let (s, refused) = env
        .post(
            "/v1/generations",
            &token,
            &json!({"prompt": "three seconds", "model": "gen4", "duration_seconds": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(
        (
            refused["error"]["required"].as_i64(),
            refused["error"]["available"].as_i64()
        ),
        (Some(15), Some(10))
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_cap_of_one_runs_one_task_at_a_time() {
    let mut settings = test_settings();
    settings.provider.max_concurrent = 1;
    let env = TestEnv::with_sim_and_settings(sim_config(400, Dialect::TaskId), settings).await;
    // Two workers: the cap holds across them.
    let workers = [env.spawn_worker().await, env.spawn_worker().await];
    let token = env.new_user("patient", "patient@example.com").await;
    env.grant("patient@example.com", 30).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit(&env, &token, json!({"prompt": format!("video {i}")})).await);
    }
    let deadline = Instant::now() + WAIT;
    let mut most = 0;
    loop {
        let (in_flight, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status IN ('submitting','running')),
                    count(*) FILTER (WHERE status = 'succeeded') FROM jobs",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        assert!(
            in_flight <= 1,
            "{in_flight} jobs in flight under a cap of 1"
        );
        most = most.max(in_flight);
        if done == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(most, 1);
    assert_eq!(tasks_created(env.sim()), 3);
    let mut waited = 0;
    for id in &ids {
        let (_, _, _, attempts, _) = job_row(&env, id).await;
        assert_eq!(attempts, 1, "waiting at the cap is no attempt");
        let (_, job) = env.get(&format!("/v1/generations/{id}"), &token).await;
        let waits = waiting_events(&job);
        // Parked once, told once.
        assert!(waits.len() <= 1, "{job:#}");
        if let Some(w) = waits.first() {
            assert!(
                w.starts_with("Waiting for a free slot at ") && w.contains("(1 at once)"),
                "{w}"
            );
            waited += 1;
        }
    }
    assert!(waited >= 1, "someone had to wait");
    for w in workers {
        w.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_cap_holds_the_job_over_it_in_the_queue() {
    let mut settings = test_settings();
    settings.provider.max_per_minute = 2;
    let env = TestEnv::with_sim_and_settings(sim_config(200, Dialect::TaskId), settings).await;
    let worker = env.spawn_worker().await;
    let token = env.new_user("eager", "eager@example.com").await;
    env.grant("eager@example.com", 30).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(submit(&env, &token, json!({"prompt": format!("clip {i}")})).await);
    }
    let succeeded = eventually(WAIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    assert!(succeeded.is_some(), "two jobs should run at once");
    let waiting: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT id::text, attempts, provider_task_id FROM jobs WHERE status <> 'succeeded'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(waiting.len(), 1);
    let (id, attempts, task) = waiting[0].clone();
    let (_, _, _, _, status) = job_row(&env, &id).await;
    assert_eq!((status.as_str(), attempts, task), ("queued", 0, None));
    assert_eq!(tasks_created(env.sim()), 2);
    let (_, job) = env.get(&format!("/v1/generations/{id}"), &token).await;
    let waits = waiting_events(&job);
    assert_eq!(waits.len(), 1, "{job:#}");
    assert!(
        waits[0].contains("limit of 2 submissions per minute"),
        "{waits:?}"
    );
    // It waits without a delivery: the start queue is empty.
    let conn = genq_broker::connect(&env.settings).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let depth = env.topology().start_queue_depth(&ch).await.unwrap();
    assert_eq!(depth, 0);
    // A waiting job can still be canceled, with its refund.
    let (status, canceled) = env
        .post(&format!("/v1/generations/{id}/cancel"), &token, &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(
        ledger(&env, &id).await,
        [("reserve".into(), 10), ("refund".into(), 10)]
    );
    let _ = conn.close(200, "done".into()).await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_naming_a_provider_the_worker_lacks_is_refunded_and_dead_lettered() {
    let mut settings = test_settings();
    settings
        .models
        .insert("ghost".into(), ModelSettings::default());
    let env = TestEnv::with_sim_and_settings(sim_config(200, Dialect::TaskId), settings).await;
    // A worker of an older configuration, without the model, giving up at once.
    let mut worker_settings = env.settings.clone();
    worker_settings.models.clear();
    worker_settings.worker.max_attempts = 1;
    let worker = Worker::build(worker_settings, None).await.unwrap();
    let stop = CancellationToken::new();
    let run = tokio::spawn(worker.run_until_stopped(stop.clone()));
    let token = env.new_user("early", "early@example.com").await;
    env.grant("early@example.com", 10).await;
    let id = submit(&env, &token, json!({"prompt": "a ghost", "model": "ghost"})).await;
    let dead = env.wait_for_status(&token, &id, "dead", WAIT).await;
    let reason = dead["error"]["message"].as_str().unwrap();
    assert!(reason.contains("no provider named \"ghost\""), "{dead:#}");
    assert_eq!(
        ledger(&env, &id).await,
        [("reserve".into(), 10), ("refund".into(), 10)]
    );
    let letters = eventually(WAIT, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE job_id = $1::uuid")
                .bind(&id)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(
        letters.is_some(),
        "the job is dead-lettered for an operator"
    );
    assert_eq!(tasks_created(env.sim()), 0);
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    env.cleanup().await;
}
