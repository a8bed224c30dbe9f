//! Test harness: each test gets its own database and queue prefix, a real
//! API on port 0, and on demand the provider simulator and in-process workers.

use std::future::Future;

use std::time::{Duration, Instant};

use genq_api::auth::{Claims, ADMIN_ROLE};
use genq_api::Application;
use genq_broker::Topology;
use genq_core::config::Settings;
use genq_core::telemetry;
use genq_provider_sim::{SimConfig, SimHandle};
use genq_store::db;
use genq_worker::Worker;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// This test process's JWT secret: random, so no secret of the suite is
/// written anywhere (the API refuses the ones that are).
pub fn jwt_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Where test databases are created: `TEST_DATABASE_URL` without a database name.
fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Settings for one test: a fresh database name and queue prefix, port 0
/// everywhere, and short delays so pipelines finish quickly.
pub fn test_settings() -> Settings {
    let id = Uuid::new_v4().simple().to_string();
    let mut s = Settings::default();
    s.database.url = SecretString::from(format!("{}/genq_test_{}", server_url(), &id[..16]));
    s.database.max_connections = 10;
    if let Ok(url) = std::env::var("AMQP_URL") {
        s.amqp.url = SecretString::from(url);
    }
    s.api.addr = "127.0.0.1:0".into();
    // Tests submit in bursts (200 jobs, 50 at once); the limit has its own test.
    s.api.submit_burst = 1_000;
    s.api.submit_per_minute = 60_000;
    s.auth.jwt_secret = SecretString::from(jwt_secret());
    s.api.metrics_addr = "127.0.0.1:0".into();
    s.queue.prefix = format!("genq-test-{}", &id[..12]);
    s.queue.prefetch = 16;
    s.worker.metrics_addr = "127.0.0.1:0".into();
    s.worker.poll_initial_ms = 100;
    s.worker.poll_max_ms = 250;
    s.worker.retry_base_ms = 100;
    s.worker.retry_max_ms = 250;
    s.worker.max_attempts = 4;
    s.worker.relay_interval_ms = 200;
    s.worker.job_timeout_secs = 30;
    s.worker.shutdown_grace_secs = 5;
    // Each test keeps its videos in a directory of its own, removed with it.
    s.storage.path = std::env::temp_dir()
        .join(format!("genq-test-videos-{}", &id[..16]))
        .to_string_lossy()
        .into_owned();
    s
}

/// A running worker of a test.
pub struct WorkerHandle {
    pub shutdown: CancellationToken,
    pub kill: CancellationToken,
    pub metrics_port: u16,
    pub processed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set: the worker crashes at its next ack instead of sending it.
    pub crash_before_ack: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub join: JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// SIGTERM: stop consuming, drain, exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.join).await;
    }

    /// A crash: everything in flight is dropped at once.
    pub async fn kill(self) {
        self.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.join).await;
    }
}

pub struct TestEnv {
    pub settings: Settings,
    pub pool: PgPool,
    pub base: String,
    /// The API's `/metrics` listener (`api.metrics_addr`).
    pub metrics_base: String,
    pub client: reqwest::Client,
    pub sim: Option<SimHandle>,
    api_shutdown: CancellationToken,
    api: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEnv {
    /// The API alone, on a fresh database.
    pub async fn new() -> Self {
        Self::with_settings(test_settings()).await
    }

    pub async fn with_settings(settings: Settings) -> Self {
        telemetry::init_test_tracing();
        let app = Application::build(settings.clone())
            .await
            .expect("api builds");
        let base = format!("http://127.0.0.1:{}", app.port());
        let metrics_base = format!("http://127.0.0.1:{}", app.metrics_port());
        let pool = app.pool().clone();
        let api_shutdown = CancellationToken::new();
        let api = tokio::spawn(app.run_until_stopped(api_shutdown.clone()));
        Self {
            settings,
            pool,
            base,
            metrics_base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            sim: None,
            api_shutdown,
            api: Some(api),
        }
    }

    /// The API, the provider simulator, and the settings pointing at it.
    pub async fn with_sim(sim: SimConfig) -> Self {
        Self::with_sim_and_settings(sim, test_settings()).await
    }

    pub async fn with_sim_and_settings(sim: SimConfig, mut settings: Settings) -> Self {
        let handle = genq_provider_sim::start(sim, "127.0.0.1:0")
            .await
            .expect("sim starts");
        settings.provider.base_url = handle.base_url();
        // The simulator publishes its fal signing key where fal publishes its own.
        settings.provider.fal_jwks_url = format!("{}/.well-known/jwks.json", handle.base_url());
        let mut env = Self::with_settings(settings).await;
        env.sim = Some(handle);
        env
    }

    pub fn sim(&self) -> &SimHandle {
        self.sim.as_ref().expect("this test runs the simulator")
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.settings)
    }

    /// Starts an in-process worker against this test's database, broker prefix and simulator.
    pub async fn spawn_worker(&self) -> WorkerHandle {
        self.spawn_worker_with(false).await
    }

    /// A worker that, if `crash_before_ack`, crashes at its first ack
    /// instead of sending it.
    pub async fn spawn_worker_with(&self, crash_before_ack: bool) -> WorkerHandle {
        let worker = Worker::build(self.settings.clone(), None)
            .await
            .expect("worker builds");
        let metrics_port = worker.metrics_port();
        let hooks = worker.test_hooks();
        hooks
            .crash_before_ack
            .store(crash_before_ack, std::sync::atomic::Ordering::SeqCst);
        let shutdown = CancellationToken::new();
        let join = tokio::spawn(worker.run_until_stopped(shutdown.clone()));
        WorkerHandle {
            shutdown,
            kill: hooks.kill,
            metrics_port,
            processed: hooks.processed,
            crash_before_ack: hooks.crash_before_ack,
            join,
        }
    }

    pub fn token(&self, sub: &str, email: Option<&str>) -> String {
        self.token_with(sub, email, None, 3600)
    }

    /// A user who has made their first call (so exists, with the initial credits).
    pub async fn new_user(&self, sub: &str, email: &str) -> String {
        let token = self.token(sub, Some(email));
        let (status, _) = self.get("/v1/credits", &token).await;
        assert_eq!(status, StatusCode::OK);
        token
    }

    pub fn admin_token(&self, sub: &str) -> String {
        self.token_with(sub, None, Some(ADMIN_ROLE), 3600)
    }

    pub fn token_with(
        &self,
        sub: &str,
        email: Option<&str>,
        role: Option<&str>,
        ttl: i64,
    ) -> String {
        Claims::new(sub, ttl)
            .email(email)
            .email_verified(email.is_some())
            .role(role)
            .mint(self.settings.auth.jwt_secret.expose_secret().as_bytes())
            .unwrap()
    }

    /// The API's Prometheus text, from its own listener (`api.metrics_addr`).
    pub async fn api_metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.metrics_base))
            .send()
            .await
            .expect("metrics answered")
            .text()
            .await
            .expect("metrics text")
    }

    /// Sends a request; returns the status and the JSON body (Null if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body), &[])
            .await
    }

    pub async fn submit(&self, token: &str, prompt: &str) -> (StatusCode, Value) {
        self.post(
            "/v1/generations",
            token,
            &serde_json::json!({ "prompt": prompt }),
        )
        .await
    }

    pub async fn grant(&self, email: &str, amount: i64) {
        let admin = self.admin_token("test-admin");
        let (status, body) = self
            .post(
                "/v1/admin/credits",
                &admin,
                &serde_json::json!({
                    "email": email, "amount": amount, "reason": "test", "kind": "grant"
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// Polls the job until `done` holds for it, or panics at the deadline.
    pub async fn wait_for_job(
        &self,
        token: &str,
        id: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let path = format!("/v1/generations/{id}");
        let deadline = Instant::now() + within;
        loop {
            let (_, job) = self.get(&path, token).await;
            if done(&job) {
                return job;
            }
            if Instant::now() >= deadline {
                panic!("job {id} did not reach the expected state; last seen: {job:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_for_status(
        &self,
        token: &str,
        id: &str,
        status: &str,
        within: Duration,
    ) -> Value {
        self.wait_for_job(token, id, within, |j| j["status"] == status)
            .await
    }

    /// Stops the API gracefully; the database and the queues go with the
    /// environment (see `Drop`).
    pub async fn cleanup(mut self) {
        self.api_shutdown.cancel();
        if let Some(api) = self.api.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), api).await;
        }
    }
}

impl Drop for TestEnv {
    /// Stops the API and simulator and drops the test's database and queues,
    /// also when the test panicked. `Drop` can't await, so the teardown runs
    /// on a thread of its own with its own runtime.
    fn drop(&mut self) {
        self.api_shutdown.cancel();
        if let Some(api) = self.api.take() {
            api.abort();
        }
        if let Some(sim) = self.sim.take() {
            sim.stop();
        }
        let settings = self.settings.clone();
        let teardown = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the teardown");
            runtime.block_on(async {
                delete_queues(&settings).await;
                drop_database(&settings).await;
            });
            if settings.storage.kind == "fs" {
                let _ = std::fs::remove_dir_all(&settings.storage.path);
            }
        });
        if teardown.join().is_err() {
            eprintln!("tearing down a test environment failed");
        }
    }
}

/// Serves the API's router over `settings` without connecting first (the
/// database may be unreachable on purpose); returns its port.
pub async fn serve_without_migrating(settings: Settings) -> u16 {
    let pool = db::pool(&settings.database).expect("pool options");
    let state = genq_api::state::AppState::new(settings, pool).expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, genq_api::startup::router(state)).await });
    port
}

/// Calls `check` until it yields a value or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn drop_database(settings: &Settings) {
    let options = db::connect_options(&settings.database).unwrap();
    let name = options.get_database().unwrap_or_default().to_owned();
    if let Ok(admin) = sqlx::PgPool::connect_with(options.database("postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

pub async fn delete_queues(settings: &Settings) {
    let Ok(conn) = genq_broker::connect(settings).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        let _ = Topology::new(settings).delete(&ch).await;
    }
    let _ = conn.close(200, "test over".into()).await;
}

/// Balances recomputed from the ledger, per user: (available, reserved, spent).
pub async fn ledger_balances(pool: &PgPool, user_id: Uuid) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT
           COALESCE(SUM(CASE WHEN kind IN ('grant','purchase','adjust','refund') THEN amount
                             WHEN kind = 'reserve' THEN -amount ELSE 0 END), 0)::bigint,
           COALESCE(SUM(CASE WHEN kind = 'reserve' THEN amount
                             WHEN kind IN ('commit','refund') THEN -amount ELSE 0 END), 0)::bigint,
           COALESCE(SUM(CASE WHEN kind = 'commit' THEN amount ELSE 0 END), 0)::bigint
         FROM credit_ledger WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

pub async fn user_id(pool: &PgPool, external_id: &str) -> Uuid {
    sqlx::query_scalar("SELECT id FROM users WHERE external_id = $1")
        .bind(external_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// moto's S3-compatible server, started on a free port for one test and
/// killed with it. The binary comes from `scripts/moto.sh` (or
/// `GENQ_TEST_MOTO_SERVER`).
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Self {
        let binary = std::env::var("GENQ_TEST_MOTO_SERVER").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/moto-venv/bin/moto_server"
            )
            .into()
        });
        assert!(
            std::path::Path::new(&binary).exists(),
            "moto_server not found at {binary}: run scripts/moto.sh (scripts/test.sh does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let up = eventually(Duration::from_secs(30), || async {
            client
                .get(format!("{endpoint}/moto-api/"))
                .send()
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(up.is_some(), "moto_server did not answer on {endpoint}");
        Self { child, endpoint }
    }

    /// Creates a bucket (moto does not check signatures).
    pub async fn create_bucket(&self, name: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(
            r.status().is_success(),
            "creating the bucket: {}",
            r.status()
        );
    }

    /// Settings storing videos in `bucket` of this server.
    pub fn storage(&self, bucket: &str) -> genq_providers::storage::StorageSettings {
        genq_providers::storage::StorageSettings {
            kind: "s3".into(),
            bucket: bucket.into(),
            endpoint: self.endpoint.clone(),
            access_key_id: "test".into(),
            secret_access_key: SecretString::from("test"),
            allow_http: true,
            ..Default::default()
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An environment for `Settings::load_from`: tests never change the
/// process's own, which every test thread shares.
pub fn env_of(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
