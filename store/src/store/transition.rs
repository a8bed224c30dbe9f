//! A job's change of status: applied only from the expected statuses, with
//! its timeline event (and a note before it) and, for a terminal status,
//! its commit or refund, all in one statement.

use sqlx::FromRow;
use uuid::Uuid;

use super::credits;
use super::jobs::{Job, JOB_COLS};
use super::named::Named;
use super::Result;
use super::SYSTEM_ACTOR;
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

/// What a move writes, whichever statement makes it: the `SET` list of the
/// job's update, the guard of a claim that skips the gate, and the rows of
/// the job's events (the note, then the status change, over the CTE `j`).
struct MoveSql {
    set: String,
    guard: String,
    events: String,
}

/// [`MoveSql`] over the values `value` names: the one-job statement's
/// parameters (`:to`), or a batch's columns (`b_to`).
fn move_sql(v: impl Fn(&str) -> String) -> MoveSql {
    let to = v("to");
    let status = EventKind::Status;
    MoveSql {
        set: format!(
            "status = {to},
                   error_code = COALESCE({error_code}, error_code),
                   error_message = COALESCE({error_message}, error_message),
                   provider_result_url = COALESCE({result_url}, provider_result_url),
                   video_key = COALESCE({video_key}, video_key),
                   video_bytes = COALESCE({video_bytes}, video_bytes),
                   provider_task_id = COALESCE({task_id}, provider_task_id),
                   deadline_at = COALESCE(now() + make_interval(secs => {deadline_secs}), deadline_at),
                   attempts = attempts + CASE WHEN {count_attempt} THEN 1 ELSE 0 END,
                   poll_seq = CASE WHEN {to} = 'running' THEN 0 ELSE poll_seq END,
                   running_at = CASE WHEN {to} = 'running' THEN now() ELSE running_at END,
                   -- Leaving queued leaves the line, whoever moves the job.
                   waiting = waiting AND {to} = 'queued',
                   updated_at = now()",
            error_code = v("error_code"),
            error_message = v("error_message"),
            result_url = v("result_url"),
            video_key = v("video_key"),
            video_bytes = v("video_bytes"),
            task_id = v("task_id"),
            deadline_secs = v("deadline_secs"),
            count_attempt = v("count_attempt"),
        ),
        guard: format!(
            "(NOT {} OR NOT EXISTS (
                    SELECT 1 FROM user_limits ul WHERE ul.user_id = jobs.user_id AND ul.max_active > 0))",
            v("unless_user_limited")
        ),
        events: format!(
            "(1, {note_kind}::text, NULL, NULL, {note_message}, {note_data}::jsonb),
                   (2, '{status}', j.old_status, {to}, {message}, {data})",
            note_kind = v("note_kind"),
            note_message = v("note_message"),
            note_data = v("note_data"),
            message = v("message"),
            data = v("data"),
        ),
    }
}

/// The statement of [`transition`], composed once with the settle step.
pub(crate) fn statement() -> &'static Named {
    static SQL: std::sync::OnceLock<Named> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let settle_ctes = credits::settle_ctes("j", ":settle::text", ":message");
        let MoveSql { set, guard, events } = move_sql(|name| format!(":{name}"));
        let text = format!(
            "WITH old AS (
            SELECT id, status FROM jobs WHERE id = :job FOR UPDATE
        ), j AS (
            UPDATE jobs SET {set}
              FROM old
             WHERE jobs.id = old.id AND old.status = ANY(:from) AND {guard}
            RETURNING jobs.*, old.status AS old_status
        ), {settle_ctes}, e AS (
            -- The note (if any), then the status change, in this order of ids.
            INSERT INTO job_events (job_id, kind, from_status, to_status, message, data)
            SELECT j.id, ev.kind, ev.from_status, ev.to_status, ev.message, ev.data
              FROM j CROSS JOIN LATERAL (VALUES {events}) AS ev (ord, kind, from_status, to_status, message, data)
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
    moved(&r.job, r.old_status, t.to, settle);
    Ok(Some((r.job, r.old_status)))
}

/// What follows a move that happened, whichever statement made it: the
/// checks of its invariants, the gate's wake-up and the metrics.
fn moved(job: &Job, old_status: JobStatus, to: JobStatus, settle: Settlement) {
    debug_assert!(
        settle == Settlement::None || !old_status.is_terminal(),
        "settled job {} from {} (never reserved, or settled before)",
        job.id,
        old_status
    );
    debug_assert!(job.cost >= 0, "job {} has a negative cost", job.id);
    // A slot at the provider freed: this process's dispatchers look again.
    if old_status.is_at_provider() && !to.is_at_provider() {
        super::gate::slot_freed();
    }
    // Counted here, where every terminal transition passes, whoever made it
    // (worker, API cancel, sweeper, operator).
    record_durations(job, old_status, to);
    if to.is_terminal() {
        metrics::counter!("genq_jobs_finished_total", "status" => to.as_str()).increment(1);
        let cost = job.cost.max(0) as u64;
        match settle {
            Settlement::Commit => metrics::counter!("genq_credits_committed_total").increment(cost),
            Settlement::Refund => metrics::counter!("genq_credits_refunded_total").increment(cost),
            Settlement::None => {}
        }
    }
}

/// Whether `t` may share a statement with others ([`transition_batch`]):
/// it moves no money, or commits. A refund gives credits back to the lots
/// they came from, which only the one-job statement does.
pub fn batchable(t: &Transition<'_>) -> bool {
    Settlement::for_status(t.to) != Settlement::Refund
}

/// The most transitions one batch statement takes.
pub const MAX_BATCH: usize = 256;

#[derive(FromRow)]
struct BatchRow {
    #[sqlx(flatten)]
    job: Job,
    old_status: JobStatus,
    ord: i64,
}

/// The statement of [`transition_batch`]: [`statement`]'s steps over many
/// jobs, one row of parallel arrays each. Jobs are locked in id order and
/// accounts in user order, so two batches never wait on each other in a
/// cycle; each job keeps its own status guard; the commits of one user's
/// jobs move its account once, by their sum, with a ledger entry each (the
/// one-settlement-per-reservation index holds per job).
pub(crate) fn batch_statement() -> &'static Named {
    static SQL: std::sync::OnceLock<Named> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let MoveSql { set, guard, events } = move_sql(|name| format!("b_{name}"));
        let text = format!(
            "WITH b AS (
            SELECT * FROM unnest(:jobs::uuid[], :froms::text[], :tos::text[], :error_codes::text[],
                   :error_messages::text[], :result_urls::text[], :task_ids::text[],
                   :deadline_secs::float8[], :count_attempts::bool[], :unless_user_limited::bool[],
                   :settles::text[], :messages::text[], :datas::jsonb[], :video_keys::text[],
                   :video_bytes::int8[], :note_kinds::text[], :note_messages::text[], :note_datas::jsonb[])
                   WITH ORDINALITY AS b (b_job, b_from, b_to, b_error_code, b_error_message, b_result_url,
                   b_task_id, b_deadline_secs, b_count_attempt, b_unless_user_limited, b_settle,
                   b_message, b_data, b_video_key, b_video_bytes, b_note_kind, b_note_message,
                   b_note_data, b_ord)
        ), old AS (
            SELECT jobs.id, jobs.status FROM jobs JOIN b ON jobs.id = b.b_job
             ORDER BY jobs.id FOR UPDATE OF jobs
        ), j AS (
            UPDATE jobs SET {set}
              FROM old, b
             WHERE jobs.id = old.id AND b.b_job = old.id
               AND old.status = ANY(string_to_array(b_from, ',')) AND {guard}
            RETURNING jobs.*, old.status AS old_status, b.*
        ), owed AS (
            SELECT user_id, sum(cost)::bigint AS cost FROM j WHERE b_settle = 'commit' GROUP BY user_id
        ), acct_lock AS (
            SELECT c.user_id FROM credit_accounts c JOIN owed o ON o.user_id = c.user_id
             ORDER BY c.user_id FOR UPDATE OF c
        ), settle_acct AS (
            UPDATE credit_accounts c
               SET reserved = c.reserved - o.cost, spent = c.spent + o.cost, updated_at = now()
              FROM owed o JOIN acct_lock l ON l.user_id = o.user_id
             WHERE c.user_id = o.user_id
        ), settle_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
            SELECT user_id, 'commit', cost, id, reservation, '{SYSTEM_ACTOR}', b_message
              FROM j WHERE b_settle = 'commit' ORDER BY b_ord
        ), e AS (
            -- Per job, the note (if any), then the status change.
            INSERT INTO job_events (job_id, kind, from_status, to_status, message, data)
            SELECT j.id, ev.kind, ev.from_status, ev.to_status, ev.message, ev.data
              FROM j CROSS JOIN LATERAL (VALUES {events}) AS ev (ord, kind, from_status, to_status, message, data)
             WHERE ev.kind IS NOT NULL
             ORDER BY j.b_ord, ev.ord
        )
        SELECT {JOB_COLS}, old_status, b_ord AS ord FROM j"
        );
        Named::new(
            &text,
            &[
                "jobs",
                "froms",
                "tos",
                "error_codes",
                "error_messages",
                "result_urls",
                "task_ids",
                "deadline_secs",
                "count_attempts",
                "unless_user_limited",
                "settles",
                "messages",
                "datas",
                "video_keys",
                "video_bytes",
                "note_kinds",
                "note_messages",
                "note_datas",
            ],
        )
    })
}

/// Applies every transition of `batch` in one statement, as [`transition`]
/// applies one: the answer at each index is that transition's (`None`: its
/// job was not in an expected status). Each job at most once per batch, and
/// only [`batchable`] transitions, at most [`MAX_BATCH`].
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(
        otel.name = "settle batch",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "transition_batch",
        genq.batch_size = batch.len(),
    )
)]
pub async fn transition_batch<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    batch: &[Transition<'_>],
) -> Result<Vec<Option<(Job, JobStatus)>>> {
    assert!(
        batch.len() <= MAX_BATCH,
        "a batch of {} transitions",
        batch.len()
    );
    debug_assert!(batch.iter().all(batchable), "a refund in a batch");
    debug_assert!(
        {
            let mut ids: Vec<Uuid> = batch.iter().map(|t| t.job_id).collect();
            ids.sort();
            ids.windows(2).all(|w| w[0] != w[1])
        },
        "a job twice in one batch"
    );
    // The simulator's known bug: every status allowed.
    let all = genq_core::bugs::on(genq_core::bugs::Switch::NoStatusCheck)
        .then(|| JobStatus::ALL.map(|s| s.as_str()).join(","));
    let mut c = BatchColumns::default();
    for t in batch {
        debug_assert!(t.from.iter().all(|s| !s.is_terminal()));
        c.jobs.push(t.job_id);
        c.froms.push(if let Some(all) = &all {
            all.clone()
        } else {
            t.from
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        });
        c.tos.push(t.to.as_str());
        c.error_codes.push(t.error.as_ref().map(|(code, _)| *code));
        c.error_messages
            .push(t.error.as_ref().map(|(_, m)| m.as_str()));
        c.result_urls.push(t.provider_result_url);
        c.task_ids.push(t.provider_task_id);
        c.deadline_secs.push(t.deadline_in.map(|d| d.as_secs_f64()));
        c.count_attempts.push(t.count_attempt);
        c.unless_user_limited.push(t.unless_user_limited);
        c.settles.push(Settlement::for_status(t.to).ledger_kind());
        c.messages.push(t.message.as_str());
        c.datas.push(t.data.clone());
        c.video_keys.push(t.video.map(|(key, _)| key));
        c.video_bytes.push(t.video.map(|(_, bytes)| bytes));
        c.note_kinds.push(t.note.as_ref().map(|n| n.kind.as_str()));
        c.note_messages
            .push(t.note.as_ref().map(|n| n.message.as_str()));
        c.note_datas
            .push(t.note.as_ref().and_then(|n| n.data.clone()));
    }
    let rows: Vec<BatchRow> = batch_statement()
        .query()
        .bind("jobs", c.jobs)
        .bind("froms", c.froms)
        .bind("tos", c.tos)
        .bind("error_codes", c.error_codes)
        .bind("error_messages", c.error_messages)
        .bind("result_urls", c.result_urls)
        .bind("task_ids", c.task_ids)
        .bind("deadline_secs", c.deadline_secs)
        .bind("count_attempts", c.count_attempts)
        .bind("unless_user_limited", c.unless_user_limited)
        .bind("settles", c.settles)
        .bind("messages", c.messages)
        .bind("datas", c.datas)
        .bind("video_keys", c.video_keys)
        .bind("video_bytes", c.video_bytes)
        .bind("note_kinds", c.note_kinds)
        .bind("note_messages", c.note_messages)
        .bind("note_datas", c.note_datas)
        .done_as()
        .fetch_all(executor)
        .await?;
    let mut out: Vec<Option<(Job, JobStatus)>> = batch.iter().map(|_| None).collect();
    for r in rows {
        // WITH ORDINALITY counts from 1.
        let i = (r.ord - 1) as usize;
        let t = &batch[i];
        moved(&r.job, r.old_status, t.to, Settlement::for_status(t.to));
        out[i] = Some((r.job, r.old_status));
    }
    Ok(out)
}

/// The batch statement's parameters, one array each, a row per transition.
#[derive(Default)]
struct BatchColumns<'a> {
    jobs: Vec<Uuid>,
    froms: Vec<String>,
    tos: Vec<&'a str>,
    error_codes: Vec<Option<&'a str>>,
    error_messages: Vec<Option<&'a str>>,
    result_urls: Vec<Option<&'a str>>,
    task_ids: Vec<Option<&'a str>>,
    deadline_secs: Vec<Option<f64>>,
    count_attempts: Vec<bool>,
    unless_user_limited: Vec<bool>,
    settles: Vec<Option<&'static str>>,
    messages: Vec<&'a str>,
    datas: Vec<Option<serde_json::Value>>,
    video_keys: Vec<Option<&'a str>>,
    video_bytes: Vec<Option<i64>>,
    note_kinds: Vec<Option<&'static str>>,
    note_messages: Vec<Option<&'a str>>,
    note_datas: Vec<Option<serde_json::Value>>,
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
