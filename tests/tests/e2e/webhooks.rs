//! Signed webhooks end to end, against the real Postgres, RabbitMQ, the
//! provider simulator and a real HTTP receiver (port 0) that records every
//! request and answers scripted statuses: signatures checked here with an
//! HMAC computed independently of genq's signing code, retries, 410, secret
//! rotation, the SSRF guard, a dead endpoint beside live jobs, and operators
//! listing failed deliveries and replaying one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{env_of, eventually, test_settings, TestEnv};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::Parser;
use genq_core::config::Settings;
use genq_core::messages::WebhookMessage;
use genq_core::webhooks::JobStatusWebhook;
use genq_provider_sim::SimConfig;
use genqctl::{execute, Cli};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    headers: HeaderMap,
    body: Vec<u8>,
    at: Instant,
}

impl Hit {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What the receiver answers: the scripted statuses in turn, then `then`
/// (or, with `hang`, nothing at all, ever).
struct Script {
    next: VecDeque<u16>,
    then: u16,
    hang: bool,
}

/// A real HTTP server on port 0 that records requests and answers as scripted.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<Script>>,
    task: tokio::task::JoinHandle<()>,
}

type Shared = (Arc<Mutex<Vec<Hit>>>, Arc<Mutex<Script>>);

async fn record(
    State((hits, script)): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> AxumStatus {
    hits.lock().unwrap().push(Hit {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    let (status, hang) = {
        let mut s = script.lock().unwrap();
        (s.next.pop_front().unwrap_or(s.then), s.hang)
    };
    if hang {
        std::future::pending::<()>().await;
    }
    AxumStatus::from_u16(status).unwrap()
}

impl Receiver {
    async fn start(statuses: &[u16], then: u16) -> Self {
        Self::start_with(statuses, then, false).await
    }

    async fn start_with(statuses: &[u16], then: u16, hang: bool) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script {
            next: statuses.iter().copied().collect(),
            then,
            hang,
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state((hits.clone(), script.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/hook",
            listener.local_addr().unwrap().port()
        );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            hits,
            script,
            task,
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        self.script.lock().unwrap().then = status;
    }

    /// Waits until at least `n` requests came, and returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Hit> {
        let got = eventually(WAIT, || async {
            let hits = self.hits();
            (hits.len() >= n).then_some(hits)
        })
        .await;
        got.unwrap_or_else(|| panic!("expected {n} requests, got {:#?}", self.hits()))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The signature genq should have sent, computed here from the spec and not
/// with genq's own signing code.
fn expected_signature(secret: &str, hit: &Hit) -> String {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(hit.header("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(hit.header("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(&hit.body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

fn signatures(hit: &Hit) -> Vec<String> {
    hit.header("webhook-signature")
        .split(' ')
        .map(str::to_owned)
        .collect()
}

/// Loopback targets allowed (the receiver is local), short retries, no jitter.
fn hook_settings() -> Settings {
    let mut s = test_settings();
    s.webhooks.allow_private = true;
    s.webhooks.retry_schedule_ms = vec![300, 300];
    s.webhooks.jitter = 0.0;
    s
}

fn fast_sim() -> SimConfig {
    SimConfig {
        generation: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

async fn register(env: &TestEnv, url: &str, user: Option<&str>) -> (String, String) {
    let admin = env.admin_token("hook-admin");
    let mut body = json!({ "url": url });
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    let (status, created) = env.post("/v1/admin/webhooks", &admin, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// The deliveries the admin API lists with `query`.
async fn deliveries(env: &TestEnv, query: &str) -> Vec<Value> {
    let admin = env.admin_token("hook-admin");
    let (status, list) = env
        .get(&format!("/v1/admin/webhook-deliveries{query}"), &admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

/// Waits until the delivery `id` is in `status`, and returns it with its attempts.
async fn delivery_in(env: &TestEnv, id: i64, status: &str) -> Value {
    let admin = env.admin_token("hook-admin");
    let path = format!("/v1/admin/webhook-deliveries/{id}");
    let found = eventually(WAIT, || async {
        let (_, d) = env.get(&path, &admin).await;
        (d["status"] == status).then_some(d)
    })
    .await;
    match found {
        Some(d) => d,
        None => panic!(
            "delivery {id} never {status}: {:#}",
            env.get(&path, &admin).await.1
        ),
    }
}

#[tokio::test]
async fn status_changes_arrive_signed_and_in_order() {
    let env = TestEnv::with_sim_and_settings(fast_sim(), hook_settings()).await;
    let mine = Receiver::start(&[], 200).await;
    let everyone = Receiver::start(&[], 200).await;
    let t = env.new_user("hook-user", "hook@example.com").await;
    let other = env.new_user("hook-other", "other@example.com").await;
    env.grant("hook@example.com", 2).await;

    let (id, secret) = register(&env, &mine.url, Some("hook@example.com")).await;
    let (_, everyone_secret) = register(&env, &everyone.url, None).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert!((24..=64).contains(&B64.decode(&secret[6..]).unwrap().len()));
    // The secret is shown once: no listing or read carries it.
    let admin = env.admin_token("hook-admin");
    for path in [
        "/v1/admin/webhooks".to_owned(),
        format!("/v1/admin/webhooks/{id}"),
    ] {
        let (status, body) = env.get(&path, &admin).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.to_string().contains(&secret[6..]), "{body}");
    }

    let worker = env.spawn_worker().await;
    let (_, job) = env.submit(&t, "a lighthouse at dusk").await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    env.wait_for_status(&t, &job_id, "succeeded", WAIT).await;
    // Another user's refused attempt goes only to the tenant-wide endpoint.
    let (status, _) = env.submit(&other, "refused").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);

    let hits = mine.wait_for(4).await;
    let changes: Vec<(Value, Value)> = hits
        .iter()
        .map(|h| {
            (
                h.json()["data"]["from_status"].clone(),
                h.json()["data"]["to_status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (Value::Null, json!("queued")),
            (json!("queued"), json!("submitting")),
            (json!("submitting"), json!("running")),
            (json!("running"), json!("succeeded")),
        ],
        "in order, each once"
    );
    let now = chrono::Utc::now().timestamp();
    let mut event_ids = vec![];
    for hit in &hits {
        assert_eq!(hit.header("content-type"), "application/json");
        let ts: i64 = hit.header("webhook-timestamp").parse().unwrap();
        assert!((now - ts).abs() < 60, "timestamp {ts} is not now ({now})");
        assert_eq!(signatures(hit), [expected_signature(&secret, hit)]);
        // The body is the documented payload, field for field.
        let payload: JobStatusWebhook = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(payload.event_type, "job.status");
        assert_eq!(payload.data.job_id.to_string(), job_id);
        assert_eq!(payload.data.external_user_id, "hook-user");
        assert_eq!(payload.data.cost, 10);
        assert_eq!(
            hit.header("webhook-id"),
            format!("msg_genq_{}", payload.data.event_id)
        );
        event_ids.push(payload.data.event_id);
    }
    assert!(event_ids.windows(2).all(|w| w[0] < w[1]), "{event_ids:?}");
    let done = hits[3].json();
    assert_eq!(
        done["data"]["result_url"],
        json!(format!("/v1/generations/{job_id}/video"))
    );
    assert!(done["data"]["video_bytes"].as_i64().unwrap() > 0);
    assert!(done["data"]["error"].is_null());

    // The tenant-wide endpoint got the job's four changes and the refusal.
    let all = everyone.wait_for(5).await;
    let refusal = all
        .iter()
        .map(Hit::json)
        .find(|b| b["data"]["to_status"] == "rejected")
        .expect("the refusal");
    assert_eq!(refusal["data"]["external_user_id"], "hook-other");
    assert_eq!(refusal["data"]["error"]["code"], "insufficient_credits");
    assert_eq!(
        (
            refusal["data"]["required_credits"].as_i64(),
            refusal["data"]["available_credits"].as_i64()
        ),
        (Some(10), Some(8))
    );
    for hit in &all {
        assert_eq!(signatures(hit), [expected_signature(&everyone_secret, hit)]);
    }
    assert_eq!(
        mine.hits().len(),
        4,
        "the user's endpoint got only its user's job"
    );

    // Each delivery is recorded with its one attempt.
    let recorded = deliveries(&env, &format!("?endpoint_id={id}")).await;
    assert_eq!(recorded.len(), 4);
    for d in &recorded {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["last_status_code"], 200);
        assert!(d["last_response_ms"].as_i64().is_some());
    }
    // What the trigger and the sender wrote to the outbox are typed webhook messages.
    let wakeups: Vec<Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE routing_key = 'webhook'")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert!(wakeups.len() >= 9, "{wakeups:?}");
    for w in wakeups {
        serde_json::from_value::<WebhookMessage>(w.clone()).unwrap_or_else(|e| panic!("{w}: {e}"));
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_attempt_is_retried_and_every_attempt_recorded() {
    let env = TestEnv::with_settings(hook_settings()).await;
    let rx = Receiver::start(&[500], 200).await;
    let (_, secret) = register(&env, &rx.url, None).await;
    let worker = env.spawn_worker().await;
    // A refused submission: one status change, no provider needed.
    let t = env.new_user("retry-user", "retry@example.com").await;
    let (status, _) = env.submit(&t, "too poor").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);

    let hits = rx.wait_for(2).await;
    assert_eq!(hits[0].header("webhook-id"), hits[1].header("webhook-id"));
    assert_eq!(hits[0].body, hits[1].body, "a retry sends the same event");
    assert!(
        hits[1].at - hits[0].at >= Duration::from_millis(250),
        "the retry waited: {:?}",
        hits[1].at - hits[0].at
    );
    for hit in &hits {
        assert_eq!(signatures(hit), [expected_signature(&secret, hit)]);
    }
    let id = deliveries(&env, "").await[0]["id"].as_i64().unwrap();
    let d = delivery_in(&env, id, "delivered").await;
    assert_eq!(d["attempts"], 2);
    let codes: Vec<Value> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, [json!(500), json!(200)]);
    assert_eq!(d["attempt_log"][0]["error"], "HTTP 500");
    assert!(d["attempt_log"][0]["response_ms"].as_i64().is_some());
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let env = TestEnv::with_settings(hook_settings()).await;
    let rx = Receiver::start(&[], 410).await;
    let (id, _) = register(&env, &rx.url, None).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("gone-user", "gone@example.com").await;
    env.submit(&t, "first").await;
    rx.wait_for(1).await;
    let admin = env.admin_token("hook-admin");
    let endpoint = eventually(WAIT, || async {
        let (_, e) = env.get(&format!("/v1/admin/webhooks/{id}"), &admin).await;
        (e["state"] == "disabled").then_some(e)
    })
    .await
    .expect("the endpoint is disabled");
    assert_eq!(
        endpoint["disabled_reason"],
        "the endpoint answered 410 Gone"
    );
    let d = &deliveries(&env, "").await[0];
    assert_eq!(
        (d["status"].clone(), d["last_status_code"].clone()),
        (json!("disabled"), json!(410))
    );
    // Nothing more is made for it, nor sent.
    env.submit(&t, "second").await;
    let made: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(made, 1);
    let disabled: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'webhook.disable'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(disabled, 1);
    // A replay is refused while the endpoint is disabled.
    let (status, body) = env
        .post(
            &format!("/v1/admin/webhook-deliveries/{}/replay", d["id"]),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "invalid_state");
    assert_eq!(rx.hits().len(), 1);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_rotation_signs_with_both_secrets() {
    let env = TestEnv::with_settings(hook_settings()).await;
    let rx = Receiver::start(&[], 200).await;
    let (id, old) = register(&env, &rx.url, None).await;
    let admin = env.admin_token("hook-admin");
    let (status, rotated) = env
        .post(
            &format!("/v1/admin/webhooks/{id}/rotate"),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(rotated["previous_secret_expires_at"].clone()).unwrap();
    let overlap = until - chrono::Utc::now();
    assert!(
        (23..=24).contains(&overlap.num_hours()),
        "the old secret signs for a day by default: {overlap}"
    );

    let worker = env.spawn_worker().await;
    let t = env.new_user("rot-user", "rot@example.com").await;
    env.submit(&t, "rotated").await;
    let hit = rx.wait_for(1).await.remove(0);
    let sigs = signatures(&hit);
    assert_eq!(
        sigs,
        [
            expected_signature(&new, &hit),
            expected_signature(&old, &hit)
        ],
        "the new secret's signature, then the old one's"
    );
    // Once the overlap is over, only the new secret signs.
    sqlx::query("UPDATE webhook_endpoints SET previous_secret_until = now() - interval '1 second'")
        .execute(&env.pool)
        .await
        .unwrap();
    env.submit(&t, "after the overlap").await;
    let hit = rx.wait_for(2).await.remove(1);
    assert_eq!(signatures(&hit), [expected_signature(&new, &hit)]);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let env = TestEnv::new().await; // webhooks.allow_private is false by default
    assert!(!env.settings.webhooks.allow_private);
    let rx = Receiver::start(&[], 200).await;
    let admin = env.admin_token("hook-admin");
    let port = rx.url.split(':').nth(2).unwrap().trim_end_matches("/hook");
    for url in [
        rx.url.clone(),
        format!("http://localhost:{port}/hook"),
        "http://[::1]/hook".into(),
        "http://10.0.0.8/hook".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "http://100.64.1.1/".into(),
        "http://[fd12::1]/".into(),
        "ftp://hooks.example.com/".into(),
        "https://user:pass@hooks.example.com/".into(),
        "hooks.example.com/no-scheme".into(),
    ] {
        let (status, body) = env
            .post("/v1/admin/webhooks", &admin, &json!({ "url": url }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{url}: {body}");
    }
    let (status, body) = env
        .post(
            "/v1/admin/webhooks",
            &admin,
            &json!({"url": "https://hooks.example.com/x", "user": "nobody@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Registered anyway (say, while allowed): the sender refuses it, and
    // a name that resolves to a private address is refused too.
    let worker = env.spawn_worker().await;
    genq_store::store::webhooks::create_endpoint(&env.pool, &rx.url, None, "test")
        .await
        .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let resolves_private = !host.is_empty()
        && tokio::net::lookup_host((host, 0))
            .await
            .is_ok_and(|mut a| a.all(|a| !genq_core::webhooks::is_public(a.ip())));
    if resolves_private {
        // Accepted at registration (names are resolved when sending).
        let named = format!("http://{host}:{port}/hook");
        let (status, body) = env
            .post("/v1/admin/webhooks", &admin, &json!({ "url": named }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let t = env.new_user("ssrf-user", "ssrf@example.com").await;
    env.submit(&t, "refused targets").await;
    let expected = if resolves_private { 2 } else { 1 };
    let refused = eventually(WAIT, || async {
        let list = deliveries(&env, "").await;
        (list.len() == expected && list.iter().all(|d| d["attempts"].as_i64() >= Some(1)))
            .then_some(list)
    })
    .await
    .expect("every delivery attempted");
    for d in &refused {
        let error = d["last_error"].as_str().unwrap();
        assert!(error.contains("refused"), "{error}");
        assert!(d["last_status_code"].is_null(), "{d}");
    }
    assert!(rx.hits().is_empty(), "nothing reached the private address");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_dead_endpoint_never_blocks_jobs() {
    let mut settings = hook_settings();
    settings.webhooks.timeout_ms = 1_000;
    settings.webhooks.concurrency = 2;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    // One endpoint never answers; another's port is closed.
    let silent = Receiver::start_with(&[], 200, true).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/hook", l.local_addr().unwrap().port())
    };
    register(&env, &silent.url, None).await;
    register(&env, &closed, None).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("busy-user", "busy@example.com").await;
    env.grant("busy@example.com", 50).await;
    let started = Instant::now();
    let mut jobs = vec![];
    for i in 0..5 {
        let (status, job) = env.submit(&t, &format!("job {i}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        jobs.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &jobs {
        env.wait_for_status(&t, id, "succeeded", WAIT).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the jobs took {:?}",
        started.elapsed()
    );
    // The endpoints were tried meanwhile, and their failures recorded.
    let tried = eventually(WAIT, || async {
        let errors: Vec<String> = deliveries(&env, "?limit=100")
            .await
            .iter()
            .filter_map(|d| d["last_error"].as_str().map(str::to_owned))
            .collect();
        let timeout = errors
            .iter()
            .any(|e| e.contains("no answer within 1000 ms"));
        let refused = errors.iter().any(|e| !e.contains("no answer"));
        (timeout && refused).then_some(errors)
    })
    .await;
    assert!(
        tried.is_some(),
        "{:#?}",
        deliveries(&env, "?limit=100").await
    );
    assert!(!silent.hits().is_empty());
    worker.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn operators_list_failed_deliveries_and_replay_one() {
    let env = TestEnv::with_settings(hook_settings()).await;
    let rx = Receiver::start(&[], 503).await;
    let (endpoint, _) = register(&env, &rx.url, None).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("replay-user", "replay@example.com").await;
    env.submit(&t, "will fail").await;
    // The first attempt and two retries, then the schedule has run out.
    let id = eventually(WAIT, || async {
        deliveries(&env, "?status=failed")
            .await
            .first()
            .map(|d| d["id"].as_i64().unwrap())
    })
    .await
    .expect("a failed delivery");
    let failed = delivery_in(&env, id, "failed").await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["attempt_log"].as_array().unwrap().len(), 3);
    assert_eq!(rx.hits().len(), 3);
    assert!(deliveries(&env, "?status=delivered").await.is_empty());
    let (status, body) = env
        .get(
            "/v1/admin/webhook-deliveries?status=lost",
            &env.admin_token("a"),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("status"))
    );

    // genqctl lists it too.
    let cli = Cli::try_parse_from([
        "genqctl",
        "--json",
        "webhooks",
        "deliveries",
        "--status",
        "failed",
    ])
    .unwrap();
    let out = execute(&cli, &env.settings, &env.pool).await.unwrap();
    let listed: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(listed[0]["id"], id);

    // The receiver is fixed; the operator replays the delivery.
    rx.answer(204);
    let admin = env.admin_token("hook-admin");
    let (status, replayed) = env
        .post(
            &format!("/v1/admin/webhook-deliveries/{id}/replay"),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["status"], "pending");
    let done = delivery_in(&env, id, "delivered").await;
    assert_eq!(done["attempts"], 4);
    let hits = rx.wait_for(4).await;
    assert_eq!(hits[3].header("webhook-id"), hits[0].header("webhook-id"));
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action LIKE 'webhook.%' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(audited, ["webhook.create", "webhook.replay"]);

    // genqctl replays, rotates and removes; a removed endpoint drops its deliveries.
    let run = |args: Vec<String>| {
        let settings = env.settings.clone();
        let pool = env.pool.clone();
        async move {
            let cli =
                Cli::try_parse_from(std::iter::once("genqctl".to_owned()).chain(args)).unwrap();
            execute(&cli, &settings, &pool).await.unwrap()
        }
    };
    let out = run(vec![
        "webhooks".into(),
        "replay".into(),
        id.to_string(),
        "--actor".into(),
        "olga".into(),
    ])
    .await;
    assert_eq!(out.code, 0, "{}", out.output);
    rx.wait_for(5).await;
    let out = run(vec!["webhooks".into(), "rotate".into(), endpoint.clone()]).await;
    assert!(out.output.contains("whsec_"), "{}", out.output);
    let out = run(vec!["webhooks".into(), "list".into()]).await;
    assert!(
        out.output.contains(&endpoint) && !out.output.contains("whsec_"),
        "{}",
        out.output
    );
    let out = run(vec!["webhooks".into(), "remove".into(), endpoint.clone()]).await;
    assert_eq!(out.code, 0, "{}", out.output);
    let (status, _) = env
        .get(&format!("/v1/admin/webhooks/{endpoint}"), &admin)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a deleted endpoint is gone");
    let (status, _) = env
        .call(
            Method::DELETE,
            &format!("/v1/admin/webhooks/{endpoint}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Deliveries are made with the status change, in its transaction: none now.
    let before = deliveries(&env, "").await.len();
    let (status, _) = env.submit(&t, "after the removal").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        deliveries(&env, "").await.len(),
        before,
        "nothing for a removed endpoint"
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_waiting_delivery_is_replayed_at_once_or_dropped_with_its_endpoint() {
    let mut settings = hook_settings();
    settings.webhooks.retry_schedule_ms = vec![60_000];
    let env = TestEnv::with_settings(settings).await;
    let rx = Receiver::start(&[500, 200], 500).await;
    let (endpoint, _) = register(&env, &rx.url, None).await;
    let worker = env.spawn_worker().await;
    let admin = env.admin_token("hook-admin");
    let t = env.new_user("drop-user", "drop@example.com").await;

    // A delivery waiting a minute for its retry is sent at once when replayed.
    env.submit(&t, "first").await;
    rx.wait_for(1).await;
    let first = deliveries(&env, "").await[0]["id"].as_i64().unwrap();
    // Pending before its first attempt too: wait until the failed attempt
    // (the receiver has answered it) is recorded.
    let waiting = eventually(WAIT, || async {
        let d = delivery_in(&env, first, "pending").await;
        (d["attempts"] == 1).then_some(d)
    })
    .await;
    assert!(waiting.is_some(), "the first attempt was never recorded");
    let (status, body) = env
        .post(
            &format!("/v1/admin/webhook-deliveries/{first}/replay"),
            &admin,
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = delivery_in(&env, first, "delivered").await;
    assert_eq!(done["attempts"], 2);

    // Another waits in a wait queue; the endpoint goes meanwhile: it is dropped.
    env.submit(&t, "second").await;
    let second = eventually(WAIT, || async {
        let d = deliveries(&env, "").await.remove(0);
        (d["id"] != first && d["attempts"] == 1).then(|| d["id"].as_i64().unwrap())
    })
    .await
    .expect("the second delivery's first attempt is recorded");
    let (status, _) = env
        .call(
            Method::DELETE,
            &format!("/v1/admin/webhooks/{endpoint}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let d = delivery_in(&env, second, "disabled").await;
    assert_eq!(d["last_error"], "dropped: the endpoint was deleted");
    assert_eq!(d["attempts"], 1);
    assert_eq!(rx.hits().len(), 3);
    worker.stop().await;
    env.cleanup().await;
}

#[test]
fn the_webhook_settings_come_from_the_environment_and_are_checked() {
    let s = Settings::load_from(
        None,
        env_of(&[
            ("GENQ__WEBHOOKS__ALLOW_PRIVATE", "true"),
            ("GENQ__WEBHOOKS__RETRY_SCHEDULE_MS", "100,2000"),
        ]),
    )
    .unwrap();
    assert!(s.webhooks.allow_private);
    assert_eq!(s.webhooks.retry_schedule_ms, [100, 2000]);
    let defaults = Settings::default().webhooks;
    assert!(!defaults.allow_private);
    assert_eq!(defaults.timeout_ms, 15_000);
    assert_eq!(
        defaults.retry_schedule_ms,
        [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000]
    );
    let mut bad = Settings::default();
    bad.webhooks.retry_schedule_ms = vec![0];
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("webhooks.retry_schedule_ms") && e.contains("GENQ__WEBHOOKS__RETRY_SCHEDULE_MS"),
        "{e}"
    );
    let mut bad = Settings::default();
    bad.webhooks.timeout_ms = 0;
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("webhooks.timeout_ms"));
}
