//! Operator queries: the diagnosis of a user (the report an operator would
//! otherwise assemble by hand from the logs, computed; docs/design.md),
//! the ledger verification, and job listings across users.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::store::{self, Account, Job, JobEvent, StoreError, User, UserRef, JOB_COLS};
use genq_core::domain::JobStatus;

#[derive(Debug, Clone, Serialize)]
pub struct CreditSummary {
    pub available: i64,
    pub reserved: i64,
    pub spent: i64,
    /// Credits of a reversed payment that were already spent; while any are
    /// owed the user can't start a job.
    pub owed: i64,
    pub granted: i64,
    pub purchased: i64,
    pub adjusted: i64,
    pub video_cost: i64,
    pub can_afford_video: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    #[serde(flatten)]
    pub job: Job,
    pub events: Vec<JobEvent>,
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub job_id: Option<Uuid>,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Everything an operator needs to answer "where is my video?".
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub user: User,
    pub credits: CreditSummary,
    /// The credit lots: live ones in the order a job takes them, then the
    /// spent and expired ones.
    pub lots: Vec<crate::store::lots::Lot>,
    pub jobs: Vec<JobReport>,
    pub audit: Vec<AuditEntry>,
    pub conclusion: String,
}

/// Jobs shown in a diagnosis, newest first.
const DIAGNOSIS_JOBS: i64 = 50;

pub async fn diagnose(
    pool: &PgPool,
    who: &UserRef,
    video_cost: i64,
) -> Result<Option<Diagnosis>, StoreError> {
    let Some(user) = store::find_user(pool, who).await? else {
        return Ok(None);
    };
    let account = store::account(pool, user.id).await?;
    let (granted, purchased, adjusted): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(amount) FILTER (WHERE kind = 'grant'), 0)::bigint,
                COALESCE(SUM(amount) FILTER (WHERE kind = 'purchase'), 0)::bigint,
                COALESCE(SUM(amount) FILTER (WHERE kind = 'adjust'), 0)::bigint
           FROM credit_ledger WHERE user_id = $1",
    )
    .bind(user.id)
    .fetch_one(pool)
    .await?;
    let jobs: Vec<Job> = sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
    ))
    .bind(user.id)
    .bind(DIAGNOSIS_JOBS)
    .fetch_all(pool)
    .await?;
    let mut reports = Vec::with_capacity(jobs.len());
    for job in jobs {
        let events = store::job_events(pool, job.id).await?;
        reports.push(JobReport { job, events });
    }
    let audit: Vec<AuditEntry> = sqlx::query_as(
        "SELECT id, actor, action, job_id, details, created_at FROM audit_log
          WHERE target_user_id = $1 ORDER BY id DESC LIMIT 50",
    )
    .bind(user.id)
    .fetch_all(pool)
    .await?;
    let credits = CreditSummary {
        available: account.available,
        reserved: account.reserved,
        spent: account.spent,
        owed: account.owed,
        granted,
        purchased,
        adjusted,
        video_cost,
        can_afford_video: account.available >= video_cost,
    };
    let conclusion = conclude(&account, &credits, &reports);
    let lots = crate::store::lots::lots_of(pool, user.id).await?;
    Ok(Some(Diagnosis {
        user,
        credits,
        lots,
        jobs: reports,
        audit,
        conclusion,
    }))
}

fn hms(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The diagnosis in plain words, from the newest job backwards.
fn conclude(account: &Account, credits: &CreditSummary, jobs: &[JobReport]) -> String {
    let afford = if account.owed > 0 {
        format!(
            "The user owes {} credits (a payment was refunded or disputed after its credits were spent) and can't start a job until a purchase repays them or an operator waives them (genqctl credits waive).",
            account.owed
        )
    } else if credits.can_afford_video {
        format!(
            "The user can afford a video now ({} credits available, a video needs {}).",
            account.available, credits.video_cost
        )
    } else {
        format!(
            "The user cannot afford a video now: {} credits available, a video needs {}.",
            account.available, credits.video_cost
        )
    };
    let Some(last) = jobs.first().map(|r| &r.job) else {
        return format!("The user has never asked for a video. {afford}");
    };
    let when = hms(last.created_at);
    let what = match last.status {
        JobStatus::Rejected if last.error_code.as_deref() == Some("credits_owed") => format!(
            "Last attempt {when} was refused because the user owed credits from a reversed payment. No job was queued."
        ),
        JobStatus::Rejected => format!(
            "Last attempt {when} was refused: a video needs {} credits, the user had {}. No job was queued.",
            last.required_credits.unwrap_or(last.cost),
            last.available_credits.unwrap_or(0)
        ),
        JobStatus::Queued => format!("Last job {} ({when}) is queued, waiting for a worker; {} credits are reserved.", last.id, last.cost),
        JobStatus::Submitting => format!("Last job {} ({when}) is being submitted to the provider (attempt {}).", last.id, last.attempts),
        JobStatus::Running => format!(
            "Last job {} ({when}) is running at the provider as task {}; {} credits are reserved.",
            last.id, last.provider_task_id.as_deref().unwrap_or("?"), last.cost
        ),
        JobStatus::Succeeded => format!(
            "Last job {} ({when}) succeeded; {} credits were spent. genq keeps its video ({} bytes).",
            last.id, last.cost, last.video_bytes.unwrap_or(0)
        ),
        s @ (JobStatus::Failed | JobStatus::Canceled | JobStatus::Dead) => format!(
            "Last job {} ({when}) {}: {}. Its {} credits were refunded.",
            last.id,
            match s { JobStatus::Failed => "failed", JobStatus::Canceled => "was canceled", _ => "died after retries" },
            last.error_message.as_deref().unwrap_or("no reason recorded"),
            last.cost
        ),
    };
    let mut counts: Vec<(JobStatus, usize)> = vec![];
    for r in jobs {
        match counts.iter_mut().find(|(s, _)| *s == r.job.status) {
            Some((_, n)) => *n += 1,
            None => counts.push((r.job.status, 1)),
        }
    }
    let tally = counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{what} {afford} History: {tally}.")
}

/// One broken invariant of the ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Violation {
    pub user_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub rule: String,
    pub detail: String,
}

/// Recomputes every balance from the ledger and checks the invariants:
/// the account (what is owed included) equals its ledger; available +
/// reserved + spent = granted + purchased + adjustments - reversed -
/// repaid; reserved = the costs of open jobs; a job has one
/// reserve and at most one settlement per reservation, matching its status;
/// every entry of a job belongs to a reservation it made, and to its user;
/// every lot holds the sum of its moves, and available = what the lots hold.
/// `genqctl ledger verify`, the admin endpoint, the sweeper and the
/// deterministic simulator (`sim/`, after every step) all run this one check.
pub async fn verify_ledger(pool: &PgPool) -> Result<Vec<Violation>, StoreError> {
    let mut out = vec![];
    #[derive(FromRow)]
    struct Row {
        user_id: Uuid,
        available: i64,
        reserved: i64,
        spent: i64,
        owed: i64,
        l_owed: i64,
        l_available: i64,
        l_reserved: i64,
        l_spent: i64,
        funded: i64,
        open_cost: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT a.user_id, a.available, a.reserved, a.spent, a.owed,
                COALESCE(l.owed, 0)::bigint AS l_owed,
                COALESCE(l.available, 0)::bigint AS l_available, COALESCE(l.reserved, 0)::bigint AS l_reserved,
                COALESCE(l.spent, 0)::bigint AS l_spent, COALESCE(l.funded, 0)::bigint AS funded,
                COALESCE(o.open_cost, 0)::bigint AS open_cost
           FROM credit_accounts a
           LEFT JOIN (
             SELECT user_id,
                    SUM(CASE WHEN kind IN ('grant','purchase','adjust','refund') THEN amount
                             WHEN kind IN ('reserve','reversal','repay','expire') THEN -amount ELSE 0 END) AS available,
                    SUM(CASE WHEN kind = 'reserve' THEN amount WHEN kind IN ('commit','refund') THEN -amount ELSE 0 END) AS reserved,
                    SUM(CASE WHEN kind = 'commit' THEN amount ELSE 0 END) AS spent,
                    SUM(CASE WHEN kind IN ('grant','purchase','adjust') THEN amount
                             WHEN kind IN ('reversal','repay','expire') THEN -amount ELSE 0 END) AS funded,
                    SUM(CASE WHEN kind = 'owe' THEN amount
                             WHEN kind IN ('repay','waive') THEN -amount ELSE 0 END) AS owed
               FROM credit_ledger GROUP BY user_id) l ON l.user_id = a.user_id
           LEFT JOIN (
             SELECT user_id, SUM(cost) AS open_cost FROM jobs
              WHERE status IN {open} GROUP BY user_id) o ON o.user_id = a.user_id",
        open = JobStatus::sql_list(&JobStatus::OPEN)
    ))
    .fetch_all(pool)
    .await?;
    for r in rows {
        let v = |rule: &str, detail: String| Violation {
            user_id: Some(r.user_id),
            job_id: None,
            rule: rule.into(),
            detail,
        };
        if (r.available, r.reserved, r.spent) != (r.l_available, r.l_reserved, r.l_spent) {
            out.push(v(
                "account_matches_ledger",
                format!(
                    "account available/reserved/spent = {}/{}/{}, ledger says {}/{}/{}",
                    r.available, r.reserved, r.spent, r.l_available, r.l_reserved, r.l_spent
                ),
            ));
        }
        if r.owed != r.l_owed {
            out.push(v(
                "owed_matches_ledger",
                format!(
                    "account owes {}, ledger says {} (owed - repaid - waived)",
                    r.owed, r.l_owed
                ),
            ));
        }
        if r.available + r.reserved + r.spent != r.funded {
            out.push(v(
                "balance_equals_funding",
                format!(
                    "available + reserved + spent = {} but granted + purchased + adjustments - reversed - repaid = {}",
                    r.available + r.reserved + r.spent,
                    r.funded
                ),
            ));
        }
        if r.reserved != r.open_cost {
            out.push(v(
                "reserved_equals_open_jobs",
                format!(
                    "reserved = {} but the open jobs cost {}",
                    r.reserved, r.open_cost
                ),
            ));
        }
        if r.available < 0 || r.reserved < 0 || r.spent < 0 || r.owed < 0 {
            out.push(v("non_negative", "a balance is negative".into()));
        }
    }
    #[derive(FromRow)]
    struct JobRow {
        id: Uuid,
        user_id: Uuid,
        status: String,
        reservation: i32,
        reserves: i64,
        commits: i64,
        refunds: i64,
    }
    let jobs: Vec<JobRow> = sqlx::query_as(&format!(
        "SELECT j.id, j.user_id, j.status, j.reservation,
                COUNT(*) FILTER (WHERE l.kind = 'reserve' AND l.reservation = j.reservation) AS reserves,
                COUNT(*) FILTER (WHERE l.kind = 'commit' AND l.reservation = j.reservation) AS commits,
                COUNT(*) FILTER (WHERE l.kind = 'refund' AND l.reservation = j.reservation) AS refunds
           FROM jobs j LEFT JOIN credit_ledger l ON l.job_id = j.id
          GROUP BY j.id
         HAVING NOT (
           (j.status = 'rejected' AND COUNT(l.id) = 0) OR
           (j.status IN {open}
              AND COUNT(*) FILTER (WHERE l.kind = 'reserve' AND l.reservation = j.reservation) = 1
              AND COUNT(*) FILTER (WHERE l.kind IN ('commit','refund') AND l.reservation = j.reservation) = 0) OR
           (j.status = 'succeeded'
              AND COUNT(*) FILTER (WHERE l.kind = 'reserve' AND l.reservation = j.reservation) = 1
              AND COUNT(*) FILTER (WHERE l.kind = 'commit' AND l.reservation = j.reservation) = 1
              AND COUNT(*) FILTER (WHERE l.kind = 'refund' AND l.reservation = j.reservation) = 0) OR
           (j.status IN ('failed','canceled','dead')
              AND COUNT(*) FILTER (WHERE l.kind = 'reserve' AND l.reservation = j.reservation) = 1
              AND COUNT(*) FILTER (WHERE l.kind = 'refund' AND l.reservation = j.reservation) = 1
              AND COUNT(*) FILTER (WHERE l.kind = 'commit' AND l.reservation = j.reservation) = 0))",
        open = JobStatus::sql_list(&JobStatus::OPEN)
    ))
    .fetch_all(pool)
    .await?;
    for j in jobs {
        out.push(Violation {
            user_id: Some(j.user_id),
            job_id: Some(j.id),
            rule: "one_settlement_per_job".into(),
            detail: format!(
                "job is {} (reservation {}) with {} reserve, {} commit, {} refund entries",
                j.status, j.reservation, j.reserves, j.commits, j.refunds
            ),
        });
    }
    // Earlier reservations of replayed jobs: each was reserved once and refunded once.
    let earlier: Vec<(Uuid, Uuid, i32, i64, i64, i64)> = sqlx::query_as(
        "SELECT j.id, j.user_id, l.reservation,
                COUNT(*) FILTER (WHERE l.kind = 'reserve'),
                COUNT(*) FILTER (WHERE l.kind = 'refund'),
                COUNT(*) FILTER (WHERE l.kind = 'commit')
           FROM jobs j JOIN credit_ledger l ON l.job_id = j.id AND l.reservation < j.reservation
          GROUP BY j.id, j.user_id, l.reservation
         HAVING COUNT(*) FILTER (WHERE l.kind = 'reserve') <> 1
             OR COUNT(*) FILTER (WHERE l.kind = 'refund') <> 1
             OR COUNT(*) FILTER (WHERE l.kind = 'commit') <> 0",
    )
    .fetch_all(pool)
    .await?;
    for (job_id, user_id, reservation, reserves, refunds, commits) in earlier {
        out.push(Violation {
            user_id: Some(user_id),
            job_id: Some(job_id),
            rule: "earlier_reservation_refunded".into(),
            detail: format!(
                "reservation {reservation} has {reserves} reserve, {refunds} refund, {commits} commit entries"
            ),
        });
    }
    // Settlements of a reservation the job never made (or another user's).
    let strays: Vec<(Uuid, Uuid, String, i32)> = sqlx::query_as(
        "SELECT l.job_id, l.user_id, l.kind, l.reservation FROM credit_ledger l
           JOIN jobs j ON j.id = l.job_id
          WHERE l.reservation > j.reservation OR l.user_id <> j.user_id
          LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    for (job_id, user_id, kind, reservation) in strays {
        out.push(Violation {
            user_id: Some(user_id),
            job_id: Some(job_id),
            rule: "entry_matches_job".into(),
            detail: format!("a {kind} entry for reservation {reservation}, which the job never made or does not own"),
        });
    }
    // Lots: each holds the sum of its moves, and an account's available
    // credits are what its lots hold.
    let lots: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT l.user_id, l.id, l.remaining, COALESCE(m.total, 0)::bigint
           FROM credit_lots l
           LEFT JOIN (SELECT lot_id, sum(amount) AS total FROM credit_lot_moves GROUP BY lot_id) m
             ON m.lot_id = l.id
          WHERE l.remaining <> COALESCE(m.total, 0)
          LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    for (user_id, lot, remaining, moved) in lots {
        out.push(Violation {
            user_id: Some(user_id),
            job_id: None,
            rule: "lot_matches_moves".into(),
            detail: format!("lot {lot} holds {remaining}, its moves add up to {moved}"),
        });
    }
    let accounts: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT a.user_id, a.available, COALESCE(l.held, 0)::bigint
           FROM credit_accounts a
           LEFT JOIN (SELECT user_id, sum(remaining) AS held FROM credit_lots GROUP BY user_id) l
             ON l.user_id = a.user_id
          WHERE a.available <> COALESCE(l.held, 0)
          LIMIT 100",
    )
    .fetch_all(pool)
    .await?;
    for (user_id, available, held) in accounts {
        out.push(Violation {
            user_id: Some(user_id),
            job_id: None,
            rule: "available_equals_lots".into(),
            detail: format!("available = {available} but the lots hold {held}"),
        });
    }
    Ok(out)
}

/// Jobs of every user, oldest first, optionally in one status and older than some age.
pub async fn list_jobs(
    pool: &PgPool,
    status: Option<JobStatus>,
    older_than: Option<std::time::Duration>,
    limit: i64,
) -> Result<Vec<Job>, StoreError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs
          WHERE ($1::text IS NULL OR status = $1)
            AND ($2::float8 IS NULL OR updated_at < now() - make_interval(secs => $2))
          ORDER BY updated_at, id LIMIT $3"
    ))
    .bind(status.map(JobStatus::as_str))
    .bind(older_than.map(|d| d.as_secs_f64()))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The system at a glance, for the console's System page.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SystemSummary {
    /// Every job by status (statuses without jobs are absent).
    pub jobs_by_status: std::collections::BTreeMap<String, i64>,
    /// Jobs that reached each status in the last hour (by their last update).
    pub last_hour_by_status: std::collections::BTreeMap<String, i64>,
    /// Outbox rows not yet published to the broker.
    pub outbox_backlog: i64,
    /// Seconds since the oldest unpublished outbox row was written.
    pub outbox_oldest_secs: Option<i64>,
    /// Dead letters neither replayed nor discarded.
    pub dead_letters_open: i64,
    /// Failed and dead jobs of the last 24 hours by error code.
    pub failures_by_code: std::collections::BTreeMap<String, i64>,
    /// Jobs finished (succeeded, failed, dead, canceled) per hour, last 24 hours; hours without any are absent.
    pub finished_per_hour: Vec<HourCount>,
    /// Dead letters received per hour, last 24 hours; hours without any are absent.
    pub dead_letters_per_hour: Vec<HourCount>,
    /// The most recent ledger verification (the worker runs one every
    /// minute or so), if any was ever recorded.
    pub last_verification: Option<VerificationRecord>,
}

/// One recorded run of [`verify_ledger`].
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct VerificationRecord {
    pub checked_at: DateTime<Utc>,
    /// `worker`, `genqctl`, or the admin who pressed the button.
    pub checked_by: String,
    /// How many invariants were broken (0: the ledger is sound).
    pub violations: i32,
    pub took_ms: i32,
    /// The first few violations (rule, user_id, job_id, detail).
    #[schema(value_type = Vec<Object>)]
    pub sample: sqlx::types::Json<Vec<Violation>>,
}

/// How many violations a record keeps; the logs have them all.
const SAMPLE: usize = 5;
/// How long records are kept: the console shows the last one, and a week
/// answers "since when?".
const KEEP_DAYS: i32 = 7;

/// Runs [`verify_ledger`] and records the outcome for the console.
pub async fn verify_and_record(pool: &PgPool, by: &str) -> Result<Vec<Violation>, StoreError> {
    let started = std::time::Instant::now();
    let violations = verify_ledger(pool).await?;
    let took_ms = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
    let sample: Vec<&Violation> = violations.iter().take(SAMPLE).collect();
    sqlx::query(
        "WITH pruned AS (DELETE FROM ledger_verifications WHERE checked_at < now() - make_interval(days => $5))
         INSERT INTO ledger_verifications (checked_by, violations, took_ms, sample) VALUES ($1, $2, $3, $4)",
    )
    .bind(by)
    .bind(i32::try_from(violations.len()).unwrap_or(i32::MAX))
    .bind(took_ms)
    .bind(sqlx::types::Json(&sample))
    .bind(KEEP_DAYS)
    .execute(pool)
    .await?;
    Ok(violations)
}

/// The last recorded verification, if any: what the viewer role reads
/// instead of running one.
pub async fn last_verification(pool: &PgPool) -> Result<Option<VerificationRecord>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT checked_at, checked_by, violations, took_ms, sample FROM ledger_verifications
          ORDER BY checked_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

/// A count in one hour (the hour's start, UTC).
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct HourCount {
    pub hour: DateTime<Utc>,
    pub count: i64,
}

/// What the sweeper reports as gauges for alerts: the outbox's backlog and
/// its oldest row, open dead letters, jobs waiting in line, and open jobs
/// past their deadline.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct HealthGauges {
    pub outbox_backlog: i64,
    pub outbox_oldest_secs: Option<i64>,
    pub dead_letters_open: i64,
    pub jobs_waiting: i64,
    pub jobs_past_deadline: i64,
}

/// One statement, each count on an index or a small table.
pub async fn health_gauges(pool: &PgPool) -> Result<HealthGauges, StoreError> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS outbox_backlog,
                (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::bigint
                   FROM outbox WHERE published_at IS NULL) AS outbox_oldest_secs,
                (SELECT count(*) FROM dead_letters WHERE state = 'open') AS dead_letters_open,
                (SELECT count(*) FROM jobs WHERE waiting AND status = 'queued') AS jobs_waiting,
                (SELECT count(*) FROM jobs WHERE status IN ('submitting', 'running')
                    AND deadline_at < now()) AS jobs_past_deadline",
    )
    .fetch_one(pool)
    .await?)
}

/// Counts for [`SystemSummary`]: a few aggregate queries, each on an index
/// or a small table.
pub async fn system_summary(pool: &PgPool) -> Result<SystemSummary, StoreError> {
    let by_status: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status")
            .fetch_all(pool)
            .await?;
    let last_hour: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM jobs WHERE updated_at > now() - interval '1 hour' GROUP BY status",
    )
    .fetch_all(pool)
    .await?;
    let HealthGauges {
        outbox_backlog,
        outbox_oldest_secs,
        dead_letters_open,
        ..
    } = health_gauges(pool).await?;
    let failures: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(error_code, 'none'), count(*) FROM jobs
          WHERE status IN ('failed', 'dead') AND updated_at > now() - interval '24 hours'
          GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    let finished_per_hour: Vec<HourCount> = sqlx::query_as(
        "SELECT date_trunc('hour', updated_at) AS hour, count(*) AS count FROM jobs
          WHERE status IN ('succeeded', 'failed', 'dead', 'canceled')
            AND updated_at > now() - interval '24 hours'
          GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let dead_letters_per_hour: Vec<HourCount> = sqlx::query_as(
        "SELECT date_trunc('hour', received_at) AS hour, count(*) AS count FROM dead_letters
          WHERE received_at > now() - interval '24 hours'
          GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    let last_verification = last_verification(pool).await?;
    Ok(SystemSummary {
        last_verification,
        failures_by_code: failures.into_iter().collect(),
        finished_per_hour,
        dead_letters_per_hour,
        jobs_by_status: by_status.into_iter().collect(),
        last_hour_by_status: last_hour.into_iter().collect(),
        outbox_backlog,
        outbox_oldest_secs,
        dead_letters_open,
    })
}
