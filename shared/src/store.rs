//! The ledger and job store: every change of credits or job status, each as
//! one conditional statement so that repeats and races change nothing twice.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::domain::{JobStatus, LedgerKind, VideoRequest};

/// The actor recorded for changes genq makes on its own.
pub const SYSTEM_ACTOR: &str = "system";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether `e` is the violation of the named constraint or index.
pub fn is_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.constraint() == Some(constraint))
}

// ---------------------------------------------------------------- users ----

/// Who the bearer token says the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub external_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct User {
    pub id: Uuid,
    pub external_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// Finds or creates the caller's user; a new user gets `initial` credits as a
/// `grant`. Email and name follow the claims; `last_seen_at` is written at
/// most once a minute so that reads stay reads.
pub async fn ensure_user(pool: &PgPool, who: &Identity, initial: i64) -> Result<Uuid> {
    const UPSERT: &str = r#"
        WITH u AS (
            INSERT INTO users (external_id, email, name) VALUES ($1, $2, $3)
            ON CONFLICT (external_id) DO UPDATE
               SET email = EXCLUDED.email, name = EXCLUDED.name, last_seen_at = now()
             WHERE users.email IS DISTINCT FROM EXCLUDED.email
                OR users.name IS DISTINCT FROM EXCLUDED.name
                OR users.last_seen_at < now() - interval '1 minute'
            RETURNING id, (xmax = 0) AS created
        ), acct AS (
            INSERT INTO credit_accounts (user_id, available)
            SELECT id, $4 FROM u WHERE created
            RETURNING user_id
        ), grant_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, actor, reason)
            SELECT user_id, 'grant', $4, 'system', 'initial credits' FROM acct WHERE $4 > 0
        )
        SELECT id FROM u"#;
    // The upsert returns nothing when the row was already current; the row is
    // then read by a fresh statement, which sees a concurrent creator's commit.
    for _ in 0..3 {
        let created: Option<Uuid> = sqlx::query_scalar(UPSERT)
            .bind(&who.external_id)
            .bind(&who.email)
            .bind(&who.name)
            .bind(initial)
            .fetch_optional(pool)
            .await?;
        if let Some(id) = created {
            return Ok(id);
        }
        let existing: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM users WHERE external_id = $1")
                .bind(&who.external_id)
                .fetch_optional(pool)
                .await?;
        if let Some(id) = existing {
            return Ok(id);
        }
    }
    Err(StoreError::Conflict("user could not be created".into()))
}

pub async fn find_user_by_id(pool: &PgPool, id: Uuid) -> Result<Option<User>> {
    Ok(sqlx::query_as(
        "SELECT id, external_id, email, name, created_at, last_seen_at FROM users WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// A user named by an operator: by email, by external ID, or by internal ID.
#[derive(Debug, Clone)]
pub enum UserRef {
    Id(Uuid),
    ExternalId(String),
    Email(String),
}

impl UserRef {
    /// An ID as operators give it: genq's UUID, else the identity provider's `sub`.
    pub fn from_id(id: &str) -> Self {
        match Uuid::parse_str(id) {
            Ok(uuid) => Self::Id(uuid),
            Err(_) => Self::ExternalId(id.to_owned()),
        }
    }
}

/// Resolves an operator's reference; an email shared by several users is a conflict.
pub async fn find_user(pool: &PgPool, by: &UserRef) -> Result<Option<User>> {
    const COLS: &str = "SELECT id, external_id, email, name, created_at, last_seen_at FROM users";
    let rows: Vec<User> = match by {
        UserRef::Id(id) => {
            sqlx::query_as(&format!("{COLS} WHERE id = $1"))
                .bind(id)
                .fetch_all(pool)
                .await?
        }
        UserRef::ExternalId(ext) => {
            sqlx::query_as(&format!("{COLS} WHERE external_id = $1"))
                .bind(ext)
                .fetch_all(pool)
                .await?
        }
        UserRef::Email(email) => {
            sqlx::query_as(&format!("{COLS} WHERE lower(email) = lower($1) LIMIT 2"))
                .bind(email)
                .fetch_all(pool)
                .await?
        }
    };
    match rows.len() {
        0 => Ok(None),
        1 => Ok(rows.into_iter().next()),
        _ => Err(StoreError::Conflict(
            "several users have this email; name the user by ID".into(),
        )),
    }
}

// -------------------------------------------------------------- credits ----

#[derive(Debug, Clone, Copy, FromRow, Serialize)]
pub struct Account {
    pub available: i64,
    pub reserved: i64,
    pub spent: i64,
}

pub async fn account(pool: &PgPool, user_id: Uuid) -> Result<Account> {
    sqlx::query_as("SELECT available, reserved, spent FROM credit_accounts WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(pool)
        .await?
        .ok_or(StoreError::NotFound)
}

/// One entry of the credit ledger.
#[derive(Debug, Clone, FromRow, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: i64,
    pub user_id: Uuid,
    /// grant, purchase, reserve, commit, refund or adjust.
    pub kind: String,
    pub amount: i64,
    pub job_id: Option<Uuid>,
    pub reference: Option<String>,
    pub actor: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

const LEDGER_COLS: &str = "id, user_id, kind, amount, job_id, reference, actor, reason, created_at";

/// A page of the user's ledger, newest first, below the `before` ID, with
/// the cursor of the next page (`limit + 1` rows are read to know).
pub async fn ledger_entries(
    pool: &PgPool,
    user_id: Uuid,
    limit: i64,
    before: Option<i64>,
) -> Result<(Vec<LedgerEntry>, Option<i64>)> {
    let rows: Vec<LedgerEntry> = sqlx::query_as(&format!(
        "SELECT {LEDGER_COLS} FROM credit_ledger
          WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC LIMIT $3"
    ))
    .bind(user_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit, |e| e.id))
}

/// Cuts `limit + 1` rows to a page and the cursor of the row that ends it.
fn page<T, C>(mut rows: Vec<T>, limit: i64, cursor: impl Fn(&T) -> C) -> (Vec<T>, Option<C>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// An operator's grant or purchase.
#[derive(Debug, Clone)]
pub struct CreditGrant {
    pub user_id: Uuid,
    pub kind: LedgerKind,
    pub amount: i64,
    pub reason: String,
    pub reference: Option<String>,
    pub actor: String,
}

#[derive(Debug)]
pub enum GrantOutcome {
    Applied(LedgerEntry),
    /// The reference was applied before; nothing changed this time.
    AlreadyApplied(LedgerEntry),
}

/// Adds credits with a ledger entry and an audit row, in one statement; a
/// reference already in the ledger is not applied again.
pub async fn add_credits(pool: &PgPool, grant: &CreditGrant) -> Result<GrantOutcome> {
    debug_assert!(matches!(
        grant.kind,
        LedgerKind::Grant | LedgerKind::Purchase
    ));
    let applied: std::result::Result<Option<LedgerEntry>, sqlx::Error> = sqlx::query_as(&format!(
        "WITH l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, reference, actor, reason)
            VALUES ($1, $2, $3, $4, $5, $6)
            RETURNING {LEDGER_COLS}
        ), a AS (
            UPDATE credit_accounts c SET available = c.available + l.amount, updated_at = now()
              FROM l WHERE c.user_id = l.user_id
        ), au AS (
            INSERT INTO audit_log (actor, action, target_user_id, details)
            SELECT actor, 'credits.' || kind, user_id,
                   jsonb_build_object('amount', amount, 'reason', reason, 'reference', reference,
                                      'ledger_id', id)
              FROM l
        )
        SELECT * FROM l"
    ))
    .bind(grant.user_id)
    .bind(grant.kind.as_str())
    .bind(grant.amount)
    .bind(&grant.reference)
    .bind(&grant.actor)
    .bind(&grant.reason)
    .fetch_optional(pool)
    .await;
    match applied {
        Ok(Some(entry)) => Ok(GrantOutcome::Applied(entry)),
        Ok(None) => Err(StoreError::NotFound),
        Err(e) if is_violation(&e, "credit_ledger_reference_key") => {
            let entry: LedgerEntry = sqlx::query_as(&format!(
                "SELECT {LEDGER_COLS} FROM credit_ledger WHERE reference = $1"
            ))
            .bind(&grant.reference)
            .fetch_one(pool)
            .await?;
            if entry.user_id != grant.user_id {
                return Err(StoreError::Conflict(
                    "this reference was already applied to another user".into(),
                ));
            }
            Ok(GrantOutcome::AlreadyApplied(entry))
        }
        Err(e) if is_violation(&e, "credit_ledger_user_id_fkey") => Err(StoreError::NotFound),
        Err(e) => Err(e.into()),
    }
}

// ----------------------------------------------------------------- jobs ----

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: String,
    pub prompt: String,
    pub params: serde_json::Value,
    pub cost: i64,
    pub provider: Option<String>,
    pub provider_task_id: Option<String>,
    pub attempts: i32,
    pub poll_seq: i32,
    pub reservation: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub required_credits: Option<i64>,
    pub available_credits: Option<i64>,
    pub result_url: Option<String>,
    pub request_fingerprint: Option<String>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Job {
    pub fn status(&self) -> JobStatus {
        // The column's CHECK constraint admits only known statuses.
        JobStatus::parse(&self.status).unwrap_or(JobStatus::Dead)
    }
}

pub const JOB_COLS: &str = "id, user_id, status, prompt, params, cost, provider, provider_task_id, \
    attempts, poll_seq, reservation, error_code, error_message, required_credits, available_credits, \
    result_url, request_fingerprint, deadline_at, created_at, updated_at";

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct JobEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub message: Option<String>,
    pub data: Option<serde_json::Value>,
}

/// What the relay publishes for a job: the routing key and the JSON body.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub exchange: String,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// The Postgres channel the relay listens on for new outbox rows.
pub const OUTBOX_CHANNEL: &str = "genq_outbox";

#[derive(Debug)]
pub enum SubmitOutcome {
    /// Reserved and queued; `replayed` when an earlier request with the same
    /// idempotency key created it.
    Accepted { job: Job, replayed: bool },
    /// Not enough credits: recorded as a `rejected` job.
    Rejected {
        job: Job,
        required: i64,
        available: i64,
    },
    /// The idempotency key was used before with a different request.
    IdempotencyConflict,
}

pub struct NewSubmission<'a> {
    pub job_id: Uuid,
    pub user_id: Uuid,
    pub request: &'a VideoRequest,
    pub cost: i64,
    pub idempotency_key: Option<&'a str>,
    pub provider: &'a str,
    /// The start message, written to the outbox with the job.
    pub start: OutboxMessage,
}

async fn job_by_key(pool: &PgPool, user_id: Uuid, key: &str) -> Result<Option<Job>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 AND idempotency_key = $2"
    ))
    .bind(user_id)
    .bind(key)
    .fetch_optional(pool)
    .await?)
}

fn replay_or_conflict(job: Job, fingerprint: &str) -> SubmitOutcome {
    if job.request_fingerprint.as_deref() == Some(fingerprint) {
        SubmitOutcome::Accepted {
            job,
            replayed: true,
        }
    } else {
        SubmitOutcome::IdempotencyConflict
    }
}

/// Reserves the cost, inserts the job (`queued`), its reserve entry, its first
/// event and its outbox row, in one statement (the caller then wakes the
/// relays, see [`wake_relays`]); the account row's lock orders
/// concurrent submissions, and `available >= cost` is re-checked under it.
pub async fn submit(pool: &PgPool, new: &NewSubmission<'_>) -> Result<SubmitOutcome> {
    submit_attempt(pool, new, 3).await
}

async fn submit_attempt(
    pool: &PgPool,
    new: &NewSubmission<'_>,
    tries_left: u32,
) -> Result<SubmitOutcome> {
    let fingerprint = new.request.fingerprint();
    if let Some(key) = new.idempotency_key {
        if let Some(job) = job_by_key(pool, new.user_id, key).await? {
            return Ok(replay_or_conflict(job, &fingerprint));
        }
    }
    let params = serde_json::to_value(new.request.params()).expect("params serialize");
    let accepted: std::result::Result<Option<Job>, sqlx::Error> = sqlx::query_as(&format!(
        "WITH acct AS (
            UPDATE credit_accounts
               SET available = available - $3, reserved = reserved + $3, updated_at = now()
             WHERE user_id = $2 AND available >= $3
            RETURNING user_id
        ), j AS (
            INSERT INTO jobs (id, user_id, status, prompt, params, cost, provider,
                              idempotency_key, request_fingerprint)
            SELECT $1, user_id, 'queued', $4, $5, $3, $6, $7, $8 FROM acct
            RETURNING {JOB_COLS}
        ), l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
            SELECT user_id, 'reserve', cost, id, reservation, 'system', 'video requested' FROM j
        ), e AS (
            INSERT INTO job_events (job_id, kind, to_status, message, data)
            SELECT id, 'status', 'queued', 'Accepted; ' || cost || ' credits reserved.',
                   jsonb_build_object('cost', cost) FROM j
        ), o AS (
            INSERT INTO outbox (job_id, exchange, routing_key, payload)
            SELECT id, $9, $10, $11 FROM j
        )
        SELECT * FROM j"
    ))
    .bind(new.job_id)
    .bind(new.user_id)
    .bind(new.cost)
    .bind(new.request.prompt.as_str())
    .bind(&params)
    .bind(new.provider)
    .bind(new.idempotency_key)
    .bind(&fingerprint)
    .bind(&new.start.exchange)
    .bind(&new.start.routing_key)
    .bind(&new.start.payload)
    .fetch_optional(pool)
    .await;

    match accepted {
        Ok(Some(job)) => Ok(SubmitOutcome::Accepted {
            job,
            replayed: false,
        }),
        Ok(None) => reject(pool, new, &params, &fingerprint, tries_left).await,
        // A concurrent request with the same key won; answer with its job.
        Err(e) if is_violation(&e, "jobs_user_idempotency_key") => {
            let key = new.idempotency_key.unwrap_or_default();
            let job = job_by_key(pool, new.user_id, key)
                .await?
                .ok_or(StoreError::Conflict("idempotent request vanished".into()))?;
            Ok(replay_or_conflict(job, &fingerprint))
        }
        Err(e) => Err(e.into()),
    }
}

/// Records a refused submission. The balance is read under the account lock
/// and checked again, so a 402 always reflects a real shortfall at that moment.
async fn reject(
    pool: &PgPool,
    new: &NewSubmission<'_>,
    params: &serde_json::Value,
    fingerprint: &str,
    tries_left: u32,
) -> Result<SubmitOutcome> {
    let mut tx = pool.begin().await?;
    let available: i64 =
        sqlx::query_scalar("SELECT available FROM credit_accounts WHERE user_id = $1 FOR UPDATE")
            .bind(new.user_id)
            .fetch_one(&mut *tx)
            .await?;
    // A concurrent request with the same key may have won the account lock
    // and spent the credits: this request is its replay, not a refusal.
    if let Some(key) = new.idempotency_key {
        let existing: Option<Job> = sqlx::query_as(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 AND idempotency_key = $2"
        ))
        .bind(new.user_id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = existing {
            tx.rollback().await?;
            return Ok(replay_or_conflict(job, fingerprint));
        }
    }
    if available >= new.cost {
        // Credits arrived between the two statements: try again, a few times.
        tx.rollback().await?;
        if tries_left == 0 {
            return Err(StoreError::Conflict(
                "the balance kept changing; try again".into(),
            ));
        }
        return Box::pin(submit_attempt(pool, new, tries_left - 1)).await;
    }
    let message = format!(
        "A video needs {} credits; you have {}.",
        new.cost, available
    );
    let job: Job = sqlx::query_as(&format!(
        "INSERT INTO jobs (id, user_id, status, prompt, params, cost, provider, request_fingerprint,
                           error_code, error_message, required_credits, available_credits)
         VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7, 'insufficient_credits', $8, $5, $9)
         RETURNING {JOB_COLS}"
    ))
    .bind(new.job_id)
    .bind(new.user_id)
    .bind(new.request.prompt.as_str())
    .bind(params)
    .bind(new.cost)
    .bind(new.provider)
    .bind(fingerprint)
    .bind(&message)
    .bind(available)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO job_events (job_id, kind, to_status, message, data)
         VALUES ($1, 'status', 'rejected', $2, jsonb_build_object('required', $3::bigint, 'available', $4::bigint))",
    )
    .bind(job.id)
    .bind(&message)
    .bind(new.cost)
    .bind(available)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(SubmitOutcome::Rejected {
        job,
        required: new.cost,
        available,
    })
}

pub async fn get_job(pool: &PgPool, id: Uuid) -> Result<Option<Job>> {
    Ok(
        sqlx::query_as(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

pub async fn job_events(pool: &PgPool, job_id: Uuid) -> Result<Vec<JobEvent>> {
    Ok(sqlx::query_as(
        "SELECT id, at, kind, from_status, to_status, message, data
           FROM job_events WHERE job_id = $1 ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?)
}

/// Position in a newest-first job listing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl JobCursor {
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        )
    }

    pub fn decode(raw: &str) -> Option<Self> {
        let (micros, id) = raw.split_once('_')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// The user's jobs newest first; `limit + 1` rows are read to know whether
/// there is a next page.
pub async fn list_jobs(
    pool: &PgPool,
    user_id: Uuid,
    limit: i64,
    cursor: Option<JobCursor>,
    status: Option<JobStatus>,
) -> Result<(Vec<Job>, Option<JobCursor>)> {
    let rows: Vec<Job> = sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs
          WHERE user_id = $1
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
            AND ($4::text IS NULL OR status = $4)
          ORDER BY created_at DESC, id DESC
          LIMIT $5"
    ))
    .bind(user_id)
    .bind(cursor.map(|c| c.created_at))
    .bind(cursor.map(|c| c.id))
    .bind(status.map(JobStatus::as_str))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit, |j| JobCursor {
        created_at: j.created_at,
        id: j.id,
    }))
}

// ---------------------------------------------------------- transitions ----

/// A change of a job's status, applied only when the job is in one of `from`.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub job_id: Uuid,
    pub from: &'a [JobStatus],
    pub to: JobStatus,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub error: Option<(&'a str, String)>,
    pub result_url: Option<&'a str>,
    pub provider_task_id: Option<&'a str>,
    /// Set the job's deadline this far from now.
    pub deadline_in: Option<std::time::Duration>,
    /// Count one more attempt at the provider.
    pub count_attempt: bool,
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
            result_url: None,
            provider_task_id: None,
            deadline_in: None,
            count_attempt: false,
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
}

/// Applies `t` in one statement: the conditional status update, the job's
/// event and, for a terminal status, the commit or refund (account and
/// ledger). Returns the updated job and its previous status, or `None` when
/// the job was not in an expected status (a duplicate or stale message).
pub async fn transition(pool: &PgPool, t: &Transition<'_>) -> Result<Option<(Job, JobStatus)>> {
    let settle = Settlement::for_status(t.to);
    let from: Vec<&str> = t.from.iter().map(|s| s.as_str()).collect();
    let deadline_secs = t.deadline_in.map(|d| d.as_secs_f64());
    let (error_code, error_message) = match &t.error {
        Some((code, msg)) => (Some(*code), Some(msg.as_str())),
        None => (None, None),
    };
    let ledger_kind = match settle {
        Settlement::Commit => Some("commit"),
        Settlement::Refund => Some("refund"),
        Settlement::None => None,
    };
    let row: Option<JobWithOld> = sqlx::query_as(&format!(
        "WITH old AS (
            SELECT id, status FROM jobs WHERE id = $1 FOR UPDATE
        ), j AS (
            UPDATE jobs SET status = $3,
                   error_code = COALESCE($4, error_code),
                   error_message = COALESCE($5, error_message),
                   result_url = COALESCE($6, result_url),
                   provider_task_id = COALESCE($7, provider_task_id),
                   deadline_at = COALESCE(now() + make_interval(secs => $8), deadline_at),
                   attempts = attempts + CASE WHEN $9 THEN 1 ELSE 0 END,
                   poll_seq = CASE WHEN $3 = 'running' THEN 0 ELSE poll_seq END,
                   updated_at = now()
              FROM old
             WHERE jobs.id = old.id AND old.status = ANY($2)
            RETURNING jobs.*, old.status AS old_status
        ), a AS (
            UPDATE credit_accounts c
               SET reserved = c.reserved - j.cost,
                   available = c.available + CASE WHEN $10 = 'refund' THEN j.cost ELSE 0 END,
                   spent = c.spent + CASE WHEN $10 = 'commit' THEN j.cost ELSE 0 END,
                   updated_at = now()
              FROM j WHERE $10 IS NOT NULL AND c.user_id = j.user_id
        ), l AS (
            INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
            SELECT user_id, $10, cost, id, reservation, 'system', $11 FROM j WHERE $10 IS NOT NULL
        ), e AS (
            INSERT INTO job_events (job_id, kind, from_status, to_status, message, data)
            SELECT id, 'status', old_status, $3, $11, $12 FROM j
        )
        SELECT {JOB_COLS}, old_status FROM j"
    ))
    .bind(t.job_id)
    .bind(&from)
    .bind(t.to.as_str())
    .bind(error_code)
    .bind(error_message)
    .bind(t.result_url)
    .bind(t.provider_task_id)
    .bind(deadline_secs)
    .bind(t.count_attempt)
    .bind(ledger_kind)
    .bind(&t.message)
    .bind(&t.data)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    // Counted here, where every terminal transition passes, whoever made it
    // (worker, API cancel, sweeper, operator).
    if t.to.is_terminal() {
        metrics::counter!("genq_jobs_finished_total", "status" => t.to.as_str()).increment(1);
        let cost = r.job.cost.max(0) as u64;
        match settle {
            Settlement::Commit => metrics::counter!("genq_credits_committed_total").increment(cost),
            Settlement::Refund => metrics::counter!("genq_credits_refunded_total").increment(cost),
            Settlement::None => {}
        }
    }
    let old = JobStatus::parse(&r.old_status).unwrap_or(JobStatus::Dead);
    Ok(Some((r.job, old)))
}

#[derive(FromRow)]
struct JobWithOld {
    #[sqlx(flatten)]
    job: Job,
    old_status: String,
}

/// Appends an event to the job's timeline without changing its status.
pub async fn record_event(
    pool: &PgPool,
    job_id: Uuid,
    kind: &str,
    message: &str,
    data: Option<serde_json::Value>,
) -> Result<()> {
    sqlx::query("INSERT INTO job_events (job_id, kind, message, data) VALUES ($1, $2, $3, $4)")
        .bind(job_id)
        .bind(kind)
        .bind(message)
        .bind(data)
        .execute(pool)
        .await?;
    Ok(())
}

#[derive(Debug)]
pub enum CancelOutcome {
    Canceled(Job),
    /// The job is already in a state that can't be canceled.
    NotCancelable(Job),
    NotFound,
}

/// Cancels the caller's `queued`, `submitting` or `running` job and refunds
/// it at once; a running job's provider task is canceled by the next poll.
pub async fn cancel_job(
    pool: &PgPool,
    user_id: Uuid,
    job_id: Uuid,
    actor: &str,
) -> Result<CancelOutcome> {
    let Some(job) = get_job(pool, job_id).await? else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.user_id != user_id {
        return Ok(CancelOutcome::NotFound);
    }
    let from = [JobStatus::Queued, JobStatus::Submitting, JobStatus::Running];
    let mut t = Transition::new(
        job_id,
        &from,
        JobStatus::Canceled,
        format!("Canceled by {actor}; credits refunded."),
    );
    t.error = Some(("canceled", "The job was canceled.".into()));
    match transition(pool, &t).await? {
        Some((job, _)) => Ok(CancelOutcome::Canceled(job)),
        None => {
            let job = get_job(pool, job_id).await?.ok_or(StoreError::NotFound)?;
            Ok(CancelOutcome::NotCancelable(job))
        }
    }
}

/// Records that the provider task of a canceled job was canceled; true only
/// for the first caller, so the provider is asked once.
pub async fn mark_provider_canceled(pool: &PgPool, job_id: Uuid) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET provider_canceled_at = now()
          WHERE id = $1 AND provider_canceled_at IS NULL AND provider_task_id IS NOT NULL",
    )
    .bind(job_id)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Advances the poll sequence of a running job: true when `seq` is current,
/// false for a stale or duplicated poll message, which is then dropped.
pub async fn advance_poll(pool: &PgPool, job_id: Uuid, seq: i32) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE jobs SET poll_seq = poll_seq + 1, polled_at = now()
          WHERE id = $1 AND status = 'running' AND poll_seq = $2",
    )
    .bind(job_id)
    .bind(seq)
    .execute(pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Writes a message to the outbox; the caller rings the relay's doorbell.
pub async fn enqueue(
    pool: &PgPool,
    job_id: Uuid,
    exchange: &str,
    routing_key: &str,
    payload: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO outbox (job_id, exchange, routing_key, payload) VALUES ($1, $2, $3, $4)",
    )
    .bind(job_id)
    .bind(exchange)
    .bind(routing_key)
    .bind(payload)
    .execute(pool)
    .await?;
    Ok(())
}

/// Wakes the outbox relays (`NOTIFY`). Sent in its own transaction, after
/// the commit: a NOTIFY inside the submit transaction would hold Postgres'
/// global notify lock across the commit's WAL flush and serialize every
/// submission (about 300/s here).
pub async fn wake_relays(pool: &PgPool) -> Result<()> {
    sqlx::query(&format!("SELECT pg_notify('{OUTBOX_CHANNEL}', '')"))
        .execute(pool)
        .await?;
    Ok(())
}
