//! Jobs: submit (rate allowance, reserve, job, event and outbox row in one
//! statement), the record of a refused submission, reads and listings,
//! cancel, the poll sequence, and the queries the sweeper runs over open jobs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, Row};
use uuid::Uuid;

use genq_core::trace::TraceParent;

use super::credits::{self, Reserve};
use super::named::Named;
use super::outbox::{self, JOB_HAS_UNPUBLISHED};
use super::rate;
use super::{is_violation, page, Result, StoreError, SYSTEM_ACTOR};
use genq_core::domain::{EventKind, JobParams, JobStatus, Priority, VideoRequest};
use genq_core::messages::{StartMessage, WorkMessage};

#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: JobStatus,
    pub prompt: String,
    pub params: Json<JobParams>,
    pub cost: i64,
    /// The configured provider the job runs on (a model's name, or `provider.name`).
    pub provider: Option<String>,
    /// The model the submission named; `None` for the default provider.
    pub model: Option<String>,
    pub provider_task_id: Option<String>,
    pub attempts: i32,
    pub poll_seq: i32,
    pub reservation: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub required_credits: Option<i64>,
    pub available_credits: Option<i64>,
    /// The provider's own link to the video (it expires); for operators.
    pub provider_result_url: Option<String>,
    /// Where genq keeps its copy of the video, once archived.
    pub video_key: Option<String>,
    pub video_bytes: Option<i64>,
    /// What the provider last said about the task while it worked.
    pub provider_state: Option<String>,
    pub request_fingerprint: Option<String>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub priority: Priority,
    /// In a line for a slot (its provider's cap or its user's limit).
    pub waiting: bool,
    /// When the provider last called back about the task (verified).
    #[serde(skip)]
    pub callback_at: Option<DateTime<Utc>>,
    /// When the provider accepted the task (the job's last move to running).
    #[serde(skip)]
    pub running_at: Option<DateTime<Utc>>,
    /// The W3C trace context of the submitting request: every message about
    /// the job carries it (see `genq_core::trace`); `None` with traces off.
    #[serde(skip)]
    pub traceparent: Option<String>,
    #[serde(skip)]
    pub tracestate: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub const JOB_COLS: &str = "id, user_id, status, prompt, params, cost, provider, model, provider_task_id, \
    attempts, poll_seq, reservation, error_code, error_message, required_credits, available_credits, \
    provider_result_url, video_key, video_bytes, provider_state, request_fingerprint, deadline_at, priority, waiting, \
    callback_at, running_at, traceparent, tracestate, created_at, updated_at";

impl Job {
    /// The job's trace ID, when it was submitted with traces on.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .and_then(genq_core::trace::trace_id_of)
    }
}

#[derive(Debug)]
pub enum SubmitOutcome {
    /// Reserved and queued; `replayed` when an earlier request with the same
    /// idempotency key created it.
    Accepted { job: Job, replayed: bool },
    /// The user owes credits (a reversed payment already spent): recorded
    /// as a `rejected` job.
    Owed { job: Job, owed: i64 },
    /// Not enough credits: recorded as a `rejected` job.
    Rejected {
        job: Job,
        required: i64,
        available: i64,
    },
    /// The idempotency key was used before with a different request.
    IdempotencyConflict,
    /// The user's submission allowance is spent (nothing was recorded);
    /// one more fits after `retry_after`.
    RateLimited { retry_after: Duration },
}

#[derive(Clone, Copy)]
pub struct NewSubmission<'a> {
    pub job_id: Uuid,
    pub user_id: Uuid,
    pub request: &'a VideoRequest,
    pub cost: i64,
    pub idempotency_key: Option<&'a str>,
    /// The configured provider the job runs on; `request.model` names the model.
    pub provider: &'a str,
    /// The user's submission allowance, taken in the submitting statement
    /// (`api.rate_limit = "postgres"`); `None` when not limited here. A
    /// replay of an idempotency key takes none.
    pub allowance: Option<rate::Allowance>,
    /// The trace the submission is part of, kept with the job.
    pub trace: Option<&'a TraceParent>,
}

async fn job_by_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user_id: Uuid,
    key: &str,
) -> Result<Option<Job>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE user_id = $1 AND idempotency_key = $2"
    ))
    .bind(user_id)
    .bind(key)
    .fetch_optional(executor)
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

/// Takes the user's rate allowance (when `new.allowance` is set), reserves
/// the cost, inserts the job (`queued`), its reserve entry, its first event
/// and its start message in the outbox, in one statement (the caller then
/// rings the relays' doorbell); the account row's lock orders concurrent
/// submissions, and `available >= cost` is re-checked under it.
pub async fn submit(pool: &PgPool, new: &NewSubmission<'_>) -> Result<SubmitOutcome> {
    debug_assert!(new.cost >= 0, "a negative cost: {}", new.cost);
    submit_attempt(pool, new, 3).await
}

async fn submit_attempt(
    pool: &PgPool,
    new: &NewSubmission<'_>,
    tries_left: u32,
) -> Result<SubmitOutcome> {
    let fingerprint = new.request.fingerprint();
    let raced = genq_core::bugs::take(genq_core::bugs::Switch::StaleKeyLookup);
    if let Some(key) = new.idempotency_key.filter(|_| !raced) {
        if let Some(job) = job_by_key(pool, new.user_id, key).await? {
            return Ok(replay_or_conflict(job, &fingerprint));
        }
    }
    let params = Json(new.request.params());
    let accepted = try_accept(pool, new, &params, &fingerprint).await;

    match accepted {
        Ok(Accept::Queued(job)) => Ok(SubmitOutcome::Accepted {
            job: *job,
            replayed: false,
        }),
        Ok(Accept::RateLimited) => {
            let allowance = new.allowance.expect("only a limited submission is refused");
            let retry_after = rate::wait_after_refusal(pool, new.user_id, allowance).await?;
            Ok(SubmitOutcome::RateLimited { retry_after })
        }
        // The allowance (if any) was taken with the statement: a retry
        // after a shortfall doesn't take it again.
        Ok(Accept::CannotPay) => {
            let new = NewSubmission {
                allowance: None,
                ..*new
            };
            reject(pool, &new, &params, &fingerprint, tries_left).await
        }
        // A lot was added after the statement began, so the lots it saw did
        // not cover what the account allowed: nothing changed; again.
        Err(e) if is_violation(&e, super::lots::NOT_COVERED) && tries_left > 0 => {
            Box::pin(submit_attempt(pool, new, tries_left - 1)).await
        }
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

/// What the accepting statement did.
enum Accept {
    /// Reserved and queued.
    Queued(Box<Job>),
    /// The user's allowance was spent; nothing changed.
    RateLimited,
    /// The allowance (if any) was taken, but the account can't pay.
    CannotPay,
}

/// The accepting statement: takes the submission from the user's allowance
/// (when `new.allowance` is set), reserves the cost, and inserts the job
/// (`queued`), its reserve entry, its first event and its start message in
/// the outbox. One statement, so a refused allowance changes nothing and a
/// taken one is kept with the submission's outcome.
async fn try_accept(
    pool: &PgPool,
    new: &NewSubmission<'_>,
    params: &Json<JobParams>,
    fingerprint: &str,
) -> std::result::Result<Accept, sqlx::Error> {
    let start = WorkMessage::from(StartMessage::first(new.job_id));
    let row = accept_statement()
        .query()
        .bind("job", new.job_id)
        .bind("user", new.user_id)
        .bind("cost", new.cost)
        .bind("prompt", new.request.prompt.as_str())
        .bind("params", params)
        .bind("provider", new.provider)
        .bind("idempotency_key", new.idempotency_key)
        .bind("fingerprint", fingerprint)
        .bind("start_key", start.routing_key())
        .bind("start_payload", start.to_json())
        .bind("model", new.request.model.as_deref())
        .bind("priority", new.request.priority)
        .bind(
            "rate_interval",
            new.allowance.map(rate::Allowance::interval_secs),
        )
        .bind(
            "rate_tolerance",
            new.allowance.map(rate::Allowance::tolerance_secs),
        )
        .bind("traceparent", new.trace.map(|t| t.traceparent.as_str()))
        .bind(
            "tracestate",
            new.trace.and_then(|t| t.tracestate.as_deref()),
        )
        .done()
        .fetch_one(pool)
        .await?;
    // One row always: `allowed`, and the job's columns, NULL when none was made.
    if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
        return Ok(Accept::Queued(Box::new(Job::from_row(&row)?)));
    }
    Ok(if row.try_get("allowed")? {
        Accept::CannotPay
    } else {
        Accept::RateLimited
    })
}

/// The accepting statement, built once. `:rate_interval` and
/// `:rate_tolerance` are the allowance's; NULL when not limited here.
pub(crate) fn accept_statement() -> &'static Named {
    static SQL: std::sync::OnceLock<Named> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let take = rate::take_ctes(":user", "rate_now", "");
        let allowed = rate::allowed(":user");
        let reserve = credits::reserve_ctes(&Reserve {
            user: ":user",
            cost: ":cost",
            job: ":job",
            reservation: "1",
            actor: &format!("'{SYSTEM_ACTOR}'"),
            reason: "'video requested'",
            // A user who owes credits starts nothing until it is repaid.
            only_if: &format!("{allowed} AND owed = 0"),
        });
        let enqueue = outbox::insert_cte("j", ":start_key", ":start_payload");
        let status = EventKind::Status;
        let text = format!(
            "WITH {take}, {reserve}, j AS (
            INSERT INTO jobs (id, user_id, status, prompt, params, cost, provider,
                              idempotency_key, request_fingerprint, model, priority,
                              traceparent, tracestate)
            SELECT :job, user_id, 'queued', :prompt, :params, :cost, :provider,
                   :idempotency_key, :fingerprint, :model, :priority,
                   :traceparent, :tracestate FROM acct
            RETURNING {JOB_COLS}
        ), e AS (
            INSERT INTO job_events (job_id, kind, to_status, message, data)
            SELECT id, '{status}', 'queued', 'Accepted; ' || cost || ' credits reserved.',
                   jsonb_build_object('cost', cost) FROM j
        ), {enqueue}
        SELECT {allowed} AS allowed, j.* FROM (VALUES (0)) AS one (x) LEFT JOIN j ON TRUE"
        );
        Named::new(
            &text,
            &[
                "job",
                "user",
                "cost",
                "prompt",
                "params",
                "provider",
                "idempotency_key",
                "fingerprint",
                "start_key",
                "start_payload",
                "model",
                "priority",
                "rate_interval",
                "rate_tolerance",
                "traceparent",
                "tracestate",
            ],
        )
    })
}

/// The most submissions one [`submit_batch`] statement takes.
pub const MAX_SUBMIT_BATCH: usize = 256;

/// Submits many at once, as [`submit`] submits one: the answer at each
/// index is that submission's. The submissions must be of different users
/// (a user's submissions keep their order by going in separate batches).
/// Accepted ones share one statement: each takes its user's allowance,
/// reserves its cost from its user's lots, and queues its job. What that
/// statement refuses is answered as [`submit`] answers it (the wait of a
/// 429, the 402 recorded under the account lock); a repeated idempotency
/// key is answered before, and a statement that fails as a whole (a key
/// that raced, lots that changed) is tried one submission at a time.
pub async fn submit_batch(pool: &PgPool, news: &[NewSubmission<'_>]) -> Vec<Result<SubmitOutcome>> {
    assert!(
        news.len() <= MAX_SUBMIT_BATCH,
        "a batch of {} submissions",
        news.len()
    );
    debug_assert!(
        {
            let mut users: Vec<Uuid> = news.iter().map(|n| n.user_id).collect();
            users.sort();
            users.windows(2).all(|w| w[0] != w[1])
        },
        "a user twice in one batch"
    );
    let mut out: Vec<Option<Result<SubmitOutcome>>> = news.iter().map(|_| None).collect();
    let fingerprints: Vec<String> = news.iter().map(|n| n.request.fingerprint()).collect();
    // A key used before is a replay (or a conflict), as in `submit`.
    let mut go: Vec<usize> = Vec::with_capacity(news.len());
    for (i, new) in news.iter().enumerate() {
        if let Some(key) = new.idempotency_key {
            match job_by_key(pool, new.user_id, key).await {
                Ok(Some(job)) => {
                    out[i] = Some(Ok(replay_or_conflict(job, &fingerprints[i])));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            }
        }
        go.push(i);
    }
    let accepted = if go.len() > 1 {
        try_accept_batch(pool, news, &go, &fingerprints).await
    } else {
        Err(sqlx::Error::RowNotFound)
    };
    match accepted {
        Ok(answers) => {
            for (&i, answer) in go.iter().zip(answers) {
                let new = &news[i];
                out[i] = Some(match answer {
                    Accept::Queued(job) => Ok(SubmitOutcome::Accepted {
                        job: *job,
                        replayed: false,
                    }),
                    Accept::RateLimited => {
                        let allowance =
                            new.allowance.expect("only a limited submission is refused");
                        rate::wait_after_refusal(pool, new.user_id, allowance)
                            .await
                            .map(|retry_after| SubmitOutcome::RateLimited { retry_after })
                    }
                    Accept::CannotPay => {
                        let new = NewSubmission {
                            allowance: None,
                            ..*new
                        };
                        let params = Json(new.request.params());
                        reject(pool, &new, &params, &fingerprints[i], 3).await
                    }
                });
            }
        }
        Err(e) => {
            if go.len() > 1 {
                metrics::counter!("genq_submit_batch_failures_total").increment(1);
                tracing::debug!(error = %e, "a submit batch failed; submitting one at a time");
            }
            for &i in &go {
                out[i] = Some(submit_attempt(pool, &news[i], 3).await);
            }
        }
    }
    out.into_iter()
        .map(|o| o.expect("every submission answered"))
        .collect()
}

/// The batch statement over the submissions `go` of `news`: what it did to
/// each, in `go`'s order.
async fn try_accept_batch(
    pool: &PgPool,
    news: &[NewSubmission<'_>],
    go: &[usize],
    fingerprints: &[String],
) -> std::result::Result<Vec<Accept>, sqlx::Error> {
    let first = &news[go[0]];
    // One allowance per API (the settings'): the same for every row.
    let allowance = first.allowance;
    debug_assert!(go.iter().all(|&i| news[i].allowance == allowance));
    let start_key = WorkMessage::from(StartMessage::first(first.job_id)).routing_key();
    let mut c = SubmitColumns::default();
    for &i in go {
        let new = &news[i];
        c.jobs.push(new.job_id);
        c.users.push(new.user_id);
        c.costs.push(new.cost);
        c.prompts.push(new.request.prompt.as_str());
        c.params
            .push(serde_json::to_value(new.request.params()).expect("serializes"));
        c.providers.push(new.provider);
        c.keys.push(new.idempotency_key);
        c.fingerprints.push(fingerprints[i].as_str());
        c.starts
            .push(WorkMessage::from(StartMessage::first(new.job_id)).to_json());
        c.models.push(new.request.model.as_deref());
        c.priorities.push(new.request.priority.as_str());
        c.traceparents
            .push(new.trace.map(|t| t.traceparent.as_str()));
        c.tracestates
            .push(new.trace.and_then(|t| t.tracestate.as_deref()));
    }
    let rows = accept_batch_statement()
        .query()
        .bind("jobs", c.jobs)
        .bind("users", c.users)
        .bind("costs", c.costs)
        .bind("prompts", c.prompts)
        .bind("params", c.params)
        .bind("providers", c.providers)
        .bind("idempotency_keys", c.keys)
        .bind("fingerprints", c.fingerprints)
        .bind("starts", c.starts)
        .bind("models", c.models)
        .bind("priorities", c.priorities)
        .bind("traceparents", c.traceparents)
        .bind("tracestates", c.tracestates)
        .bind("start_key", start_key)
        .bind(
            "rate_interval",
            allowance.map(rate::Allowance::interval_secs),
        )
        .bind(
            "rate_tolerance",
            allowance.map(rate::Allowance::tolerance_secs),
        )
        .done()
        .fetch_all(pool)
        .await?;
    // One row per submission, in order: `allowed`, and the job's columns,
    // NULL when none was made.
    rows.iter()
        .map(|row| {
            if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
                return Ok(Accept::Queued(Box::new(Job::from_row(row)?)));
            }
            Ok(if row.try_get("allowed")? {
                Accept::CannotPay
            } else {
                Accept::RateLimited
            })
        })
        .collect()
}

/// The batch statement's parameters, one array each, a row per submission.
#[derive(Default)]
struct SubmitColumns<'a> {
    jobs: Vec<Uuid>,
    users: Vec<Uuid>,
    costs: Vec<i64>,
    prompts: Vec<&'a str>,
    params: Vec<serde_json::Value>,
    providers: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
    fingerprints: Vec<&'a str>,
    starts: Vec<serde_json::Value>,
    models: Vec<Option<&'a str>>,
    priorities: Vec<&'static str>,
    traceparents: Vec<Option<&'a str>>,
    tracestates: Vec<Option<&'a str>>,
}

/// [`accept_statement`] over many submissions of different users, a row
/// of parallel arrays each. The allowances are taken in user order and the
/// accounts locked in user order (before their lots, as every path locks),
/// so two batches never wait on each other in a cycle; each user's lots
/// are taken from in their own order ([`lots::take_ctes`], per user).
pub(crate) fn accept_batch_statement() -> &'static Named {
    static SQL: std::sync::OnceLock<Named> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let take = rate::take_ctes("b_user", "b, rate_now", "ORDER BY b_user");
        let allowed = rate::allowed("b_user");
        let status = EventKind::Status;
        let text = format!(
            "WITH b AS (
            SELECT * FROM unnest(:jobs::uuid[], :users::uuid[], :costs::int8[], :prompts::text[],
                   :params::jsonb[], :providers::text[], :idempotency_keys::text[], :fingerprints::text[],
                   :starts::jsonb[], :models::text[], :priorities::text[], :traceparents::text[],
                   :tracestates::text[])
                   WITH ORDINALITY AS b (b_job, b_user, b_cost, b_prompt, b_params, b_provider, b_key,
                   b_fingerprint, b_start, b_model, b_priority, b_traceparent, b_tracestate, b_ord)
        ), {take}, ok AS (
            SELECT * FROM b WHERE {allowed}
        ), acct_lock AS (
            SELECT c.user_id FROM credit_accounts c JOIN ok ON ok.b_user = c.user_id
             ORDER BY c.user_id FOR UPDATE OF c
        ), acct AS (
            UPDATE credit_accounts c
               SET available = c.available - ok.b_cost, reserved = c.reserved + ok.b_cost, updated_at = now()
              FROM ok JOIN acct_lock l ON l.user_id = ok.b_user
             WHERE c.user_id = ok.b_user AND c.available >= ok.b_cost AND c.owed = 0
            RETURNING c.user_id, ok.*
        ), reserve_row AS (
            INSERT INTO credit_ledger (user_id, kind, amount, job_id, reservation, actor, reason)
            SELECT user_id, 'reserve', b_cost, b_job, 1, '{SYSTEM_ACTOR}', 'video requested'
              FROM acct ORDER BY b_ord
            RETURNING id, user_id, amount
        ), live_lots AS (
            SELECT l.id, l.user_id, l.remaining, l.expires_at
              FROM credit_lots l JOIN acct ON l.user_id = acct.user_id
             WHERE l.remaining > 0
             FOR UPDATE OF l
        ), alloc AS (
            SELECT s.id, s.user_id, LEAST(s.remaining, a.b_cost - (s.running - s.remaining)) AS take
              FROM (SELECT id, user_id, remaining,
                           sum(remaining) OVER (PARTITION BY user_id ORDER BY {order}) AS running
                      FROM live_lots) s
              JOIN acct a ON a.user_id = s.user_id
             WHERE s.running - s.remaining < a.b_cost
        ), lot_take AS (
            UPDATE credit_lots l SET remaining = l.remaining - a.take FROM alloc a WHERE l.id = a.id
        ), lot_take_move AS (
            INSERT INTO credit_lot_moves (lot_id, ledger_id, amount)
            SELECT a.id, r.id, -a.take FROM alloc a JOIN reserve_row r ON r.user_id = a.user_id
            UNION ALL
            SELECT NULL, r.id, 0 FROM reserve_row r
             WHERE (SELECT COALESCE(sum(take), 0) FROM alloc a WHERE a.user_id = r.user_id) < r.amount
        ), j AS (
            INSERT INTO jobs (id, user_id, status, prompt, params, cost, provider,
                              idempotency_key, request_fingerprint, model, priority,
                              traceparent, tracestate)
            SELECT b_job, user_id, 'queued', b_prompt, b_params, b_cost, b_provider,
                   b_key, b_fingerprint, b_model, b_priority, b_traceparent, b_tracestate
              FROM acct ORDER BY b_ord
            RETURNING {JOB_COLS}
        ), e AS (
            INSERT INTO job_events (job_id, kind, to_status, message, data)
            SELECT id, '{status}', 'queued', 'Accepted; ' || cost || ' credits reserved.',
                   jsonb_build_object('cost', cost) FROM j
        ), outbox_row AS (
            INSERT INTO outbox (job_id, routing_key, payload)
            SELECT j.id, :start_key, b.b_start FROM j JOIN b ON b.b_job = j.id ORDER BY b.b_ord
        )
        SELECT {allowed} AS allowed, j.*
          FROM b LEFT JOIN j ON j.id = b.b_job ORDER BY b.b_ord",
            order = super::lots::TAKE_ORDER,
        );
        Named::new(
            &text,
            &[
                "jobs",
                "users",
                "costs",
                "prompts",
                "params",
                "providers",
                "idempotency_keys",
                "fingerprints",
                "starts",
                "models",
                "priorities",
                "traceparents",
                "tracestates",
                "start_key",
                "rate_interval",
                "rate_tolerance",
            ],
        )
    })
}

/// Records a refused submission. The balance is read under the account lock
/// and checked again, so a 402 always reflects a real shortfall at that moment.
async fn reject(
    pool: &PgPool,
    new: &NewSubmission<'_>,
    params: &Json<JobParams>,
    fingerprint: &str,
    tries_left: u32,
) -> Result<SubmitOutcome> {
    let mut tx = pool.begin().await?;
    let (available, owed) = credits::available_for_update(&mut tx, new.user_id).await?;
    // A concurrent request with the same key may have won the account lock
    // and spent the credits: this request is its replay, not a refusal.
    let repeat_402 = genq_core::bugs::on(genq_core::bugs::Switch::Repeat402);
    if let Some(key) = new.idempotency_key.filter(|_| !repeat_402) {
        if let Some(job) = job_by_key(&mut *tx, new.user_id, key).await? {
            tx.rollback().await?;
            return Ok(replay_or_conflict(job, fingerprint));
        }
    }
    if available >= new.cost && owed == 0 {
        // Credits arrived between the two statements: try again, a few times.
        tx.rollback().await?;
        if tries_left == 0 {
            return Err(StoreError::Conflict(
                "the balance kept changing; try again".into(),
            ));
        }
        return Box::pin(submit_attempt(pool, new, tries_left - 1)).await;
    }
    let (code, message) = if owed > 0 {
        (
            "credits_owed",
            format!(
                "You owe {owed} credits: a payment was refunded or disputed after its credits were spent. Buying credits repays them first."
            ),
        )
    } else {
        (
            "insufficient_credits",
            format!(
                "A video needs {} credits; you have {}.",
                new.cost, available
            ),
        )
    };
    let job: Job = sqlx::query_as(&format!(
        "WITH j AS (
            INSERT INTO jobs (id, user_id, status, prompt, params, cost, provider, request_fingerprint,
                              error_code, error_message, required_credits, available_credits, model,
                              priority, traceparent, tracestate)
            VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7, $11, $8, $5, $9, $10, $12, $13, $14)
            RETURNING {JOB_COLS}
        ), e AS (
            INSERT INTO job_events (job_id, kind, to_status, message, data)
            SELECT id, '{status}', 'rejected', $8,
                   jsonb_build_object('required', $5::bigint, 'available', $9::bigint) FROM j
        )
        SELECT * FROM j",
        status = EventKind::Status
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
    .bind(new.request.model.as_deref())
    .bind(code)
    .bind(new.request.priority)
    .bind(new.trace.map(|t| t.traceparent.as_str()))
    .bind(new.trace.and_then(|t| t.tracestate.as_deref()))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    if owed > 0 {
        return Ok(SubmitOutcome::Owed { job, owed });
    }
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

/// The job, locked in `tx` until it ends.
pub(crate) async fn get_job_for_update(tx: &mut sqlx::PgConnection, id: Uuid) -> Result<Job> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLS} FROM jobs WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(tx)
    .await?
    .ok_or(StoreError::NotFound)
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
    .bind(status)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page(rows, limit, |j| JobCursor {
        created_at: j.created_at,
        id: j.id,
    }))
}

/// Appends an event to the job's timeline without changing its status.
pub async fn record_event(
    pool: &PgPool,
    job_id: Uuid,
    kind: EventKind,
    message: &str,
    data: Option<serde_json::Value>,
) -> Result<()> {
    sqlx::query("INSERT INTO job_events (job_id, kind, message, data) VALUES ($1, $2, $3, $4)")
        .bind(job_id)
        .bind(kind.as_str())
        .bind(message)
        .bind(data)
        .execute(pool)
        .await?;
    Ok(())
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

/// What the provider said about a task still working: a short key (a
/// change of key is recorded on the timeline) and a sentence for people.
#[derive(Debug, Clone)]
pub struct ProviderState<'a> {
    pub key: &'a str,
    pub message: &'a str,
}

/// What [`advance_poll`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advanced {
    /// `seq` was not current: a stale or duplicated poll message, dropped.
    Stale,
    /// Advanced; `called_back`: the provider called back since the job was
    /// loaded as `callback_at` (during the poll), so it is worth asking again now.
    Advanced { called_back: bool },
}

/// Advances the poll sequence of a running job and notes the provider's
/// state, with a timeline event when it changed. `seen_callback` is the
/// job's `callback_at` when the poll loaded it.
pub async fn advance_poll(
    pool: &PgPool,
    job_id: Uuid,
    seq: i32,
    state: &ProviderState<'_>,
    seen_callback: Option<DateTime<Utc>>,
) -> Result<Advanced> {
    let row: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(&format!(
        "WITH old AS (
            SELECT id, provider_state FROM jobs
             WHERE id = $1 AND status = 'running' AND poll_seq = $2 FOR UPDATE
        ), j AS (
            UPDATE jobs SET poll_seq = poll_seq + 1, polled_at = now(), provider_state = $3
              FROM old WHERE jobs.id = old.id
            RETURNING jobs.id, jobs.callback_at, old.provider_state AS was
        ), e AS (
            INSERT INTO job_events (job_id, kind, message, data)
            SELECT id, '{provider}', $4, jsonb_build_object('state', $3::text)
              FROM j WHERE was IS DISTINCT FROM $3
        )
        SELECT callback_at FROM j",
        provider = EventKind::Provider
    ))
    .bind(job_id)
    .bind(seq)
    .bind(state.key)
    .bind(state.message)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => Advanced::Stale,
        Some((at,)) => Advanced::Advanced {
            called_back: at.is_some() && at != seen_callback,
        },
    })
}

/// What a verified provider callback did to its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackWake {
    /// Running, and no wake-up was on its way: poll now (`seq`, in the
    /// same transaction's outbox).
    Sent,
    /// Running, and a wake-up for the current poll is already on its way.
    AlreadyOnItsWay,
    /// Still being submitted: polled as soon as the provider's answer is recorded.
    Noted,
    /// No such job, or no longer at the provider: nothing to do.
    Ignored,
}

/// Records a verified callback for `job_id` on `provider` and, while the
/// job runs there, sends its next poll now (at most one such wake-up per
/// poll); the callback's body is never read for the outcome.
pub async fn wake_on_callback(pool: &PgPool, job_id: Uuid, provider: &str) -> Result<CallbackWake> {
    let mut tx = pool.begin().await?;
    let row: Option<(JobStatus, i32, Option<i32>)> = sqlx::query_as(
        "WITH old AS (
            SELECT id, callback_wake_seq FROM jobs
             WHERE id = $1 AND provider = $2 AND status IN ('submitting', 'running') FOR UPDATE
        )
        UPDATE jobs SET callback_at = clock_timestamp(),
               callback_wake_seq = CASE WHEN status = 'running' THEN poll_seq ELSE jobs.callback_wake_seq END
          FROM old WHERE jobs.id = old.id
        RETURNING jobs.status, jobs.poll_seq, old.callback_wake_seq",
    )
    .bind(job_id)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    let wake = match row {
        None => CallbackWake::Ignored,
        Some((JobStatus::Running, seq, was)) if was != Some(seq) => {
            let poll =
                genq_core::messages::WorkMessage::Poll(genq_core::messages::PollMessage::Poll {
                    job_id,
                    seq,
                    errors: 0,
                });
            super::outbox::enqueue(&mut *tx, &poll).await?;
            CallbackWake::Sent
        }
        Some((JobStatus::Running, _, _)) => CallbackWake::AlreadyOnItsWay,
        Some(_) => CallbackWake::Noted,
    };
    tx.commit().await?;
    Ok(wake)
}

// ------------------------------------------------------------ sweeper ----

/// An open job the sweeper found stalled.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct StaleJob {
    pub id: Uuid,
    pub attempts: i32,
    pub poll_seq: i32,
}

/// Touches up to `limit` jobs in `status` untouched for `stale` (with no
/// message waiting in the outbox, and not in a line) and returns them, so the next sweep leaves
/// them alone unless they stall again.
pub async fn claim_stale(
    pool: &PgPool,
    status: JobStatus,
    stale: Duration,
    limit: i64,
) -> Result<Vec<StaleJob>> {
    debug_assert!(!status.is_terminal());
    let column = if status == JobStatus::Running {
        "polled_at"
    } else {
        "updated_at"
    };
    Ok(sqlx::query_as(&format!(
        "UPDATE jobs SET {column} = now()
          WHERE id IN (
            SELECT id FROM jobs
             WHERE status = $1 AND COALESCE(polled_at, updated_at) < now() - make_interval(secs => $2)
               AND NOT {JOB_HAS_UNPUBLISHED}
               -- A job in a line is the dispatcher's, however long it waits.
               AND NOT waiting
             ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, attempts, poll_seq"
    ))
    .bind(status)
    .bind(stale.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Running jobs more than `grace` past their deadline: (job, provider task, provider).
pub async fn overdue_running(
    pool: &PgPool,
    grace: Duration,
    limit: i64,
) -> Result<Vec<(Uuid, Option<String>, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT id, provider_task_id, provider FROM jobs
          WHERE status = 'running' AND deadline_at < now() - make_interval(secs => $1) LIMIT $2",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Open jobs created longer ago than `max_age`.
pub async fn open_older_than(pool: &PgPool, max_age: Duration, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT id FROM jobs WHERE status IN {open}
            AND created_at < now() - make_interval(secs => $1) LIMIT $2",
        open = JobStatus::sql_list(&JobStatus::OPEN)
    ))
    .bind(max_age.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
