//! `genqctl`: the operator CLI over genq's database and broker — diagnose a
//! user, grant credits, show and list jobs, work the dead-letter archive,
//! manage webhooks, verify the ledger, read payment events, waive debts and
//! set a user's limits.
//! Tables for people, `--json` for scripts.

mod billing;
mod dlq;
mod users;
mod webhooks;

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use genq_core::config::Settings;
use genq_core::domain::{Credits, JobStatus, LedgerKind};
use genq_store::store::{self, CreditGrant, GrantOutcome, Job, JobEvent, UserRef};
use genq_store::{db, ops};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "genqctl", about = "genq's operator CLI", version)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// A TOML configuration file (else $GENQ_CONFIG, else defaults and environment).
    #[arg(long, global = true)]
    pub config: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Everything about one user: account, credits, jobs and refused attempts, audit, a conclusion.
    Diagnose(UserArg),
    /// Add credits.
    #[command(subcommand)]
    Credits(CreditsCmd),
    /// Show or list jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Work the dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Check the ledger.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Webhook endpoints and their deliveries.
    #[command(subcommand)]
    Webhooks(WebhooksCmd),
    /// The payment provider's events.
    #[command(subcommand)]
    Billing(BillingCmd),
    /// A user's limits.
    #[command(subcommand)]
    Users(UsersCmd),
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// Show or set how many of a user's jobs may be at the provider at once,
    /// and whether they may ask for high priority (audited).
    Limit {
        #[command(flatten)]
        user: UserArg,
        /// At most this many at once (0: no limit), or `default` for the
        /// deployment's limits.max_active_per_user.
        #[arg(long)]
        max_active: Option<String>,
        /// Allow (`true`) or refuse (`false`) `priority: high`.
        #[arg(long)]
        priority: Option<bool>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Who is acting (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum BillingCmd {
    /// What each Stripe event of the last 30 days did, newest first.
    Events {
        /// Only those needing an operator (paid but not credited).
        #[arg(long)]
        attention: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct UserArg {
    /// The user's email.
    #[arg(long)]
    pub email: Option<String>,
    /// The user's external ID (the identity provider's `sub`) or genq ID.
    #[arg(long)]
    pub user: Option<String>,
}

impl UserArg {
    fn to_ref(&self) -> UserRef {
        match (&self.email, &self.user) {
            (Some(e), _) => UserRef::Email(e.clone()),
            (None, Some(u)) => UserRef::from_id(u),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

/// A user named optionally (by one of the two).
#[derive(Args, Debug, Clone)]
#[group(required = false, multiple = false)]
pub struct OptionalUser {
    /// The user's email.
    #[arg(long)]
    pub email: Option<String>,
    /// The user's external ID (the identity provider's `sub`) or genq ID.
    #[arg(long)]
    pub user: Option<String>,
}

impl OptionalUser {
    fn to_ref(&self) -> Option<UserRef> {
        match (&self.email, &self.user) {
            (Some(e), _) => Some(UserRef::Email(e.clone())),
            (None, Some(u)) => Some(UserRef::from_id(u)),
            (None, None) => None,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum WebhooksCmd {
    /// Register an endpoint for one user's job status changes (--email or --user), or every user's; prints its secret once.
    Add {
        /// http(s) URL; non-public addresses are refused unless webhooks.allow_private.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        user: OptionalUser,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Endpoints (never their secrets).
    List {
        /// Include deleted endpoints.
        #[arg(long)]
        all: bool,
    },
    /// Delete an endpoint; its pending deliveries are dropped.
    Remove {
        id: Uuid,
        #[arg(long)]
        actor: Option<String>,
    },
    /// A new secret (printed once); the previous one signs too for webhooks.rotation_overlap_secs.
    Rotate {
        id: Uuid,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Deliveries, newest first, with their last attempt.
    Deliveries {
        /// pending, delivered, failed or disabled.
        #[arg(long)]
        status: Option<String>,
        /// Only to this endpoint.
        #[arg(long)]
        endpoint: Option<Uuid>,
        /// Only of this job.
        #[arg(long)]
        job: Option<Uuid>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Send a delivery again now, with the same webhook-id, from the start of the retry schedule.
    Replay {
        id: i64,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum CreditsCmd {
    /// Grant credits (support, goodwill).
    Grant {
        #[command(flatten)]
        user: UserArg,
        #[arg(long, allow_negative_numbers = true)]
        amount: i64,
        #[arg(long)]
        reason: String,
        /// Who does it; default the OS user.
        #[arg(long)]
        actor: Option<String>,
        /// The credits expire this long from now (e.g. 30d, 12h); default never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Record a purchase; a reference is applied once only.
    Purchase {
        #[command(flatten)]
        user: UserArg,
        #[arg(long, allow_negative_numbers = true)]
        amount: i64,
        /// The payment's ID.
        #[arg(long)]
        reference: String,
        #[arg(long, default_value = "purchase")]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Pardon credits a user owes from a refunded or disputed payment.
    Waive {
        #[command(flatten)]
        user: UserArg,
        /// At most this many; default all that is owed.
        #[arg(long)]
        amount: Option<i64>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// One job with its timeline.
    Show { id: Uuid },
    /// Jobs across users, least recently updated first.
    List {
        #[arg(long)]
        status: Option<String>,
        /// Only jobs not updated for this long, e.g. 10m, 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// Dead letters with job, user, reason, attempts and age (moves new ones from the broker first).
    List {
        /// Include replayed and discarded letters.
        #[arg(long)]
        all: bool,
    },
    /// One dead letter, with its message.
    Show { id: i64 },
    /// Run the job again; it reserves again if it was refunded.
    Replay(Target),
    /// Close the letter; an open job is closed and refunded.
    Discard(Target),
}

#[derive(Args, Debug)]
pub struct Target {
    /// The dead letter's ID.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub id: Option<i64>,
    /// Every open dead letter.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub actor: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Recompute every balance from the ledger and check the invariants.
    Verify,
}

/// What a command printed and how the process should exit.
pub struct Outcome {
    pub code: i32,
    pub output: String,
}

pub(crate) fn ok(output: String) -> anyhow::Result<Outcome> {
    Ok(Outcome { code: 0, output })
}

pub(crate) fn fail(code: i32, output: String) -> anyhow::Result<Outcome> {
    Ok(Outcome { code, output })
}

/// The operator's name for audit entries.
pub(crate) fn actor(given: &Option<String>) -> String {
    let name = given
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "unknown".into());
    format!("operator:{name}")
}

pub(crate) fn ts(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub(crate) fn age(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds().max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    t
}

/// Runs a parsed command against `pool` (and the broker for the DLQ).
pub async fn execute(cli: &Cli, settings: &Settings, pool: &PgPool) -> anyhow::Result<Outcome> {
    match &cli.command {
        Command::Diagnose(user) => diagnose(cli.json, settings, pool, user).await,
        Command::Credits(CreditsCmd::Waive {
            user,
            amount,
            reason,
            actor,
        }) => billing::waive(cli.json, pool, user, *amount, reason, actor).await,
        Command::Credits(cmd) => credits(cli.json, settings, pool, cmd).await,
        Command::Users(UsersCmd::Limit {
            user,
            max_active,
            priority,
            reason,
            actor,
        }) => {
            let args = users::LimitArgs {
                user,
                max_active: max_active.as_deref(),
                priority: *priority,
                reason: reason.as_deref(),
                who: actor,
            };
            users::limit(cli.json, settings, pool, args).await
        }
        Command::Billing(BillingCmd::Events { attention, limit }) => {
            billing::events(cli.json, pool, *attention, *limit).await
        }
        Command::Jobs(JobsCmd::Show { id }) => job_show(cli.json, pool, *id).await,
        Command::Jobs(JobsCmd::List {
            status,
            older_than,
            limit,
        }) => {
            let status = status
                .as_deref()
                .map(|s| JobStatus::parse(s).with_context(|| format!("unknown status {s:?}")))
                .transpose()?;
            // Beyond ten years the interval would overflow in Postgres.
            let older = older_than.map(|d| d.min(Duration::from_secs(315_360_000)));
            let jobs = ops::list_jobs(pool, status, older, (*limit).clamp(1, 10_000)).await?;
            if cli.json {
                return ok(serde_json::to_string_pretty(&jobs)?);
            }
            let mut t = table(&[
                "job",
                "user",
                "status",
                "updated",
                "attempts",
                "provider task",
                "error",
            ]);
            for j in &jobs {
                t.add_row(vec![
                    j.id.to_string(),
                    j.user_id.to_string(),
                    j.status.to_string(),
                    age(j.updated_at) + " ago",
                    j.attempts.to_string(),
                    j.provider_task_id.clone().unwrap_or_default(),
                    j.error_message.clone().unwrap_or_default(),
                ]);
            }
            ok(format!("{t}\n{} job(s)", jobs.len()))
        }
        Command::Dlq(cmd) => dlq::dead_letters(cli.json, settings, pool, cmd).await,
        Command::Webhooks(cmd) => webhooks::webhooks(cli.json, settings, pool, cmd).await,
        Command::Ledger(LedgerCmd::Verify) => {
            let violations = ops::verify_and_record(pool, "genqctl").await?;
            let code = if violations.is_empty() { 0 } else { 1 };
            if cli.json {
                return fail(
                    code,
                    serde_json::to_string_pretty(
                        &json!({"ok": code == 0, "violations": violations}),
                    )?,
                );
            }
            if violations.is_empty() {
                return ok(
                    "Ledger OK: every balance matches its ledger and every invariant holds.".into(),
                );
            }
            let mut t = table(&["rule", "user", "job", "detail"]);
            for v in &violations {
                t.add_row(vec![
                    v.rule.clone(),
                    v.user_id.map(|u| u.to_string()).unwrap_or_default(),
                    v.job_id.map(|u| u.to_string()).unwrap_or_default(),
                    v.detail.clone(),
                ]);
            }
            fail(1, format!("{t}\n{} violation(s)", violations.len()))
        }
    }
}

async fn diagnose(
    json_out: bool,
    settings: &Settings,
    pool: &PgPool,
    user: &UserArg,
) -> anyhow::Result<Outcome> {
    let Some(d) = ops::diagnose(pool, &user.to_ref(), settings.credits.video_cost).await? else {
        let who = user.email.clone().or(user.user.clone()).unwrap_or_default();
        return fail(
            2,
            format!("No user {who:?}: they have never made an authenticated call to genq."),
        );
    };
    if json_out {
        return ok(serde_json::to_string_pretty(&d)?);
    }
    let mut out = String::new();
    let u = &d.user;
    writeln!(
        out,
        "USER      {} <{}>  (genq id {})",
        u.external_id,
        u.email.as_deref().unwrap_or("no email"),
        u.id
    )?;
    writeln!(
        out,
        "          created {}   last seen {}",
        ts(u.created_at),
        ts(u.last_seen_at)
    )?;
    let c = &d.credits;
    writeln!(out, "CREDITS   available {} · reserved {} · spent {}   (granted {} · purchased {} · adjusted {})",
        c.available, c.reserved, c.spent, c.granted, c.purchased, c.adjusted)?;
    if c.owed > 0 {
        writeln!(out, "OWED      {} credits of a refunded or disputed payment were already spent: no job starts until repaid or waived (genqctl credits waive)", c.owed)?;
    }
    writeln!(
        out,
        "          a video costs {}: {}",
        c.video_cost,
        if c.can_afford_video {
            "can afford one"
        } else {
            "CANNOT afford one"
        }
    )?;
    let live: Vec<_> = d.lots.iter().filter(|l| l.remaining > 0).collect();
    writeln!(
        out,
        "LOTS      {} live (a job takes from the first first)",
        live.len()
    )?;
    for l in &live {
        writeln!(
            out,
            "          {} of {} ({}) {}",
            l.remaining,
            l.amount,
            l.kind.as_deref().unwrap_or("opening balance"),
            l.expires_at
                .map(|t| format!("expire {}", ts(t)))
                .unwrap_or_else(|| "last".into())
        )?;
    }
    writeln!(out, "\nJOBS ({}, refused attempts included)", d.jobs.len())?;
    if !d.jobs.is_empty() {
        let mut t = table(&[
            "created",
            "job",
            "status",
            "reason",
            "provider task",
            "cost",
        ]);
        for r in &d.jobs {
            let j = &r.job;
            t.add_row(vec![
                ts(j.created_at),
                j.id.to_string(),
                j.status.to_string(),
                j.error_message
                    .clone()
                    .unwrap_or_else(|| j.video_key.clone().unwrap_or_default()),
                j.provider_task_id.clone().unwrap_or_default(),
                j.cost.to_string(),
            ]);
        }
        writeln!(out, "{t}")?;
        for r in &d.jobs {
            writeln!(out, "  timeline of {}:", r.job.id)?;
            write_timeline(&mut out, &r.events, "    ")?;
        }
    }
    writeln!(out, "\nAUDIT ({})", d.audit.len())?;
    for a in &d.audit {
        writeln!(
            out,
            "  {}  {}  {}  {}",
            ts(a.created_at),
            a.actor,
            a.action,
            a.details
        )?;
    }
    writeln!(out, "\nCONCLUSION\n  {}", d.conclusion)?;
    ok(out)
}

fn write_timeline(out: &mut String, events: &[JobEvent], indent: &str) -> std::fmt::Result {
    for e in events {
        let change = match (&e.from_status, &e.to_status) {
            (Some(f), Some(t)) => format!("{f} → {t}"),
            (None, Some(t)) => format!("→ {t}"),
            _ => e.kind.clone(),
        };
        writeln!(
            out,
            "{indent}{}  {:<24} {}",
            e.at.format("%H:%M:%S%.3f"),
            change,
            e.message.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

async fn credits(
    json_out: bool,
    settings: &Settings,
    pool: &PgPool,
    cmd: &CreditsCmd,
) -> anyhow::Result<Outcome> {
    let mut expires_at = None;
    let (user, amount, reason, reference, kind, who) = match cmd {
        CreditsCmd::Grant {
            user,
            amount,
            reason,
            actor: a,
            expires_in,
        } => {
            if let Some(d) = expires_in {
                // Ten years at most: a lot that long is a lasting one.
                anyhow::ensure!(
                    *d <= Duration::from_secs(315_360_000),
                    "--expires-in must be at most ten years"
                );
                expires_at = Some(Utc::now() + chrono::Duration::from_std(*d)?);
            }
            (
                user,
                *amount,
                reason.clone(),
                None,
                LedgerKind::Grant,
                actor(a),
            )
        }
        CreditsCmd::Purchase {
            user,
            amount,
            reference,
            reason,
            actor: a,
        } => (
            user,
            *amount,
            reason.clone(),
            Some(reference.clone()),
            LedgerKind::Purchase,
            actor(a),
        ),
        CreditsCmd::Waive { .. } => unreachable!("handled by billing::waive"),
    };
    let amount =
        Credits::parse_grant(amount, "--amount").map_err(|e| anyhow::anyhow!("{}", e.message))?;
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be empty");
    let Some(target) = store::find_user(pool, &user.to_ref()).await? else {
        return fail(2, "No such user.".into());
    };
    let grant = CreditGrant {
        user_id: target.id,
        kind,
        amount: amount.get(),
        reason,
        reference,
        actor: who,
        expires_at,
    };
    let (applied, entry) = match store::add_credits(pool, &grant).await? {
        GrantOutcome::Applied(e) => (true, e),
        GrantOutcome::AlreadyApplied(e) => (false, e),
    };
    let account = store::account(pool, target.id).await?;
    if json_out {
        return ok(serde_json::to_string_pretty(
            &json!({"applied": applied, "entry": entry, "credits": account}),
        )?);
    }
    let can = account.available >= settings.credits.video_cost;
    let head = if applied {
        format!(
            "Added {} credits ({}) to {} as {}.",
            entry.amount, entry.kind, target.external_id, entry.actor
        )
    } else {
        format!(
            "Reference {} was already applied on {}; nothing added.",
            entry.reference.as_deref().unwrap_or("?"),
            ts(entry.created_at)
        )
    };
    ok(format!(
        "{head}\nNow: available {} · reserved {} · spent {} — {}.",
        account.available,
        account.reserved,
        account.spent,
        if can {
            "can afford a video"
        } else {
            "cannot afford a video"
        }
    ))
}

async fn job_show(json_out: bool, pool: &PgPool, id: Uuid) -> anyhow::Result<Outcome> {
    let Some(job) = store::get_job(pool, id).await? else {
        return fail(2, format!("No job {id}."));
    };
    let events = store::job_events(pool, id).await?;
    if json_out {
        return ok(serde_json::to_string_pretty(
            &json!({"job": job, "trace_id": job.trace_id(), "events": events}),
        )?);
    }
    ok(job_text(&job, &events)?)
}

pub(crate) fn job_text(job: &Job, events: &[JobEvent]) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    writeln!(out, "JOB {}  ({})", job.id, job.status)?;
    writeln!(
        out,
        "  user {}   cost {}   attempts {}   reservation {}",
        job.user_id, job.cost, job.attempts, job.reservation
    )?;
    writeln!(out, "  prompt        {}", job.prompt)?;
    writeln!(
        out,
        "  provider task {}",
        job.provider_task_id.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "  video         {}",
        match (&job.video_key, job.video_bytes) {
            (Some(key), Some(bytes)) => format!("{key} ({bytes} bytes, kept by genq)"),
            _ => "-".into(),
        }
    )?;
    writeln!(
        out,
        "  provider url  {}",
        job.provider_result_url.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "  trace         {}", job.trace_id().unwrap_or("-"))?;
    if let Some(code) = &job.error_code {
        writeln!(
            out,
            "  error         {code}: {}",
            job.error_message.as_deref().unwrap_or("")
        )?;
    }
    writeln!(
        out,
        "  created {}   updated {}",
        ts(job.created_at),
        ts(job.updated_at)
    )?;
    writeln!(out, "TIMELINE")?;
    write_timeline(&mut out, events, "  ")?;
    Ok(out)
}

/// Loads the settings, connects and runs; what `main` calls.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let settings = Settings::load(cli.config.as_deref())?;
    // An operator at a terminal wants an answer, not a minute of silence
    // while Postgres is down: unlike the services, genqctl does not wait.
    let database = genq_core::config::DatabaseSettings {
        startup_wait_secs: 0,
        ..settings.database.clone()
    };
    let pool = db::connect_and_migrate(&database).await?;
    let outcome = execute(&cli, &settings, &pool).await;
    pool.close().await;
    outcome
}
