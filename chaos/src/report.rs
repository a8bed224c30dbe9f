//! The figures counted during the run, and the report printed at its end
//! (and saved beside the logs as report.json).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters of what the run did and saw.
#[derive(Default, Serialize)]
pub struct Figures {
    pub submissions: AtomicU64,
    pub accepted: AtomicU64,
    pub refused_402: AtomicU64,
    pub duplicate_key_requests: AtomicU64,
    pub client_retries: AtomicU64,
    pub gave_up: AtomicU64,
    pub cancels_sent: AtomicU64,
    pub cancels_ok: AtomicU64,
    pub worker_kills: AtomicU64,
    pub api_kills: AtomicU64,
    pub rabbitmq_restarts: AtomicU64,
    pub postgres_restarts: AtomicU64,
    pub broker_node_kills: AtomicU64,
    pub broker_node_stops: AtomicU64,
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

#[derive(Serialize, Default)]
pub struct Report {
    pub profile: String,
    pub users: usize,
    pub jobs_planned: usize,
    pub elapsed_secs: f64,
    pub settle_secs: f64,
    pub figures: serde_json::Value,
    pub jobs_by_status: HashMap<String, i64>,
    /// Why jobs that did not succeed ended: provider_failed, deadline_exceeded, ...
    pub endings_by_code: HashMap<String, i64>,
    pub provider: serde_json::Value,
    pub provider_tasks_created: i64,
    pub jobs_submitted_to_provider: i64,
    pub refunds: i64,
    pub commits: i64,
    pub accepted_jobs: usize,
    pub violations: Vec<String>,
}

impl Report {
    /// Writes the report as report.json into the run's directory.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

pub fn print_report(r: &Report, f: &Figures) {
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
        "faults: worker SIGKILLs {}  API kills {}  RabbitMQ restarts {}  Postgres restarts {}  broker node SIGKILLs {}  broker node stops {}",
        n(&f.worker_kills),
        n(&f.api_kills),
        n(&f.rabbitmq_restarts),
        n(&f.postgres_restarts),
        n(&f.broker_node_kills),
        n(&f.broker_node_stops)
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
