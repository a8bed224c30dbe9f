//! `genq-chaos`: starts the provider simulator, the API and three workers as
//! separate processes against the real Postgres and RabbitMQ, submits jobs
//! from many users at mixed credit levels (with duplicated idempotency keys
//! and cancels), SIGKILLs and restarts workers, kills the API, restarts
//! RabbitMQ and Postgres, then waits for the system to settle and checks that
//! every reservation ended in exactly one commit or refund. Exits 1 on any
//! violation. Everything is bounded in count and time and stays on 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use genq_api::auth::{mint, Claims, ADMIN_ROLE};
use genq_shared::ops;
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

const JWT_SECRET: &str = "chaos-jwt-secret-4f1e2d3c4b5a69788796";
const DB_PASSWORD: &str = "chaos-db-password-91ab";
const PROVIDER_KEY: &str = "chaos-provider-key-77cd";
const VIDEO_COST: i64 = 10;

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
enum Profile {
    /// A few hundred jobs, one kill of each kind: a few minutes (CI).
    Short,
    /// Thousands of jobs, many worker kills.
    Long,
}

#[derive(Parser, Debug)]
#[command(
    name = "genq-chaos",
    about = "Soak and chaos run of the whole genq system, then its invariants checked"
)]
struct Cli {
    #[arg(long, value_enum, default_value = "short")]
    profile: Profile,
    /// Override the profile's number of jobs.
    #[arg(long)]
    jobs: Option<usize>,
    /// Override the profile's number of users.
    #[arg(long)]
    users: Option<usize>,
    /// Where genq-api, genq-worker and genq-provider-sim are (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Postgres server URL without a database (a fresh database is created).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    /// Skip the RabbitMQ and Postgres restarts (when other work shares them).
    #[arg(long)]
    no_service_restarts: bool,
    /// Keep the database and queues after the run, for inspection.
    #[arg(long)]
    keep: bool,
}

struct Plan {
    users: usize,
    jobs: usize,
    concurrency: usize,
    /// Submissions per second, overall.
    rate: f64,
    worker_kills: usize,
    settle: Duration,
}

impl Plan {
    fn new(cli: &Cli) -> Self {
        let mut plan = match cli.profile {
            Profile::Short => Plan {
                users: 60,
                jobs: 400,
                concurrency: 12,
                rate: 12.0,
                worker_kills: 3,
                settle: Duration::from_secs(240),
            },
            Profile::Long => Plan {
                users: 300,
                jobs: 5_000,
                concurrency: 32,
                rate: 30.0,
                worker_kills: 20,
                settle: Duration::from_secs(420),
            },
        };
        if let Some(j) = cli.jobs {
            plan.jobs = j;
        }
        if let Some(u) = cli.users {
            plan.users = u;
        }
        plan
    }
}

/// Counters of what the run did and saw.
#[derive(Default, Serialize)]
struct Figures {
    submissions: AtomicU64,
    accepted: AtomicU64,
    refused_402: AtomicU64,
    duplicate_key_requests: AtomicU64,
    client_retries: AtomicU64,
    gave_up: AtomicU64,
    cancels_sent: AtomicU64,
    cancels_ok: AtomicU64,
    worker_kills: AtomicU64,
    api_kills: AtomicU64,
    rabbitmq_restarts: AtomicU64,
    postgres_restarts: AtomicU64,
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A child process with its log file.
struct Proc {
    name: String,
    child: Child,
}

struct System {
    bin: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    api_port: u16,
    sim_port: u16,
    api: Option<Proc>,
    sim: Option<Proc>,
    workers: Vec<Option<Proc>>,
    starts: usize,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl System {
    fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Proc> {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("{name}.{}.log", self.starts)))?;
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {program} from {}", self.bin.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
        })
    }

    fn start_sim(&mut self) -> anyhow::Result<()> {
        let args = [
            "--addr",
            &format!("127.0.0.1:{}", self.sim_port),
            "--generation-ms",
            "800",
            "--latency-ms",
            "10",
            "--fail-rate",
            "0.05",
            "--rate-limit-rate",
            "0.05",
            "--retry-after-secs",
            "1",
            "--permanent-fail-rate",
            "0.05",
            "--hang-rate",
            "0.02",
        ]
        .map(String::from);
        self.sim = Some(self.spawn("sim", "genq-provider-sim", &args, &[])?);
        Ok(())
    }

    fn start_api(&mut self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.api_port);
        self.api = Some(self.spawn("api", "genq-api", &[], &[("GENQ__API__ADDR", addr)])?);
        Ok(())
    }

    fn start_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.spawn(&format!("worker{i}"), "genq-worker", &[], &[])?;
        self.workers[i] = Some(p);
        Ok(())
    }

    async fn kill(proc: &mut Option<Proc>) {
        if let Some(mut p) = proc.take() {
            let _ = p.child.start_kill(); // SIGKILL
            let _ = p.child.wait().await;
        }
    }

    /// SIGTERM, then wait (bounded), then SIGKILL. False when SIGTERM was not enough.
    async fn stop(proc: &mut Option<Proc>) -> bool {
        let Some(mut p) = proc.take() else {
            return true;
        };
        if let Some(pid) = p.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), p.child.wait())
            .await
            .is_ok()
        {
            return true;
        }
        let _ = p.child.start_kill();
        let _ = p.child.wait().await;
        false
    }

    /// Restarts any process that died on its own (it should not have).
    async fn check_alive(&mut self, unexpected: &Mutex<Vec<String>>) -> anyhow::Result<()> {
        let mut dead = vec![];
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(p) = w {
                if let Ok(Some(status)) = p.child.try_wait() {
                    dead.push((i, format!("{} exited by itself: {status}", p.name)));
                }
            }
        }
        for (i, why) in dead {
            unexpected.lock().unwrap().push(why);
            self.workers[i] = None;
            self.start_worker(i)?;
        }
        if let Some(p) = &mut self.api {
            if let Ok(Some(status)) = p.child.try_wait() {
                unexpected
                    .lock()
                    .unwrap()
                    .push(format!("api exited by itself: {status}"));
                self.start_api()?;
            }
        }
        Ok(())
    }
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{what} did not happen within {within:?}")
}

async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

async fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {args:?} failed: {status}");
    }
    Ok(())
}

async fn restart_rabbitmq() -> anyhow::Result<()> {
    run_cmd("rabbitmqctl", &["stop"]).await?;
    wait_until("RabbitMQ stopping", Duration::from_secs(60), || async {
        !port_open(5672).await
    })
    .await?;
    run_cmd("rabbitmq-server", &["-detached"]).await?;
    wait_until("RabbitMQ starting", Duration::from_secs(120), || async {
        run_cmd("rabbitmq-diagnostics", &["-q", "check_running"])
            .await
            .is_ok()
            && port_open(5672).await
    })
    .await
}

async fn restart_postgres() -> anyhow::Result<()> {
    let version = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no cluster in /etc/postgresql")?;
    run_cmd(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "restart",
            "-m",
            "fast",
        ],
    )
    .await?;
    wait_until("Postgres starting", Duration::from_secs(60), || async {
        port_open(5432).await
    })
    .await
}

fn token(sub: &str, email: Option<&str>, admin: bool) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    mint(
        JWT_SECRET.as_bytes(),
        &Claims {
            sub: sub.into(),
            exp: now + 24 * 3600,
            email: email.map(Into::into),
            name: None,
            role: admin.then(|| ADMIN_ROLE.into()),
        },
    )
    .expect("token")
}

/// What the client saw for one logical submission.
#[derive(Debug, Clone)]
enum Seen {
    Accepted(Uuid),
    Refused {
        required: i64,
        available: i64,
        job: Uuid,
    },
    Other(u16),
    GaveUp,
}

struct Client {
    http: reqwest::Client,
    base: String,
    figures: Arc<Figures>,
}

impl Client {
    /// Sends a request, retrying (bounded, same body and headers) while the
    /// API is unreachable or answers 5xx: what a careful front end does.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Option<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut delay = Duration::from_millis(100);
        loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            match req.send().await {
                Ok(r) if !r.status().is_server_error() => {
                    let status = r.status().as_u16();
                    let v = r.json::<Value>().await.unwrap_or(Value::Null);
                    return Some((status, v));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return None;
            }
            self.figures.client_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn submit(&self, token: &str, prompt: &str, key: &str) -> Seen {
        self.figures.submissions.fetch_add(1, Ordering::Relaxed);
        let Some((status, v)) = self
            .send(
                reqwest::Method::POST,
                "/v1/generations",
                token,
                Some(&json!({"prompt": prompt})),
                Some(key),
            )
            .await
        else {
            self.figures.gave_up.fetch_add(1, Ordering::Relaxed);
            return Seen::GaveUp;
        };
        let id = |v: &Value| {
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .unwrap_or_default()
        };
        match status {
            202 => {
                self.figures.accepted.fetch_add(1, Ordering::Relaxed);
                Seen::Accepted(id(&v["id"]))
            }
            402 => {
                self.figures.refused_402.fetch_add(1, Ordering::Relaxed);
                Seen::Refused {
                    required: v["error"]["required"].as_i64().unwrap_or(-1),
                    available: v["error"]["available"].as_i64().unwrap_or(i64::MAX),
                    job: id(&v["error"]["job_id"]),
                }
            }
            other => Seen::Other(other),
        }
    }
}

#[derive(Serialize, Default)]
struct Report {
    profile: String,
    users: usize,
    jobs_planned: usize,
    elapsed_secs: f64,
    settle_secs: f64,
    figures: serde_json::Value,
    jobs_by_status: HashMap<String, i64>,
    /// Why jobs that did not succeed ended: provider_failed, deadline_exceeded, ...
    endings_by_code: HashMap<String, i64>,
    provider: serde_json::Value,
    provider_tasks_created: i64,
    jobs_submitted_to_provider: i64,
    refunds: i64,
    commits: i64,
    accepted_jobs: usize,
    violations: Vec<String>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(0) => std::process::exit(0),
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("genq-chaos: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<usize> {
    let plan = Plan::new(&cli);
    let started = Instant::now();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let bin = match &cli.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let dir = bin.join("chaos").join(stamp.to_string());
    std::fs::create_dir_all(&dir)?;
    let db_name = format!("genq_chaos_{stamp}");
    let prefix = format!("genq-chaos-{stamp}");
    // Trust auth ignores the password; it is here to prove it never leaks.
    let server = cli.postgres.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    let db_url = format!("{server}/{db_name}");
    let (api_port, sim_port) = (free_port()?, free_port()?);
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", db_url.clone()),
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ("GENQ__AUTH__JWT_SECRET", JWT_SECRET.into()),
        ("GENQ__QUEUE__PREFIX", prefix.clone()),
        ("GENQ__CREDITS__INITIAL", "0".into()),
        ("GENQ__CREDITS__VIDEO_COST", VIDEO_COST.to_string()),
        ("GENQ__API__SUBMIT_BURST", "1000".into()),
        ("GENQ__API__SUBMIT_PER_MINUTE", "60000".into()),
        (
            "GENQ__PROVIDER__BASE_URL",
            format!("http://127.0.0.1:{sim_port}"),
        ),
        ("GENQ__PROVIDER__API_KEY", PROVIDER_KEY.into()),
        ("GENQ__PROVIDER__TIMEOUT_MS", "3000".into()),
        ("GENQ__DATABASE__MAX_CONNECTIONS", "10".into()),
        ("GENQ__WORKER__METRICS_ADDR", "127.0.0.1:0".into()),
        ("GENQ__WORKER__JOB_TIMEOUT_SECS", "10".into()),
        ("GENQ__WORKER__MAX_ATTEMPTS", "6".into()),
        ("GENQ__WORKER__RETRY_BASE_MS", "200".into()),
        ("GENQ__WORKER__RETRY_MAX_MS", "2000".into()),
        ("GENQ__WORKER__POLL_INITIAL_MS", "250".into()),
        ("GENQ__WORKER__POLL_MAX_MS", "1000".into()),
        ("GENQ__WORKER__STALE_AFTER_SECS", "8".into()),
        ("GENQ__WORKER__SWEEP_INTERVAL_MS", "1000".into()),
        ("GENQ__WORKER__MAX_JOB_AGE_SECS", "90".into()),
        ("GENQ__WORKER__SHUTDOWN_GRACE_SECS", "5".into()),
        ("GENQ__LOG__FILTER", "info,sqlx=warn,lapin=warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    println!(
        "chaos run {stamp}: profile {:?}, {} users, {} jobs; logs in {}",
        cli.profile,
        plan.users,
        plan.jobs,
        dir.display()
    );

    let mut sys = System {
        bin,
        dir: dir.clone(),
        env,
        api_port,
        sim_port,
        api: None,
        sim: None,
        workers: vec![None, None, None],
        starts: 0,
    };
    sys.start_sim()?;
    sys.start_api()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let base = format!("http://127.0.0.1:{api_port}");
    wait_until("the API being ready", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), format!("{base}/readyz"));
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    })
    .await?;
    for i in 0..3 {
        sys.start_worker(i)?;
    }
    let figures = Arc::new(Figures::default());
    let client = Arc::new(Client {
        http: http.clone(),
        base: base.clone(),
        figures: figures.clone(),
    });

    // Users at mixed credit levels: none, exactly one video, several videos.
    let admin = token("chaos-admin", None, true);
    let mut funding: HashMap<String, i64> = HashMap::new();
    for u in 0..plan.users {
        let sub = format!("chaos-user-{u}");
        let email = format!("{sub}@example.com");
        let t = token(&sub, Some(&email), false);
        client
            .send(reqwest::Method::GET, "/v1/credits", &t, None, None)
            .await
            .context("creating a user")?;
        let amount = match u % 3 {
            0 => 0,
            1 => VIDEO_COST,
            _ => VIDEO_COST * rand::rng().random_range(5..=40),
        };
        if amount > 0 {
            let body = json!({"email": email, "amount": amount, "reason": "chaos funding", "kind": "grant"});
            let (s, v) = client
                .send(
                    reqwest::Method::POST,
                    "/v1/admin/credits",
                    &admin,
                    Some(&body),
                    None,
                )
                .await
                .context("funding")?;
            anyhow::ensure!(s == 200, "funding failed: {s} {v}");
        }
        funding.insert(sub, amount);
    }

    // The load, with chaos alongside.
    let outcomes: Arc<Mutex<Vec<(String, Seen)>>> = Arc::default();
    let pairs: Arc<Mutex<Vec<(Seen, Seen)>>> = Arc::default();
    let load_secs = plan.jobs as f64 / plan.rate;
    let load = {
        let (client, outcomes, pairs, figures) = (
            client.clone(),
            outcomes.clone(),
            pairs.clone(),
            figures.clone(),
        );
        let (jobs, users, concurrency, rate) = (plan.jobs, plan.users, plan.concurrency, plan.rate);
        tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            let t0 = Instant::now();
            for i in 0..jobs {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let permit = limit.clone().acquire_owned().await.expect("open");
                let (client, outcomes, pairs, figures) = (
                    client.clone(),
                    outcomes.clone(),
                    pairs.clone(),
                    figures.clone(),
                );
                let (u, marker, double, cancel) = {
                    let mut r = rand::rng();
                    let marker = match r.random_range(0..100) {
                        0..=1 => " [sim:fail]",
                        2 => " [sim:hang]",
                        3..=4 => " [sim:5xx]",
                        5..=6 => " [sim:429]",
                        _ => "",
                    };
                    (
                        r.random_range(0..users),
                        marker,
                        r.random_bool(0.1),
                        r.random_bool(0.05),
                    )
                };
                tasks.spawn(async move {
                    let sub = format!("chaos-user-{u}");
                    let t = token(&sub, Some(&format!("{sub}@example.com")), false);
                    let key = format!("chaos-{i}");
                    let prompt = format!("chaos video {i}{marker}");
                    let seen = if double {
                        figures
                            .duplicate_key_requests
                            .fetch_add(1, Ordering::Relaxed);
                        let (a, b) = tokio::join!(
                            client.submit(&t, &prompt, &key),
                            client.submit(&t, &prompt, &key)
                        );
                        pairs.lock().unwrap().push((a.clone(), b));
                        a
                    } else {
                        client.submit(&t, &prompt, &key).await
                    };
                    if let (true, Seen::Accepted(id)) = (cancel, &seen) {
                        let wait = rand::rng().random_range(0..1_500);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        figures.cancels_sent.fetch_add(1, Ordering::Relaxed);
                        if let Some((200, _)) = client
                            .send(
                                reqwest::Method::POST,
                                &format!("/v1/generations/{id}/cancel"),
                                &t,
                                Some(&json!({})),
                                None,
                            )
                            .await
                        {
                            figures.cancels_ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    outcomes.lock().unwrap().push((sub, seen));
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    // Chaos events at fixed fractions of the load phase.
    let mut events: Vec<(f64, &str)> = (0..plan.worker_kills)
        .map(|k| {
            (
                (k as f64 + 0.5) / plan.worker_kills as f64 * 0.9,
                "kill-worker",
            )
        })
        .collect();
    events.push((0.30, "kill-api"));
    if !cli.no_service_restarts {
        events.push((0.55, "restart-rabbitmq"));
        events.push((0.80, "restart-postgres"));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let unexpected: Mutex<Vec<String>> = Mutex::default();
    let t0 = Instant::now();
    for (at, what) in events {
        let due = t0 + Duration::from_secs_f64(at * load_secs);
        while Instant::now() < due {
            sys.check_alive(&unexpected).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let when = t0.elapsed().as_secs_f64();
        match what {
            "kill-worker" => {
                let i = rand::rng().random_range(0..3);
                System::kill(&mut sys.workers[i]).await;
                figures.worker_kills.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..2_000))).await;
                sys.start_worker(i)?;
            }
            "kill-api" => {
                System::kill(&mut sys.api).await;
                figures.api_kills.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(2)).await;
                sys.start_api()?;
            }
            "restart-rabbitmq" => {
                restart_rabbitmq().await?;
                figures.rabbitmq_restarts.fetch_add(1, Ordering::Relaxed);
            }
            "restart-postgres" => {
                restart_postgres().await?;
                figures.postgres_restarts.fetch_add(1, Ordering::Relaxed);
            }
            _ => unreachable!(),
        }
        println!("  {when:>6.1}s  {what}");
    }
    while !load.is_finished() {
        sys.check_alive(&unexpected).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    load.await?;
    let load_done = started.elapsed();
    println!(
        "load done after {:.1}s; waiting for the system to settle",
        load_done.as_secs_f64()
    );

    // Settle: every job terminal (bounded by the sweeper's maximum job age).
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&db_url)
        .await?;
    let settle_start = Instant::now();
    let settled = wait_until("every job finishing", plan.settle, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE status IN ('queued','submitting','running')",
            )
            .fetch_one(&pool)
            .await
            .map(|n| n == 0)
            .unwrap_or(false)
        }
    })
    .await;
    let settle_secs = settle_start.elapsed().as_secs_f64();
    sys.check_alive(&unexpected).await?;

    // The checks.
    let mut v: Vec<String> = unexpected.into_inner().unwrap();
    if let Err(e) = settled {
        v.push(format!("not settled: {e}"));
    }
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
            .fetch_all(&pool)
            .await?;
    let open: i64 = by_status
        .iter()
        .filter(|(s, _)| ["queued", "submitting", "running"].contains(&s.as_str()))
        .map(|(_, c)| c)
        .sum();
    if open > 0 {
        v.push(format!("{open} accepted jobs are not terminal (stuck)"));
    }
    let endings: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(error_code, 'none'), count(*) FROM jobs WHERE status IN ('failed','canceled','dead') GROUP BY 1",
    )
    .fetch_all(&pool)
    .await?;
    let statuses: HashMap<Uuid, String> =
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM jobs")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
    let outcomes = outcomes.lock().unwrap().clone();
    let mut accepted_ids = HashSet::new();
    for (sub, seen) in &outcomes {
        match seen {
            Seen::Accepted(id) => {
                accepted_ids.insert(*id);
                match statuses.get(id).map(String::as_str) {
                    None => v.push(format!(
                        "accepted job {id} of {sub} is missing from the database"
                    )),
                    Some("queued" | "submitting" | "running" | "rejected") => {
                        v.push(format!("accepted job {id} is not settled"))
                    }
                    _ => {}
                }
            }
            Seen::Refused {
                required,
                available,
                job,
            } => {
                if available >= required {
                    v.push(format!(
                        "402 for {sub} with available {available} >= required {required}"
                    ));
                }
                if statuses.get(job).map(String::as_str) != Some("rejected") {
                    v.push(format!("402 for {sub} left no rejected job {job}"));
                }
            }
            Seen::Other(code) => v.push(format!("submission for {sub} answered {code}")),
            Seen::GaveUp => v.push(format!(
                "submission for {sub} never got an answer within 90 s"
            )),
        }
    }
    for (a, b) in pairs.lock().unwrap().iter() {
        match (a, b) {
            (Seen::Accepted(x), Seen::Accepted(y)) if x != y => {
                v.push(format!("one Idempotency-Key made two jobs: {x} and {y}"));
            }
            (Seen::Accepted(_), Seen::Refused { .. })
            | (Seen::Refused { .. }, Seen::Accepted(_)) => {
                v.push(format!(
                    "one Idempotency-Key got both a 202 and a 402: {a:?} / {b:?}"
                ));
            }
            (Seen::Accepted(y), _) | (_, Seen::Accepted(y)) => {
                accepted_ids.insert(*y);
            }
            _ => {}
        }
    }
    // Jobs the database accepted that no client was ever told about (an
    // answer lost with the API kill, then given again on the retry, is fine).
    let unanswered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status <> 'rejected' AND NOT (id = ANY($1))",
    )
    .bind(accepted_ids.iter().copied().collect::<Vec<Uuid>>())
    .fetch_one(&pool)
    .await?;
    if unanswered > 0 {
        v.push(format!(
            "{unanswered} accepted jobs were never answered to a client"
        ));
    }
    let recorded_402: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT required_credits, available_credits FROM jobs WHERE status = 'rejected'",
    )
    .fetch_all(&pool)
    .await?;
    for (required, available) in &recorded_402 {
        if available >= required {
            v.push(format!(
                "rejected job recorded with available {available} >= required {required}"
            ));
        }
    }
    // The operator's own command must agree: exit 0, "Ledger OK".
    let verify = Command::new(sys.bin.join("genqctl"))
        .args(["ledger", "verify"])
        .envs(sys.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .context("running genqctl ledger verify")?;
    if !verify.status.success() {
        v.push(format!(
            "genqctl ledger verify failed: {}",
            String::from_utf8_lossy(&verify.stdout)
        ));
    }
    for violation in ops::verify_ledger(&pool).await? {
        v.push(format!(
            "ledger: {} {:?} {:?}: {}",
            violation.rule, violation.user_id, violation.job_id, violation.detail
        ));
    }
    let per_user: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT u.external_id, a.spent, a.reserved, a.available,
                (SELECT count(*) FROM jobs j WHERE j.user_id = u.id AND j.status = 'succeeded')
           FROM users u JOIN credit_accounts a ON a.user_id = u.id",
    )
    .fetch_all(&pool)
    .await?;
    for (sub, spent, reserved, available, succeeded) in &per_user {
        if *spent != VIDEO_COST * succeeded {
            v.push(format!(
                "{sub}: spent {spent} but {succeeded} videos succeeded"
            ));
        }
        if *reserved != 0 {
            v.push(format!("{sub}: {reserved} credits still reserved"));
        }
        if let Some(f) = funding.get(sub) {
            if available + spent != *f {
                v.push(format!(
                    "{sub}: funded {f} but available {available} + spent {spent}"
                ));
            }
        }
    }
    let (commits, refunds): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'commit'), count(*) FILTER (WHERE kind = 'refund') FROM credit_ledger",
    )
    .fetch_one(&pool)
    .await?;
    let shared_tasks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT provider_task_id FROM jobs WHERE provider_task_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) s",
    )
    .fetch_one(&pool)
    .await?;
    if shared_tasks > 0 {
        v.push(format!(
            "{shared_tasks} provider tasks are shared by several jobs"
        ));
    }
    let submitted: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempts > 0")
        .fetch_one(&pool)
        .await?;
    let provider: Value = http
        .get(format!("http://127.0.0.1:{sim_port}/v1/stats"))
        .send()
        .await?
        .json()
        .await?;
    let tasks_created = provider["tasks_created"].as_i64().unwrap_or(0);
    if tasks_created > submitted {
        v.push(format!(
            "the provider created {tasks_created} tasks for {submitted} submitted jobs"
        ));
    }

    // Every worker must be consuming again (none stuck after the restarts).
    let queues = [format!("{prefix}.start"), format!("{prefix}.poll")];
    let consuming = wait_until("every worker consuming", Duration::from_secs(60), || {
        let queues = queues.clone();
        async move {
            let Ok(out) = Command::new("rabbitmqctl")
                .args(["-q", "list_queues", "name", "consumers"])
                .output()
                .await
            else {
                return false;
            };
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            queues.iter().all(|q| {
                text.lines().any(|l| {
                    let mut cols = l.split_whitespace();
                    cols.next() == Some(q.as_str()) && cols.next() == Some("3")
                })
            })
        }
    })
    .await;
    if let Err(e) = consuming {
        v.push(format!("not every worker consumes at the end: {e}"));
    }

    // Stop everything (SIGTERM must be enough), then look for secrets in every log.
    for w in sys.workers.iter_mut() {
        if !System::stop(w).await {
            v.push("a worker did not stop on SIGTERM within 30 s".into());
        }
    }
    if !System::stop(&mut sys.api).await {
        v.push("the API did not stop on SIGTERM within 30 s".into());
    }
    System::stop(&mut sys.sim).await;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for secret in [JWT_SECRET, DB_PASSWORD, PROVIDER_KEY] {
            if text.contains(secret) {
                v.push(format!("a secret appears in {}", path.display()));
            }
        }
        if text.contains("panicked") {
            v.push(format!("a panic is logged in {}", path.display()));
        }
    }
    pool.close().await;
    if !cli.keep {
        cleanup(&cli.postgres, &db_name, &prefix).await;
    }

    let report = Report {
        profile: format!("{:?}", cli.profile).to_lowercase(),
        users: plan.users,
        jobs_planned: plan.jobs,
        elapsed_secs: started.elapsed().as_secs_f64(),
        settle_secs,
        figures: serde_json::to_value(&*figures)?,
        jobs_by_status: by_status.into_iter().collect(),
        endings_by_code: endings.into_iter().collect(),
        provider,
        provider_tasks_created: tasks_created,
        jobs_submitted_to_provider: submitted,
        refunds,
        commits,
        accepted_jobs: accepted_ids.len(),
        violations: v.clone(),
    };
    print_report(&report, &figures);
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    Ok(v.len())
}

fn print_report(r: &Report, f: &Figures) {
    println!(
        "\n== genq chaos report ({} profile, {:.0} s) ==",
        r.profile, r.elapsed_secs
    );
    println!("users {}  requests {}  answered 202 {} ({} distinct jobs)  refused (402) {}  duplicate-key requests {}  client retries {}",
        r.users, n(&f.submissions), n(&f.accepted), r.accepted_jobs, n(&f.refused_402), n(&f.duplicate_key_requests), n(&f.client_retries));
    println!(
        "cancels sent {} (ok {})",
        n(&f.cancels_sent),
        n(&f.cancels_ok)
    );
    println!(
        "faults: worker SIGKILLs {}  API kills {}  RabbitMQ restarts {}  Postgres restarts {}",
        n(&f.worker_kills),
        n(&f.api_kills),
        n(&f.rabbitmq_restarts),
        n(&f.postgres_restarts)
    );
    println!(
        "provider: {}  (tasks created {} for {} jobs submitted)",
        r.provider, r.provider_tasks_created, r.jobs_submitted_to_provider
    );
    let mut statuses: Vec<_> = r.jobs_by_status.iter().collect();
    statuses.sort();
    println!(
        "jobs by status: {}",
        statuses
            .iter()
            .map(|(s, c)| format!("{s} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut endings: Vec<_> = r.endings_by_code.iter().collect();
    endings.sort();
    let endings: Vec<String> = endings.iter().map(|(s, c)| format!("{s} {c}")).collect();
    println!(
        "endings of jobs that did not succeed: {}",
        endings.join(", ")
    );
    println!(
        "ledger: {} commits, {} refunds; settled {:.1} s after the load",
        r.commits, r.refunds, r.settle_secs
    );
    if r.violations.is_empty() {
        println!("violations: 0");
    } else {
        println!("violations: {}", r.violations.len());
        for v in r.violations.iter().take(50) {
            println!("  - {v}");
        }
    }
}

async fn cleanup(server: &str, db: &str, prefix: &str) {
    if let Ok(admin) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    let mut settings = genq_shared::config::Settings::default();
    settings.queue.prefix = prefix.to_owned();
    let topology = genq_shared::queue::Topology::new(&settings);
    if let Ok(conn) = genq_shared::queue::connect(&settings).await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = topology.delete(&ch).await;
        }
        let _ = conn.close(200, "chaos over".into()).await;
    }
}
