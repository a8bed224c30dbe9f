//! A job's change of status: applied only from the expected statuses, with
//! its timeline event (and a note before it) and, for a terminal status,
//! its commit or refund, all in one statement.

use sqlx::FromRow;
use uuid::Uuid;

use super::credits;
use super::jobs::{Job, JOB_COLS};
use super::named::Named;
use super::Result;
use genq_core::domain::{EventKind, JobStatus};

/// A change of a job's status, applied only when the job is in one of `from`.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub job_id: Uuid,
    pub from: &'a [JobStatus],
    pub to: JobStatus,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub error: Option<(&'a str, String)>,
    /// The provider's link to the finished video.
    pub provider_result_url: Option<&'a str>,
    /// genq's copy of the video: its storage key and size.
    pub video: Option<(&'a str, i64)>,
    pub provider_task_id: Option<&'a str>,
    /// Set the job's deadline this far from now.
    pub deadline_in: Option<std::time::Duration>,
    /// Count one more attempt at the provider.
    pub count_attempt: bool,
    /// Apply only if the job's user has no limit of their own (a claim that
    /// skips the gate because nothing else could hold it back).
    pub unless_user_limited: bool,
    /// An event recorded just before the status change's own, in the same
    /// statement: it happens only if the change does (the archive's copy).
    pub note: Option<Note>,
}

/// An entry of the job's timeline that is not a status change.
#[derive(Debug, Clone)]
pub struct Note {
    pub kind: EventKind,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl<'a> Transition<'a> {
    pub fn new(
        job_id: Uuid,
        from: &'a [JobStatus],
        to: JobStatus,
        message: impl Into<String>,
    ) -> Self {
        Self {
            job_id,
            from,
            to,
            message: message.into(),
            data: None,
            error: None,
            provider_result_url: None,
            video: None,
            provider_task_id: None,
            deadline_in: None,
            count_attempt: false,
            unless_user_limited: false,
            note: None,
        }
    }
}

/// How a transition moves the job's reserved credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// No money moves (e.g. queued → submitting).
    None,
    /// reserved → spent.
    Commit,
    /// reserved → available.
    Refund,
}

impl Settlement {
    /// The settlement that goes with a terminal status.
    pub fn for_status(to: JobStatus) -> Self {
        match to {
            JobStatus::Succeeded => Self::Commit,
            JobStatus::Failed | JobStatus::Canceled | JobStatus::Dead => Self::Refund,
            _ => Self::None,
        }
    }

    fn ledger_kind(self) -> Option<&'static str> {
        match self {
            Self::Commit => Some("commit"),
            Self::Refund => Some("refund"),
            Self::None => None,
        }
    }
}

#[derive(FromRow)]
struct JobWithOld {
    #[sqlx(flatten)]
    job: Job,
    old_status: JobStatus,
}

/// The statement of [`transition`], composed once with the settle step.
pub(crate) fn statement() -> &'static Named {
    static SQL: std::sync::OnceLock<Named> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let settle_ctes = credits::settle_ctes("j", ":settle::text", ":message");
        let status = EventKind::Status;
        let text = format!(
            "WITH old AS (
            SELECT id, status FROM jobs WHERE id = :job FOR UPDATE
        ), j AS (
            UPDATE jobs SET status = :to,
                   error_code = COALESCE(:error_code, error_code),
                   error_message = COALESCE(:error_message, error_message),
                   provider_result_url = COALESCE(:result_url, provider_result_url),
                   video_key = COALESCE(:video_key, video_key),
                   video_bytes = COALESCE(:video_bytes, video_bytes),
                   provider_task_id = COALESCE(:task_id, provider_task_id),
                   deadline_at = COALESCE(now() + make_interval(secs => :deadline_secs), deadline_at),
                   attempts = attempts + CASE WHEN :count_attempt THEN 1 ELSE 0 END,
                   poll_seq = CASE WHEN :to = 'running' THEN 0 ELSE poll_seq END,
                   running_at = CASE WHEN :to = 'running' THEN now() ELSE running_at END,
                   -- Leaving queued leaves the line, whoever moves the job.
                   waiting = waiting AND :to = 'queued',
                   updated_at = now()
              FROM old
             WHERE jobs.id = old.id AND old.status = ANY(:from)
               AND (NOT :unless_user_limited OR NOT EXISTS (
                    SELECT 1 FROM user_limits ul WHERE ul.user_id = jobs.user_id AND ul.max_active > 0))
            RETURNING jobs.*, old.status AS old_status
        ), {settle_ctes}, e AS (
            -- The note (if any), then the status change, in this order of ids.
            INSERT INTO job_events (job_id, kind, from_status, to_status, message, data)
            SELECT j.id, ev.kind, ev.from_status, ev.to_status, ev.message, ev.data
              FROM j CROSS JOIN LATERAL (VALUES
                   (1, :note_kind::text, NULL, NULL, :note_message, :note_data::jsonb),
                   (2, '{status}', j.old_status, :to, :message, :data)
                   ) AS ev (ord, kind, from_status, to_status, message, data)
             WHERE ev.kind IS NOT NULL
             ORDER BY ev.ord
        )
        SELECT {JOB_COLS}, old_status FROM j"
        );
        Named::new(
            &text,
            &[
                "job",
                "from",
                "to",
                "error_code",
                "error_message",
                "result_url",
                "task_id",
                "deadline_secs",
                "count_attempt",
                "unless_user_limited",
                "settle",
                "message",
                "data",
                "video_key",
                "video_bytes",
                "note_kind",
                "note_message",
                "note_data",
            ],
        )
    })
}

/// Applies `t` in one statement: the conditional status update, the job's
/// event and, for a terminal status, the commit or refund (account and
/// ledger). Returns the updated job and its previous status, or `None` when
/// the job was not in an expected status (a duplicate or stale message).
/// `executor` is the pool, or a transaction the change belongs to (a claim
/// under a provider's cap).
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(
        otel.name = %if t.to.is_terminal() { format!("settle {}", t.to) } else { format!("move to {}", t.to) },
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "transition",
        genq.job_id = %t.job_id,
        genq.status = %t.to,
    )
)]
pub async fn transition<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    t: &Transition<'_>,
) -> Result<Option<(Job, JobStatus)>> {
    let settle = Settlement::for_status(t.to);
    // Only a reserved job (an open one) can be settled, and a terminal job
    // never moves again; the statement enforces both, and so do we.
    debug_assert!(
        t.from.iter().all(|s| !s.is_terminal()),
        "a transition from a terminal status: {:?} -> {}",
        t.from,
        t.to
    );
    let mut from: Vec<&str> = t.from.iter().map(|s| s.as_str()).collect();
    if genq_core::bugs::on(genq_core::bugs::Switch::NoStatusCheck) {
        from = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
    }
    let deadline_secs = t.deadline_in.map(|d| d.as_secs_f64());
    let (error_code, error_message) = match &t.error {
        Some((code, msg)) => (Some(*code), Some(msg.as_str())),
        None => (None, None),
    };
    let row: Option<JobWithOld> = statement()
        .query()
        .bind("job", t.job_id)
        .bind("from", &from)
        .bind("to", t.to)
        .bind("error_code", error_code)
        .bind("error_message", error_message)
        .bind("result_url", t.provider_result_url)
        .bind("task_id", t.provider_task_id)
        .bind("deadline_secs", deadline_secs)
        .bind("count_attempt", t.count_attempt)
        .bind("unless_user_limited", t.unless_user_limited)
        .bind("settle", settle.ledger_kind())
        .bind("message", &t.message)
        .bind("data", &t.data)
        .bind("video_key", t.video.map(|(key, _)| key))
        .bind("video_bytes", t.video.map(|(_, bytes)| bytes))
        .bind("note_kind", t.note.as_ref().map(|n| n.kind.as_str()))
        .bind("note_message", t.note.as_ref().map(|n| n.message.as_str()))
        .bind("note_data", t.note.as_ref().and_then(|n| n.data.as_ref()))
        .done_as()
        .fetch_optional(executor)
        .await?;
    let Some(r) = row else { return Ok(None) };
    debug_assert!(
        settle == Settlement::None || !r.old_status.is_terminal(),
        "settled job {} from {} (never reserved, or settled before)",
        t.job_id,
        r.old_status
    );
    debug_assert!(r.job.cost >= 0, "job {} has a negative cost", t.job_id);
    // A slot at the provider freed: this process's dispatchers look again.
    if r.old_status.is_at_provider() && !t.to.is_at_provider() {
        super::gate::slot_freed();
    }
    // Counted here, where every terminal transition passes, whoever made it
    // (worker, API cancel, sweeper, operator).
    record_durations(&r.job, r.old_status, t.to);
    if t.to.is_terminal() {
        metrics::counter!("genq_jobs_finished_total", "status" => t.to.as_str()).increment(1);
        let cost = r.job.cost.max(0) as u64;
        match settle {
            Settlement::Commit => metrics::counter!("genq_credits_committed_total").increment(cost),
            Settlement::Refund => metrics::counter!("genq_credits_refunded_total").increment(cost),
            Settlement::None => {}
        }
    }
    Ok(Some((r.job, r.old_status)))
}

/// The durations a move completes, as histograms: the wait from acceptance
/// to the first claim (`genq_queue_wait_seconds`), the provider's time from
/// accepting the task to its end (`genq_provider_task_seconds{provider}`),
/// and the whole job (`genq_job_seconds{status}`). Labels are bounded: the
/// configured providers' names and the terminal statuses.
fn record_durations(job: &Job, from: JobStatus, to: JobStatus) {
    let since = |at: chrono::DateTime<chrono::Utc>| {
        (chrono::Utc::now() - at)
            .to_std()
            .unwrap_or_default()
            .as_secs_f64()
    };
    if from == JobStatus::Queued && to == JobStatus::Submitting && job.attempts == 1 {
        metrics::histogram!("genq_queue_wait_seconds").record(since(job.created_at));
    }
    if !to.is_terminal() {
        return;
    }
    if let (JobStatus::Running, Some(running_at)) = (from, job.running_at) {
        let provider = job.provider.clone().unwrap_or_else(|| "default".into());
        metrics::histogram!("genq_provider_task_seconds", "provider" => provider)
            .record(since(running_at));
    }
    metrics::histogram!("genq_job_seconds", "status" => to.as_str()).record(since(job.created_at));
}
