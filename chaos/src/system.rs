//! The system under test as processes: the provider simulator, the API and
//! three workers (started, killed, restarted), the shared RabbitMQ and
//! Postgres the run restarts, the configuration they all get, free ports and
//! the waiting helpers, and the clean-up of the run's database and queues.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::PgPool;
use tokio::process::{Child, Command};

// Distinctive secrets the system is configured with, so the checks can prove
// none of them ever reaches a log.
/// Random per run: the API refuses any secret written in the repository.
pub fn jwt_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| format!("chaos-jwt-{}", uuid::Uuid::new_v4().simple()))
}
pub const DB_PASSWORD: &str = "chaos-db-password-91ab";
pub const PROVIDER_KEY: &str = "chaos-provider-key-77cd";
/// Credits one video costs; the users' funding and the ledger checks use it.
pub const VIDEO_COST: i64 = 10;

/// The environment every process of the system gets: its own database and
/// queue prefix, and short timeouts so that faults resolve within the run.
pub fn environment(
    db_url: &str,
    prefix: &str,
    sim_port: u16,
    videos: &std::path::Path,
    amqp_url: &str,
) -> Vec<(String, String)> {
    [
        ("GENQ__STORAGE__KIND", "fs".into()),
        ("GENQ__STORAGE__PATH", videos.display().to_string()),
        ("DATABASE_URL", db_url.to_owned()),
        ("AMQP_URL", amqp_url.to_owned()),
        ("GENQ__AUTH__JWT_SECRET", jwt_secret().into()),
        // Two API processes (the cluster profile) can't share one port.
        ("GENQ__API__METRICS_ADDR", "127.0.0.1:0".into()),
        ("GENQ__QUEUE__PREFIX", prefix.to_owned()),
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
    .collect()
}

/// A child process with its log file.
pub struct Proc {
    name: String,
    child: Child,
    /// Its output, so a process that dies on its own can be reported with
    /// its last words (CI keeps the report, not the run's directory).
    log: PathBuf,
}

impl Proc {
    /// Why it exited: the status and the last line it printed.
    fn died(&self, status: std::process::ExitStatus) -> String {
        let last = std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|text| {
                text.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(|l| l.chars().take(400).collect::<String>())
            })
            .unwrap_or_default();
        format!(
            "{} exited by itself: {status}; its last line: {last}",
            self.name
        )
    }
}

/// The system's processes, and what is needed to start them again.
pub struct System {
    pub bin: PathBuf,
    /// The run's directory: every process logs here, one file per start.
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// One port per API process (the cluster profile runs two).
    pub api_ports: Vec<u16>,
    pub sim_port: u16,
    pub apis: Vec<Option<Proc>>,
    pub sim: Option<Proc>,
    pub workers: Vec<Option<Proc>>,
    starts: usize,
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl System {
    /// Nothing started yet; an API slot per port, three worker slots.
    pub fn new(
        bin: PathBuf,
        dir: PathBuf,
        env: Vec<(String, String)>,
        api_ports: Vec<u16>,
        sim_port: u16,
    ) -> Self {
        System {
            bin,
            dir,
            env,
            apis: api_ports.iter().map(|_| None).collect(),
            api_ports,
            sim_port,
            sim: None,
            workers: vec![None, None, None],
            starts: 0,
        }
    }

    fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[String],
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Proc> {
        self.starts += 1;
        let log_path = self.dir.join(format!("{name}.{}.log", self.starts));
        let log = std::fs::File::create(&log_path)?;
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
            log: log_path,
        })
    }

    pub fn start_sim(&mut self) -> anyhow::Result<()> {
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
            // Downloads take a while, so worker kills land mid-copy too.
            "--download-ms",
            "400",
        ]
        .map(String::from);
        self.sim = Some(self.spawn("sim", "genq-provider-sim", &args, &[])?);
        Ok(())
    }

    pub fn start_api(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.api_ports[i]);
        let p = self.spawn(
            &format!("api{i}"),
            "genq-api",
            &[],
            &[("GENQ__API__ADDR", addr)],
        )?;
        self.apis[i] = Some(p);
        Ok(())
    }

    pub fn start_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.spawn(&format!("worker{i}"), "genq-worker", &[], &[])?;
        self.workers[i] = Some(p);
        Ok(())
    }

    pub async fn kill(proc: &mut Option<Proc>) {
        if let Some(mut p) = proc.take() {
            let _ = p.child.start_kill(); // SIGKILL
            let _ = p.child.wait().await;
        }
    }

    /// SIGTERM, then wait (bounded), then SIGKILL. False when SIGTERM was not enough.
    pub async fn stop(proc: &mut Option<Proc>) -> bool {
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
    pub async fn check_alive(&mut self, unexpected: &Mutex<Vec<String>>) -> anyhow::Result<()> {
        let mut dead = vec![];
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some(p) = w {
                if let Ok(Some(status)) = p.child.try_wait() {
                    dead.push((i, p.died(status)));
                }
            }
        }
        for (i, why) in dead {
            unexpected.lock().unwrap().push(why);
            self.workers[i] = None;
            self.start_worker(i)?;
        }
        let mut dead_apis = vec![];
        for (i, a) in self.apis.iter_mut().enumerate() {
            if let Some(p) = a {
                if let Ok(Some(status)) = p.child.try_wait() {
                    dead_apis.push((i, p.died(status)));
                }
            }
        }
        for (i, why) in dead_apis {
            unexpected.lock().unwrap().push(why);
            self.start_api(i)?;
        }
        Ok(())
    }
}

pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<()>
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

/// Runs `scripts/cluster.sh ACTION NODE` (kill, stop or start one node of
/// the local three-node cluster).
pub async fn cluster_node(script: &std::path::Path, action: &str, node: u8) -> anyhow::Result<()> {
    let script = script.display().to_string();
    run_cmd(&script, &[action, &node.to_string()]).await
}

pub async fn restart_rabbitmq() -> anyhow::Result<()> {
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

pub async fn restart_postgres() -> anyhow::Result<()> {
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

/// Drops the run's database and queues (best effort: a failed clean-up must
/// not change the run's verdict).
pub async fn cleanup(server: &str, db: &str, prefix: &str) {
    if let Ok(admin) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
    }
    let mut settings = genq_core::config::Settings::default();
    settings.queue.prefix = prefix.to_owned();
    let topology = genq_broker::Topology::new(&settings);
    if let Ok(conn) = genq_broker::connect(&settings).await {
        if let Ok(ch) = conn.create_channel().await {
            let _ = topology.delete(&ch).await;
        }
        let _ = conn.close(200, "chaos over".into()).await;
    }
}
