//! The invariants checked once the system has settled. Each check is a named
//! function returning its violations; [`all`] runs them in a fixed order (the
//! order the violations are reported in) and keeps what it read for the report.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use genq_core::domain::JobStatus;
use genq_store::ops;
use serde_json::Value;
use sqlx::PgPool;
use tokio::process::Command;
use uuid::Uuid;

use crate::client::{Observations, Seen};
use crate::system::{jwt_secret, wait_until, System, DB_PASSWORD, PROVIDER_KEY, VIDEO_COST};

/// What the checks need from the run.
pub struct Inputs<'a> {
    pub pool: &'a PgPool,
    /// Stopped by the checks: stopping on SIGTERM is itself checked.
    pub sys: &'a mut System,
    pub http: &'a reqwest::Client,
    pub prefix: &'a str,
    pub funding: &'a HashMap<String, i64>,
    pub seen: &'a Observations,
    /// The command (with its first arguments) that reaches the run's broker.
    pub rabbitmqctl: &'a [String],
}

/// The violations, and the figures the checks read on the way (for the report).
pub struct Findings {
    pub violations: Vec<String>,
    pub by_status: Vec<(String, i64)>,
    pub endings: Vec<(String, i64)>,
    pub accepted_jobs: usize,
    pub commits: i64,
    pub refunds: i64,
    pub provider: Value,
    pub tasks_created: i64,
    pub submitted: i64,
}

/// Runs every check. `unexpected` (processes that died by themselves) comes
/// first, then whether the system settled, then the rest.
pub async fn all(
    inputs: Inputs<'_>,
    unexpected: Vec<String>,
    settled: anyhow::Result<()>,
) -> anyhow::Result<Findings> {
    let Inputs {
        pool,
        sys,
        http,
        prefix,
        funding,
        seen,
        rabbitmqctl,
    } = inputs;
    let mut v = unexpected;
    v.extend(not_settled(settled));
    let by_status = jobs_by_status(pool).await?;
    v.extend(stuck_jobs(&by_status));
    let endings = endings_by_code(pool).await?;
    let statuses = job_statuses(pool).await?;
    let outcomes = seen.outcomes.lock().unwrap().clone();
    let mut accepted_ids = HashSet::new();
    v.extend(answers(&outcomes, &statuses, &mut accepted_ids));
    v.extend(duplicate_keys(
        &seen.pairs.lock().unwrap(),
        &mut accepted_ids,
    ));
    v.extend(unanswered_jobs(pool, &accepted_ids).await?);
    v.extend(recorded_refusals(pool).await?);
    v.extend(genqctl_ledger_verify(sys).await?);
    v.extend(ledger_rules(pool).await?);
    v.extend(balances(pool, funding).await?);
    let (commits, refunds) = ledger_counts(pool).await?;
    v.extend(shared_provider_tasks(pool).await?);
    v.extend(archived_videos(pool, &sys.dir.join("videos")).await?);
    let (submitted, provider) = provider_figures(pool, http, sys.sim_port).await?;
    let tasks_created = provider["tasks_created"].as_i64().unwrap_or(0);
    v.extend(provider_tasks(tasks_created, submitted));
    v.extend(workers_consuming(prefix, rabbitmqctl).await);
    v.extend(stop_on_sigterm(sys).await);
    v.extend(clean_logs(&sys.dir)?);
    Ok(Findings {
        violations: v,
        by_status,
        endings,
        accepted_jobs: accepted_ids.len(),
        commits,
        refunds,
        provider,
        tasks_created,
        submitted,
    })
}

/// Every succeeded job's video is stored whole under its key (a worker
/// killed mid-copy left nothing half-written there), and no job that lacks
/// its copy was charged.
async fn archived_videos(pool: &PgPool, videos: &Path) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(uuid::Uuid, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT id, status, video_key, video_bytes FROM jobs WHERE status = 'succeeded' OR video_key IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let mut v = vec![];
    for (id, status, key, bytes) in rows {
        let (Some(key), Some(bytes)) = (key, bytes) else {
            v.push(format!("job {id} is {status} without a stored video"));
            continue;
        };
        if status != "succeeded" {
            v.push(format!("job {id} is {status} but has a stored video"));
        }
        match std::fs::metadata(videos.join(&key)) {
            Ok(m) if m.len() == bytes as u64 => {}
            Ok(m) => v.push(format!(
                "job {id}: the stored video has {} bytes, the job says {bytes}",
                m.len()
            )),
            Err(e) => v.push(format!("job {id}: its video {key} is not stored: {e}")),
        }
    }
    Ok(v)
}

/// Every job reached a terminal state within the settle time.
fn not_settled(settled: anyhow::Result<()>) -> Vec<String> {
    match settled {
        Err(e) => vec![format!("not settled: {e}")],
        Ok(()) => vec![],
    }
}

async fn jobs_by_status(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?,
    )
}

/// No accepted job is left queued, submitting or running.
fn stuck_jobs(by_status: &[(String, i64)]) -> Vec<String> {
    let open: i64 = by_status
        .iter()
        .filter(|(s, _)| JobStatus::parse(s).is_some_and(JobStatus::is_open))
        .map(|(_, c)| c)
        .sum();
    if open > 0 {
        vec![format!("{open} accepted jobs are not terminal (stuck)")]
    } else {
        vec![]
    }
}

async fn endings_by_code(pool: &PgPool) -> anyhow::Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT COALESCE(error_code, 'none'), count(*) FROM jobs WHERE status IN ('failed','canceled','dead') GROUP BY 1",
    )
    .fetch_all(pool)
    .await?)
}

async fn job_statuses(pool: &PgPool) -> anyhow::Result<HashMap<Uuid, String>> {
    Ok(
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, status FROM jobs")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect(),
    )
}

/// Each answer agrees with the database: a 202 names a settled job, a 402 was
/// deserved and left a rejected job, and every submission got a 202 or 402.
/// Also records the jobs the clients were told about in `accepted_ids`.
fn answers(
    outcomes: &[(String, Seen)],
    statuses: &HashMap<Uuid, String>,
    accepted_ids: &mut HashSet<Uuid>,
) -> Vec<String> {
    let mut v = vec![];
    for (sub, seen) in outcomes {
        match seen {
            Seen::Accepted(id) => {
                accepted_ids.insert(*id);
                match statuses.get(id).map(String::as_str) {
                    None => v.push(format!(
                        "accepted job {id} of {sub} is missing from the database"
                    )),
                    Some(s)
                        if JobStatus::parse(s)
                            .is_none_or(|s| s.is_open() || s == JobStatus::Rejected) =>
                    {
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
    v
}

/// Two requests with one Idempotency-Key got the same job, never one job
/// each nor a 202 and a 402. Also records in `accepted_ids` the job a pair
/// was accepted as, when it was consistent.
fn duplicate_keys(pairs: &[(Seen, Seen)], accepted_ids: &mut HashSet<Uuid>) -> Vec<String> {
    let mut v = vec![];
    for (a, b) in pairs {
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
    v
}

/// Jobs the database accepted that no client was ever told about (an
/// answer lost with the API kill, then given again on the retry, is fine).
async fn unanswered_jobs(
    pool: &PgPool,
    accepted_ids: &HashSet<Uuid>,
) -> anyhow::Result<Vec<String>> {
    let unanswered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status <> 'rejected' AND NOT (id = ANY($1))",
    )
    .bind(accepted_ids.iter().copied().collect::<Vec<Uuid>>())
    .fetch_one(pool)
    .await?;
    Ok(if unanswered > 0 {
        vec![format!(
            "{unanswered} accepted jobs were never answered to a client"
        )]
    } else {
        vec![]
    })
}

/// Every rejected job recorded a deserved refusal.
async fn recorded_refusals(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let recorded_402: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT required_credits, available_credits FROM jobs WHERE status = 'rejected'",
    )
    .fetch_all(pool)
    .await?;
    let mut v = vec![];
    for (required, available) in &recorded_402 {
        if available >= required {
            v.push(format!(
                "rejected job recorded with available {available} >= required {required}"
            ));
        }
    }
    Ok(v)
}

/// The operator's own command must agree: exit 0, "Ledger OK".
async fn genqctl_ledger_verify(sys: &System) -> anyhow::Result<Vec<String>> {
    let verify = Command::new(sys.bin.join("genqctl"))
        .args(["ledger", "verify"])
        .envs(sys.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("RUST_BACKTRACE")
        .output()
        .await
        .context("running genqctl ledger verify")?;
    Ok(if !verify.status.success() {
        vec![format!(
            "genqctl ledger verify failed: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        )]
    } else {
        vec![]
    })
}

/// The ledger's own rules, as the library checks them.
async fn ledger_rules(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(ops::verify_ledger(pool)
        .await?
        .into_iter()
        .map(|violation| {
            format!(
                "ledger: {} {:?} {:?}: {}",
                violation.rule, violation.user_id, violation.job_id, violation.detail
            )
        })
        .collect())
}

/// Per user: spent is exactly the cost of the videos that succeeded, nothing
/// stays reserved, and no credit was made or lost (available + spent = funded).
async fn balances(pool: &PgPool, funding: &HashMap<String, i64>) -> anyhow::Result<Vec<String>> {
    let per_user: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT u.external_id, a.spent, a.reserved, a.available,
                (SELECT count(*) FROM jobs j WHERE j.user_id = u.id AND j.status = 'succeeded')
           FROM users u JOIN credit_accounts a ON a.user_id = u.id",
    )
    .fetch_all(pool)
    .await?;
    let mut v = vec![];
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
    Ok(v)
}

/// Commits and refunds in the ledger (a figure, not a check).
async fn ledger_counts(pool: &PgPool) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE kind = 'commit'), count(*) FILTER (WHERE kind = 'refund') FROM credit_ledger",
    )
    .fetch_one(pool)
    .await?)
}

/// No provider task belongs to two jobs.
async fn shared_provider_tasks(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let shared_tasks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT provider_task_id FROM jobs WHERE provider_task_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) s",
    )
    .fetch_one(pool)
    .await?;
    Ok(if shared_tasks > 0 {
        vec![format!(
            "{shared_tasks} provider tasks are shared by several jobs"
        )]
    } else {
        vec![]
    })
}

/// Jobs submitted to the provider at least once, and the simulator's own stats.
async fn provider_figures(
    pool: &PgPool,
    http: &reqwest::Client,
    sim_port: u16,
) -> anyhow::Result<(i64, Value)> {
    let submitted: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE attempts > 0")
        .fetch_one(pool)
        .await?;
    let provider: Value = http
        .get(format!("http://127.0.0.1:{sim_port}/v1/stats"))
        .send()
        .await?
        .json()
        .await?;
    Ok((submitted, provider))
}

/// The provider created no more tasks than jobs were submitted to it.
fn provider_tasks(tasks_created: i64, submitted: i64) -> Vec<String> {
    if tasks_created > submitted {
        vec![format!(
            "the provider created {tasks_created} tasks for {submitted} submitted jobs"
        )]
    } else {
        vec![]
    }
}

/// Every worker must be consuming again (none stuck after the restarts).
/// `rabbitmqctl` is the command (and its first arguments) that reaches the
/// broker the run used.
async fn workers_consuming(prefix: &str, rabbitmqctl: &[String]) -> Vec<String> {
    let queues = [format!("{prefix}.start"), format!("{prefix}.poll")];
    let consuming = wait_until("every worker consuming", Duration::from_secs(60), || {
        let queues = queues.clone();
        async move {
            let Ok(out) = Command::new(&rabbitmqctl[0])
                .args(&rabbitmqctl[1..])
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
    match consuming {
        Err(e) => vec![format!("not every worker consumes at the end: {e}")],
        Ok(()) => vec![],
    }
}

/// Stops everything: SIGTERM must be enough for the workers and the API.
async fn stop_on_sigterm(sys: &mut System) -> Vec<String> {
    let mut v = vec![];
    for w in sys.workers.iter_mut() {
        if !System::stop(w).await {
            v.push("a worker did not stop on SIGTERM within 30 s".into());
        }
    }
    for api in sys.apis.iter_mut() {
        if !System::stop(api).await {
            v.push("an API process did not stop on SIGTERM within 30 s".into());
        }
    }
    System::stop(&mut sys.sim).await;
    v
}

/// No secret and no panic in any log of the run (read once all are stopped).
fn clean_logs(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = vec![];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for secret in [jwt_secret(), DB_PASSWORD, PROVIDER_KEY] {
            if text.contains(secret) {
                v.push(format!("a secret appears in {}", path.display()));
            }
        }
        if text.contains("panicked") {
            v.push(format!("a panic is logged in {}", path.display()));
        }
    }
    Ok(v)
}
