//! `genq-chaos`: starts the provider simulator, the API and three workers as
//! separate processes against the real Postgres and RabbitMQ, submits jobs
//! from many users at mixed credit levels (with duplicated idempotency keys
//! and cancels), SIGKILLs and restarts workers, kills the API, restarts
//! RabbitMQ and Postgres, then waits for the system to settle and checks that
//! every reservation ended in exactly one commit or refund. Exits 1 on any
//! violation. Everything is bounded in count and time and stays on 127.0.0.1.
//!
//! This file owns the CLI and the run as a sequence of phases; the processes
//! are in `system`, the load in `client`, the invariants in `checks` and the
//! figures and report in `report`.

mod checks;
mod client;
mod report;
mod system;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use genq_core::domain::JobStatus;
use rand::Rng;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::checks::Findings;
use crate::client::{Client, Observations};
use crate::report::{print_report, Figures, Report};
use crate::system::{
    cleanup, free_port, restart_postgres, restart_rabbitmq, wait_until, System, DB_PASSWORD,
};

#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
enum Profile {
    /// A few hundred jobs, one kill of each kind: a few minutes (CI).
    Short,
    /// Thousands of jobs, many worker kills.
    Long,
    /// The short run's load against a three-node RabbitMQ cluster
    /// (`scripts/cluster.sh`) and two API processes: one broker node
    /// SIGKILLed and restarted, another stopped cleanly and restarted, one
    /// API process killed.
    Cluster,
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
    /// The broker: one AMQP URL, or a cluster's nodes separated by commas.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The script that kills, stops and starts cluster nodes (cluster profile).
    #[arg(long, default_value = "scripts/cluster.sh")]
    cluster_script: PathBuf,
}

struct Plan {
    pub users: usize,
    pub jobs: usize,
    pub concurrency: usize,
    /// Submissions per second, overall.
    pub rate: f64,
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
            Profile::Cluster => Plan {
                users: 60,
                jobs: 400,
                concurrency: 12,
                rate: 12.0,
                worker_kills: 2,
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

/// The run's own database and queue prefix, named after its start time so
/// that runs never share them.
struct Names {
    db_name: String,
    prefix: String,
    db_url: String,
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

/// The whole run, phase by phase; returns the number of violations.
async fn run(cli: Cli) -> anyhow::Result<usize> {
    let plan = Plan::new(&cli);
    let started = Instant::now();
    let (names, mut sys) = prepare(&cli, &plan)?;
    let figures = Arc::new(Figures::default());
    let client = start_system(&mut sys, figures.clone()).await?;
    let funding = client::create_users(&client, plan.users).await?;
    let (seen, unexpected) = load_with_faults(&cli, &plan, &mut sys, &client, started).await?;
    let (pool, settled, settle_secs) = settle(&names.db_url, &plan, &mut sys, &unexpected).await?;
    let inputs = checks::Inputs {
        pool: &pool,
        sys: &mut sys,
        http: &client.http,
        prefix: &names.prefix,
        funding: &funding,
        seen: &seen,
        rabbitmqctl: &rabbitmqctl(&cli),
    };
    let findings = checks::all(inputs, unexpected.into_inner().unwrap(), settled).await?;
    tear_down(&cli, &names, pool).await;
    report(&cli, &plan, started, settle_secs, &figures, &sys, findings)
}

/// The command that lists the run's queues: the local broker's
/// `rabbitmqctl`, or the cluster script's for the cluster profile.
fn rabbitmqctl(cli: &Cli) -> Vec<String> {
    match cli.profile {
        Profile::Cluster => vec![cli.cluster_script.display().to_string(), "ctl".into()],
        _ => vec!["rabbitmqctl".into()],
    }
}

/// Names the run, makes its log directory and picks its ports; the system
/// is configured but not started yet.
fn prepare(cli: &Cli, plan: &Plan) -> anyhow::Result<(Names, System)> {
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
    let apis = if matches!(cli.profile, Profile::Cluster) {
        2
    } else {
        1
    };
    let api_ports = (0..apis)
        .map(|_| free_port())
        .collect::<Result<Vec<_>, _>>()?;
    let sim_port = free_port()?;
    let env = system::environment(
        &db_url,
        &prefix,
        sim_port,
        &dir.join("videos"),
        &cli.amqp_url,
    );
    println!(
        "chaos run {stamp}: profile {:?}, {} users, {} jobs; logs in {}",
        cli.profile,
        plan.users,
        plan.jobs,
        dir.display()
    );
    let names = Names {
        db_name,
        prefix,
        db_url,
    };
    Ok((names, System::new(bin, dir, env, api_ports, sim_port)))
}

/// Starts the simulator and the API, waits for the API to be ready (it
/// creates and migrates the fresh database), then starts the three workers.
async fn start_system(sys: &mut System, figures: Arc<Figures>) -> anyhow::Result<Arc<Client>> {
    sys.start_sim()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let mut bases = vec![];
    // One at a time: the first creates and migrates the database.
    for i in 0..sys.api_ports.len() {
        sys.start_api(i)?;
        let base = format!("http://127.0.0.1:{}", sys.api_ports[i]);
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
        bases.push(base);
    }
    for i in 0..3 {
        sys.start_worker(i)?;
    }
    Ok(Arc::new(Client {
        http,
        bases,
        next: Default::default(),
        figures,
    }))
}

/// The load, with the faults injected alongside at fixed fractions of it;
/// processes that die by themselves are restarted and noted as unexpected.
async fn load_with_faults(
    cli: &Cli,
    plan: &Plan,
    sys: &mut System,
    client: &Arc<Client>,
    started: Instant,
) -> anyhow::Result<(Observations, Mutex<Vec<String>>)> {
    let seen = Observations::default();
    let load_secs = plan.jobs as f64 / plan.rate;
    let load = client::spawn_load(client.clone(), plan, seen.clone());
    let events = fault_schedule(cli, plan);
    let unexpected: Mutex<Vec<String>> = Mutex::default();
    let t0 = Instant::now();
    for (at, what) in events {
        let due = t0 + Duration::from_secs_f64(at * load_secs);
        while Instant::now() < due {
            sys.check_alive(&unexpected).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let when = t0.elapsed().as_secs_f64();
        inject_fault(cli, sys, what, &client.figures).await?;
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
    Ok((seen, unexpected))
}

/// Chaos events as (fraction of the load phase, name), in time order: the
/// worker kills spread over the first 90 %, the API kill at 30 %, the
/// service restarts at 55 % and 80 %.
fn fault_schedule(cli: &Cli, plan: &Plan) -> Vec<(f64, &'static str)> {
    let mut events: Vec<(f64, &str)> = (0..plan.worker_kills)
        .map(|k| {
            (
                (k as f64 + 0.5) / plan.worker_kills as f64 * 0.9,
                "kill-worker",
            )
        })
        .collect();
    events.push((0.30, "kill-api"));
    if matches!(cli.profile, Profile::Cluster) {
        // Never two nodes down at once: a quorum (2 of 3) stays up throughout.
        events.push((0.35, "kill-broker-node-2"));
        events.push((0.50, "start-broker-node-2"));
        events.push((0.65, "stop-broker-node-3"));
        events.push((0.85, "start-broker-node-3"));
    } else if !cli.no_service_restarts {
        events.push((0.55, "restart-rabbitmq"));
        events.push((0.80, "restart-postgres"));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    events
}

async fn inject_fault(
    cli: &Cli,
    sys: &mut System,
    what: &str,
    figures: &Figures,
) -> anyhow::Result<()> {
    let script = &cli.cluster_script;
    match what {
        "kill-worker" => {
            let i = rand::rng().random_range(0..3);
            System::kill(&mut sys.workers[i]).await;
            figures.worker_kills.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..2_000))).await;
            sys.start_worker(i)?;
        }
        "kill-api" => {
            let i = rand::rng().random_range(0..sys.apis.len());
            System::kill(&mut sys.apis[i]).await;
            figures.api_kills.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(2)).await;
            sys.start_api(i)?;
        }
        "kill-broker-node-2" => {
            system::cluster_node(script, "kill", 2).await?;
            figures.broker_node_kills.fetch_add(1, Ordering::Relaxed);
        }
        "stop-broker-node-3" => {
            system::cluster_node(script, "stop", 3).await?;
            figures.broker_node_stops.fetch_add(1, Ordering::Relaxed);
        }
        "start-broker-node-2" => system::cluster_node(script, "start", 2).await?,
        "start-broker-node-3" => system::cluster_node(script, "start", 3).await?,
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
    Ok(())
}

/// Settle: every job terminal (bounded by the sweeper's maximum job age).
/// Returns the pool for the checks, whether it settled, and how long it took.
async fn settle(
    db_url: &str,
    plan: &Plan,
    sys: &mut System,
    unexpected: &Mutex<Vec<String>>,
) -> anyhow::Result<(PgPool, anyhow::Result<()>, f64)> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(db_url)
        .await?;
    let settle_start = Instant::now();
    let settled = wait_until("every job finishing", plan.settle, || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM jobs WHERE status IN {}",
                JobStatus::sql_list(&JobStatus::OPEN)
            ))
            .fetch_one(&pool)
            .await
            .map(|n| n == 0)
            .unwrap_or(false)
        }
    })
    .await;
    let settle_secs = settle_start.elapsed().as_secs_f64();
    sys.check_alive(unexpected).await?;
    Ok((pool, settled, settle_secs))
}

/// Drops the run's database and queues unless asked to keep them.
async fn tear_down(cli: &Cli, names: &Names, pool: PgPool) {
    pool.close().await;
    if !cli.keep {
        cleanup(&cli.postgres, &names.db_name, &names.prefix).await;
    }
}

/// Prints the report, saves it beside the logs, and returns the number of
/// violations (the exit code depends on it).
fn report(
    cli: &Cli,
    plan: &Plan,
    started: Instant,
    settle_secs: f64,
    figures: &Figures,
    sys: &System,
    f: Findings,
) -> anyhow::Result<usize> {
    let report = Report {
        profile: format!("{:?}", cli.profile).to_lowercase(),
        users: plan.users,
        jobs_planned: plan.jobs,
        elapsed_secs: started.elapsed().as_secs_f64(),
        settle_secs,
        figures: serde_json::to_value(figures)?,
        jobs_by_status: f.by_status.into_iter().collect(),
        endings_by_code: f.endings.into_iter().collect(),
        provider: f.provider,
        provider_tasks_created: f.tasks_created,
        jobs_submitted_to_provider: f.submitted,
        refunds: f.refunds,
        commits: f.commits,
        accepted_jobs: f.accepted_jobs,
        violations: f.violations.clone(),
    };
    print_report(&report, figures);
    report.save(&sys.dir)?;
    Ok(f.violations.len())
}
