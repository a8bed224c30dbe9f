//! The gate: which queued job may go to its provider now, under the
//! providers' caps (`max_concurrent`, `max_per_minute`) and the users' limits
//! (`max_active`), and the lines the others wait in.
//!
//! A job that can't start is *parked*: it stays `queued` with its credits
//! reserved and `waiting` set, its start delivery acked, so it holds nothing
//! in the broker and spends no attempt. A slot that frees wakes the
//! dispatcher, which grants the free slots in one transaction: it claims the
//! chosen jobs (`submitting`, one attempt counted) and writes each a
//! `granted` start message to the outbox. The dispatcher's work depends on
//! the number of lines (users with waiting jobs at a provider), never on the
//! number of waiting jobs.
//!
//! The order (documented in docs/models-and-caps.md): a freed slot goes to
//! the line whose head is high priority, then to the user whose last turn at
//! that provider is the oldest (never served: first; round-robin), then to
//! the oldest head; within a line, high first, then oldest. While a user's
//! line is eligible, at most one turn of every other user's line comes
//! before its next one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use genq_core::domain::{EventKind, JobStatus, Priority};
use genq_core::messages::{StartMessage, WorkMessage};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgPool};
use tokio::sync::Notify;
use uuid::Uuid;

use super::jobs::Job;
use super::outbox;
use super::transition::{transition, Transition};
use super::Result;

/// Woken (NOTIFY) when a slot may have freed or a limit changed in a process
/// without a dispatcher (the API's cancel, an operator's new limit).
pub const GATE_CHANNEL: &str = "genq_gate";

/// The window of `max_per_minute`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// One transaction at a time decides who starts (a one-key advisory lock:
/// "genq" and 2); a claim that needs no gate never takes it.
const GATE_LOCK: i64 = 0x6765_6e71_0002;

/// Lines read per dispatch: a bound on one transaction's work (beyond it,
/// the rest are served by the next dispatch).
const MAX_LINES: i64 = 10_000;

/// Dispatch passes per call: each grants at most one job per line.
const MAX_PASSES: usize = 64;

/// A provider's limits; 0 means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub max_concurrent: u32,
    pub max_per_minute: u32,
}

impl Caps {
    pub fn any(self) -> bool {
        self.max_concurrent > 0 || self.max_per_minute > 0
    }
}

/// What the gate enforces: each provider's caps (by the name jobs store in
/// `jobs.provider`) and the deployment's per-user limit (0: none; a user's
/// own row in `user_limits` overrides it).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub caps: HashMap<String, Caps>,
    pub max_active_per_user: u32,
}

impl Rules {
    /// The deployment's rules: each configured provider's caps (the default
    /// and every model) and `limits.max_active_per_user`.
    pub fn from_settings(settings: &genq_core::config::Settings) -> Self {
        Self {
            caps: settings
                .configured_providers()
                .into_iter()
                .map(|p| {
                    let caps = Caps {
                        max_concurrent: p.max_concurrent,
                        max_per_minute: p.max_per_minute,
                    };
                    (p.name, caps)
                })
                .filter(|(_, caps)| caps.any())
                .collect(),
            max_active_per_user: settings.limits.max_active_per_user,
        }
    }

    pub fn caps(&self, provider: &str) -> Caps {
        self.caps.get(provider).copied().unwrap_or_default()
    }

    /// Whether any job may have to wait whatever its user: a capped provider
    /// or a deployment-wide limit. (A user's own limit is found per claim.)
    pub fn any(&self) -> bool {
        self.max_active_per_user > 0 || self.caps.values().any(|c| c.any())
    }

    /// The limit that applies to a user whose own `max_active` is `own`
    /// (`None`: no row, or a row without one: the deployment's; 0: none).
    pub fn user_limit(&self, own: Option<i32>) -> u32 {
        match own {
            Some(n) => n.max(0) as u32,
            None => self.max_active_per_user,
        }
    }
}

/// Why a job waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// The user has `limit` jobs at the provider already.
    UserLimit { limit: u32 },
    /// The provider runs `limit` of genq's jobs at once.
    Concurrency { limit: u32 },
    /// The provider takes `limit` submissions per minute.
    Rate { limit: u32 },
}

impl WaitReason {
    /// The label of the `genq_gate_waits_total` metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserLimit { .. } => "user_limit",
            Self::Concurrency { .. } => "concurrency",
            Self::Rate { .. } => "rate",
        }
    }

    /// The timeline's sentence; `ahead` is how many of the user's own jobs
    /// wait before this one at the same provider.
    pub fn message(self, provider: &str, ahead: i64) -> String {
        let yours = match ahead {
            0 => "it is next of yours".to_owned(),
            1 => "1 of your jobs is ahead".to_owned(),
            n => format!("{n} of your jobs are ahead"),
        };
        match self {
            Self::UserLimit { limit: 1 } => {
                "Waiting: you have 1 video in progress, the most at once on your plan.".into()
            }
            Self::UserLimit { limit } => format!(
                "Waiting: you have {limit} videos in progress, the most at once on your plan."
            ),
            Self::Concurrency { limit } => {
                format!("Waiting for a free slot at {provider} ({limit} at once): {yours}.")
            }
            Self::Rate { limit } => format!(
                "Waiting for {provider}'s limit of {limit} submissions per minute: {yours}."
            ),
        }
    }
}

/// What the gate did with an arriving job.
#[derive(Debug)]
pub enum Arrival {
    /// Free to start: the claim was applied (the job as it is now).
    Claimed(Box<Job>),
    /// Parked in its line. `room`: a slot looked free (its line is behind
    /// others, or they are not eligible): run the dispatcher now.
    Waiting { reason: WaitReason, room: bool },
    /// No longer queued (canceled, or moved by someone else).
    Moved,
}

/// The user's own `max_active`, if they have a row that sets one.
async fn own_limit(conn: &mut PgConnection, user_id: Uuid) -> Result<Option<i32>> {
    let row: Option<Option<i32>> =
        sqlx::query_scalar("SELECT max_active FROM user_limits WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.flatten())
}

/// How full a provider and a user are, leaving out `job`.
#[derive(Debug, FromRow)]
struct Occupancy {
    provider_active: i64,
    provider_line: bool,
    user_active: i64,
    user_line: bool,
}

/// The rate cap's window at `provider`: claims in the window, and when the
/// oldest leaves it.
async fn rate_window(conn: &mut PgConnection, provider: &str) -> Result<(i64, Duration)> {
    let window = RATE_WINDOW.as_secs_f64();
    sqlx::query(
        "DELETE FROM provider_claims WHERE provider = $1 AND at < now() - make_interval(secs => $2)",
    )
    .bind(provider)
    .bind(window)
    .execute(&mut *conn)
    .await?;
    let (recent, frees_in): (i64, f64) = sqlx::query_as(
        "SELECT count(*),
                COALESCE(EXTRACT(EPOCH FROM min(at) + make_interval(secs => $2) - now()), 0)::float8
           FROM provider_claims WHERE provider = $1 AND at >= now() - make_interval(secs => $2)",
    )
    .bind(provider)
    .bind(window)
    .fetch_one(&mut *conn)
    .await?;
    Ok((recent, Duration::from_secs_f64(frees_in.clamp(0.0, window))))
}

/// What a claim through the gate records besides the claim itself: the
/// rate cap's claim row, and the user's turn at a capped provider.
async fn record_claim(
    conn: &mut PgConnection,
    job_id: Uuid,
    user_id: Uuid,
    provider: &str,
    caps: Caps,
) -> Result<()> {
    if caps.max_per_minute > 0 {
        sqlx::query("INSERT INTO provider_claims (provider, job_id) VALUES ($1, $2)")
            .bind(provider)
            .bind(job_id)
            .execute(&mut *conn)
            .await?;
    }
    if caps.any() {
        sqlx::query(
            "INSERT INTO gate_turns (provider, user_id, turn) VALUES ($1, $2, nextval('gate_turn_seq'))
             ON CONFLICT (provider, user_id) DO UPDATE SET turn = EXCLUDED.turn, at = now()",
        )
        .bind(provider)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A queued `job` whose start message arrived: claims it (`claim`) when it
/// may start now and nobody waits before it; parks it in its line otherwise.
/// A job neither capped nor limited is claimed without the gate's lock.
pub async fn arrive(
    pool: &PgPool,
    claim: &Transition<'_>,
    job: &Job,
    provider: &str,
    rules: &Rules,
) -> Result<Arrival> {
    let caps = rules.caps(provider);
    let mut tx = pool.begin().await?;
    let limit = rules.user_limit(own_limit(&mut tx, job.user_id).await?);
    if !caps.any() && limit == 0 {
        let claimed = transition(&mut *tx, claim).await?;
        tx.commit().await?;
        return Ok(match claimed {
            Some((job, _)) => Arrival::Claimed(Box::new(job)),
            None => Arrival::Moved,
        });
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GATE_LOCK)
        .execute(&mut *tx)
        .await?;
    let at_provider = JobStatus::sql_list(&JobStatus::AT_PROVIDER);
    let o: Occupancy = sqlx::query_as(&format!(
        "SELECT
            (SELECT count(*) FROM jobs WHERE provider = $1 AND status IN {at_provider} AND id <> $3)
                AS provider_active,
            EXISTS (SELECT 1 FROM jobs WHERE provider = $1 AND waiting AND status = 'queued' AND id <> $3)
                AS provider_line,
            (SELECT count(*) FROM jobs WHERE user_id = $2 AND status IN {at_provider} AND id <> $3)
                AS user_active,
            EXISTS (SELECT 1 FROM jobs WHERE user_id = $2 AND waiting AND status = 'queued' AND id <> $3)
                AS user_line"
    ))
    .bind(provider)
    .bind(job.user_id)
    .bind(job.id)
    .fetch_one(&mut *tx)
    .await?;
    let user_full = limit > 0 && o.user_active >= i64::from(limit);
    let provider_full =
        caps.max_concurrent > 0 && o.provider_active >= i64::from(caps.max_concurrent);
    let rate_full = if caps.max_per_minute > 0 {
        let (recent, _) = rate_window(&mut tx, provider).await?;
        recent >= i64::from(caps.max_per_minute)
    } else {
        false
    };
    // Whoever waits already goes first: a line at the provider, or (under a
    // limit) the user's own line.
    let behind = (caps.any() && o.provider_line) || (limit > 0 && o.user_line);
    let reason = if user_full {
        Some(WaitReason::UserLimit { limit })
    } else if provider_full || (behind && caps.max_concurrent > 0) {
        Some(WaitReason::Concurrency {
            limit: caps.max_concurrent,
        })
    } else if rate_full || (behind && caps.max_per_minute > 0) {
        Some(WaitReason::Rate {
            limit: caps.max_per_minute,
        })
    } else if behind {
        Some(WaitReason::UserLimit { limit })
    } else {
        None
    };
    let Some(reason) = reason else {
        let Some((claimed, _)) = transition(&mut *tx, claim).await? else {
            tx.rollback().await?;
            return Ok(Arrival::Moved);
        };
        record_claim(&mut tx, job.id, job.user_id, provider, caps).await?;
        tx.commit().await?;
        return Ok(Arrival::Claimed(Box::new(claimed)));
    };
    // The user's jobs before it in its line; no row: it is no longer queued.
    let ahead: Option<i64> = sqlx::query_scalar(
        "WITH p AS (
            UPDATE jobs SET waiting = true, provider = COALESCE(provider, $2), updated_at = now()
             WHERE id = $1 AND status = 'queued'
            RETURNING provider, user_id, priority, created_at
         )
         SELECT (SELECT count(*) FROM jobs j
                  WHERE j.provider = p.provider AND j.user_id = p.user_id AND j.waiting
                    AND j.status = 'queued' AND j.id <> $1
                    AND ((j.priority = 'high') > (p.priority = 'high')
                         OR ((j.priority = 'high') = (p.priority = 'high')
                             AND j.created_at <= p.created_at)))
           FROM p",
    )
    .bind(job.id)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(ahead) = ahead else {
        tx.rollback().await?;
        return Ok(Arrival::Moved);
    };
    let message = reason.message(provider, ahead);
    record_waiting(&mut tx, job.id, &message, reason).await?;
    tx.commit().await?;
    let room = !user_full && !provider_full && !rate_full;
    Ok(Arrival::Waiting { reason, room })
}

/// The job's `waiting` event, unless its last event already says the same.
async fn record_waiting(
    conn: &mut PgConnection,
    job_id: Uuid,
    message: &str,
    reason: WaitReason,
) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO job_events (job_id, kind, message, data)
         SELECT $1, '{waiting}', $2, $3
          WHERE (SELECT message FROM job_events WHERE job_id = $1 ORDER BY id DESC LIMIT 1)
                IS DISTINCT FROM $2",
        waiting = EventKind::Waiting
    ))
    .bind(job_id)
    .bind(message)
    .bind(serde_json::to_value(reason).expect("serializes"))
    .execute(conn)
    .await?;
    Ok(())
}

/// The head of one line: a user's next job at a provider.
#[derive(Debug, Clone, FromRow)]
struct Line {
    provider: String,
    user_id: Uuid,
    head: Uuid,
    high: bool,
    created_at: DateTime<Utc>,
    attempts: i32,
    /// The user's last turn at the provider (`None`: never served, or forgotten).
    turn: Option<i64>,
    /// The user's own `max_active` (`None`: the deployment's).
    own_limit: Option<i32>,
}

impl Line {
    /// The order lines are served in: high heads, then the oldest turn
    /// (never served first), then the oldest head.
    fn order(&self) -> (bool, Option<i64>, DateTime<Utc>, Uuid) {
        (!self.high, self.turn, self.created_at, self.head)
    }
}

/// Every line's head in one statement: a skip scan over the waiting jobs'
/// index (one probe per line), each line's head, turn and the user's limit.
async fn lines(conn: &mut PgConnection) -> Result<Vec<Line>> {
    Ok(sqlx::query_as(
        "WITH RECURSIVE l AS (
            (SELECT provider, user_id FROM jobs WHERE waiting AND status = 'queued'
              ORDER BY provider, user_id LIMIT 1)
            UNION ALL
            SELECT n.provider, n.user_id FROM l CROSS JOIN LATERAL (
                SELECT provider, user_id FROM jobs
                 WHERE waiting AND status = 'queued' AND (provider, user_id) > (l.provider, l.user_id)
                 ORDER BY provider, user_id LIMIT 1) n
         )
         SELECT l.provider, l.user_id, h.id AS head, h.high, h.created_at, h.attempts,
                t.turn, ul.max_active AS own_limit
           FROM (SELECT * FROM l LIMIT $1) l
          CROSS JOIN LATERAL (
                SELECT id, priority = 'high' AS high, created_at, attempts FROM jobs j
                 WHERE j.provider = l.provider AND j.user_id = l.user_id AND j.waiting AND j.status = 'queued'
                 ORDER BY (priority = 'high') DESC, created_at, id LIMIT 1) h
           LEFT JOIN gate_turns t ON t.provider = l.provider AND t.user_id = l.user_id
           LEFT JOIN user_limits ul ON ul.user_id = l.user_id",
    )
    .bind(MAX_LINES)
    .fetch_all(conn)
    .await?)
}

/// A job the dispatcher granted a slot (claimed, its message in the outbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Granted {
    pub job_id: Uuid,
    pub user_id: Uuid,
    pub provider: String,
    pub attempt: u32,
}

/// What one dispatch did.
#[derive(Debug, Default)]
pub struct Dispatched {
    pub granted: Vec<Granted>,
    /// When a rate cap's window next frees a slot for a waiting line.
    pub next_in: Option<Duration>,
}

/// Grants every slot that is free to the lines, in their order (see the
/// module's notes), in one transaction per pass under the gate's lock.
/// The caller wakes the outbox relays when anything was granted.
pub async fn dispatch(pool: &PgPool, rules: &Rules) -> Result<Dispatched> {
    let mut out = Dispatched::default();
    for _ in 0..MAX_PASSES {
        let (granted, next_in) = dispatch_pass(pool, rules).await?;
        out.next_in = next_in;
        if granted.is_empty() {
            break;
        }
        out.granted.extend(granted);
    }
    Ok(out)
}

/// Room left: `None` is unlimited.
fn room(limit: u32, used: i64) -> Option<i64> {
    (limit > 0).then(|| (i64::from(limit) - used).max(0))
}

async fn dispatch_pass(pool: &PgPool, rules: &Rules) -> Result<(Vec<Granted>, Option<Duration>)> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(GATE_LOCK)
        .execute(&mut *tx)
        .await?;
    let mut lines = lines(&mut tx).await?;
    if lines.is_empty() {
        tx.commit().await?;
        return Ok((vec![], None));
    }
    lines.sort_by_key(Line::order);
    let at_provider = JobStatus::sql_list(&JobStatus::AT_PROVIDER);

    // Room at each provider with a line: its cap less what it runs, and its
    // rate window.
    let mut providers: Vec<String> = lines.iter().map(|l| l.provider.clone()).collect();
    providers.sort();
    providers.dedup();
    let active: HashMap<String, i64> = sqlx::query_as(&format!(
        "SELECT provider, count(*) FROM jobs
          WHERE status IN {at_provider} AND provider = ANY($1) GROUP BY provider"
    ))
    .bind(&providers)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let mut provider_room: HashMap<String, Option<i64>> = HashMap::new();
    let mut next_in: Option<Duration> = None;
    for p in &providers {
        let caps = rules.caps(p);
        let mut r = room(caps.max_concurrent, active.get(p).copied().unwrap_or(0));
        if caps.max_per_minute > 0 {
            let (recent, frees_in) = rate_window(&mut tx, p).await?;
            let rate = (i64::from(caps.max_per_minute) - recent).max(0);
            if rate == 0 {
                next_in = Some(next_in.map_or(frees_in, |n| n.min(frees_in)));
            }
            r = Some(r.map_or(rate, |c| c.min(rate)));
        }
        provider_room.insert(p.clone(), r);
    }

    // Room of each limited user with a line.
    let limit_of = |l: &Line| rules.user_limit(l.own_limit);
    let mut limited: Vec<Uuid> = lines
        .iter()
        .filter(|l| limit_of(l) > 0)
        .map(|l| l.user_id)
        .collect();
    limited.sort();
    limited.dedup();
    let user_active: HashMap<Uuid, i64> = if limited.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as(&format!(
            "SELECT user_id, count(*) FROM jobs
              WHERE status IN {at_provider} AND user_id = ANY($1) GROUP BY user_id"
        ))
        .bind(&limited)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let mut user_room: HashMap<Uuid, Option<i64>> = HashMap::new();
    for l in &lines {
        user_room.entry(l.user_id).or_insert_with(|| {
            room(
                limit_of(l),
                user_active.get(&l.user_id).copied().unwrap_or(0),
            )
        });
    }

    // One grant per line per pass, in the lines' order.
    let mut granted = vec![];
    for l in &lines {
        let p_room = provider_room
            .get_mut(&l.provider)
            .expect("every line's provider");
        let u_room = user_room.get_mut(&l.user_id).expect("every line's user");
        if p_room.is_some_and(|r| r == 0) || u_room.is_some_and(|r| r == 0) {
            continue;
        }
        let attempt = l.attempts.max(0) as u32 + 1;
        if grant(&mut tx, l, attempt, rules.caps(&l.provider)).await? {
            if let Some(r) = p_room.as_mut() {
                *r -= 1;
            }
            if let Some(r) = u_room.as_mut() {
                *r -= 1;
            }
            granted.push(Granted {
                job_id: l.head,
                user_id: l.user_id,
                provider: l.provider.clone(),
                attempt,
            });
        }
    }
    tx.commit().await?;
    Ok((granted, next_in))
}

/// Claims a line's head for `attempt` and sends it its `granted` message;
/// false when the job left the line meanwhile (a cancel takes no lock).
async fn grant(conn: &mut PgConnection, line: &Line, attempt: u32, caps: Caps) -> Result<bool> {
    let from = [JobStatus::Queued];
    let mut claim = Transition::new(
        line.head,
        &from,
        JobStatus::Submitting,
        format!("A slot is free: submitting to the provider (attempt {attempt})."),
    );
    claim.count_attempt = true;
    if transition(&mut *conn, &claim).await?.is_none() {
        return Ok(false);
    }
    record_claim(conn, line.head, line.user_id, &line.provider, caps).await?;
    let message = WorkMessage::from(StartMessage::Granted {
        job_id: line.head,
        attempt,
    });
    outbox::enqueue(&mut *conn, &message).await?;
    Ok(true)
}

// ------------------------------------------------------------- waking ----

/// The dispatchers of this process: each is woken when a transition frees
/// a slot here. A wake meant for another deployment's dispatcher (tests run
/// several in one process) costs one empty dispatch.
fn bells() -> &'static Mutex<Vec<Weak<Notify>>> {
    static BELLS: OnceLock<Mutex<Vec<Weak<Notify>>>> = OnceLock::new();
    BELLS.get_or_init(Mutex::default)
}

/// A dispatcher's bell, rung by [`slot_freed`] in this process.
pub fn register_dispatcher() -> Arc<Notify> {
    let bell = Arc::new(Notify::new());
    let mut all = bells().lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|b| b.strong_count() > 0);
    all.push(Arc::downgrade(&bell));
    bell
}

/// A job left the provider (or a job parked with a slot free): wakes this
/// process's dispatchers. A permit is kept, so a ring during a dispatch
/// runs one more.
pub fn slot_freed() {
    let all = bells().lock().unwrap_or_else(|e| e.into_inner());
    for bell in all.iter().filter_map(Weak::upgrade) {
        bell.notify_one();
    }
}

/// Wakes every worker's dispatcher (NOTIFY), from a process that has none.
pub async fn wake_dispatchers(pool: &PgPool) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(GATE_CHANNEL)
        .execute(pool)
        .await?;
    Ok(())
}

// ------------------------------------------------------------ reading ----

/// Where a waiting job stands: 1 is next. At a capped provider the count
/// follows the round-robin (each other user's line contributes up to one
/// job per turn of yours, all their high jobs before a normal one of
/// yours); under a user's limit alone, it is the place in their own line.
/// An estimate that holds if nothing else arrives.
pub async fn queue_position(pool: &PgPool, job: &Job, rules: &Rules) -> Result<Option<i64>> {
    if !job.waiting || job.status != JobStatus::Queued {
        return Ok(None);
    }
    let Some(provider) = job.provider.as_deref() else {
        return Ok(None);
    };
    let capped = rules.caps(provider).any();
    // Per other user: waiting high and normal jobs; for the job's own user,
    // how many are before it.
    let rows: Vec<(Uuid, i64, i64, i64)> = sqlx::query_as(
        "WITH me AS (SELECT provider, user_id, priority = 'high' AS high, created_at, id FROM jobs WHERE id = $1)
         SELECT j.user_id,
                count(*) FILTER (WHERE j.priority = 'high'),
                count(*) FILTER (WHERE j.priority <> 'high'),
                count(*) FILTER (WHERE (j.priority = 'high') > me.high
                                    OR ((j.priority = 'high') = me.high
                                        AND (j.created_at, j.id) < (me.created_at, me.id)))
           FROM jobs j, me
          WHERE j.waiting AND j.status = 'queued' AND j.id <> me.id
            AND (CASE WHEN $2 THEN j.provider = me.provider ELSE j.user_id = me.user_id END)
          GROUP BY j.user_id",
    )
    .bind(job.id)
    .bind(capped)
    .fetch_all(pool)
    .await?;
    let mine = rows.iter().find(|r| r.0 == job.user_id).map_or(0, |r| r.3);
    let high = job.priority == Priority::High;
    let others: i64 = rows
        .iter()
        .filter(|r| r.0 != job.user_id)
        .map(|&(_, h, n, _)| {
            if high {
                h.min(mine + 1)
            } else {
                h + n.min(mine + 1)
            }
        })
        .sum();
    Ok(Some(mine + others + 1))
}

/// One provider's lines, for the console.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ProviderLines {
    pub provider: String,
    pub waiting_jobs: i64,
    pub waiting_users: i64,
}

/// One user's line at a provider, for the console.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UserLine {
    pub provider: String,
    pub user_id: Uuid,
    pub email: Option<String>,
    pub waiting: i64,
    pub high: i64,
}

/// Every provider's waiting jobs and users, and the `top` longest lines of
/// each (for an operator; reads every waiting job).
pub async fn overview(pool: &PgPool, top: i64) -> Result<(Vec<ProviderLines>, Vec<UserLine>)> {
    let providers = sqlx::query_as(
        "SELECT provider, count(*) AS waiting_jobs, count(DISTINCT user_id) AS waiting_users
           FROM jobs WHERE waiting AND status = 'queued' AND provider IS NOT NULL
          GROUP BY provider ORDER BY provider",
    )
    .fetch_all(pool)
    .await?;
    let lines = sqlx::query_as(
        "SELECT provider, user_id, email, waiting, high FROM (
            SELECT w.provider, w.user_id, u.email, w.waiting, w.high,
                   row_number() OVER (PARTITION BY w.provider ORDER BY w.waiting DESC, w.user_id) AS n
              FROM (SELECT provider, user_id, count(*) AS waiting,
                           count(*) FILTER (WHERE priority = 'high') AS high
                      FROM jobs WHERE waiting AND status = 'queued' AND provider IS NOT NULL
                     GROUP BY provider, user_id) w
              JOIN users u ON u.id = w.user_id) ranked
          WHERE n <= $1 ORDER BY provider, waiting DESC, user_id",
    )
    .bind(top)
    .fetch_all(pool)
    .await?;
    Ok((providers, lines))
}

/// Jobs at each provider now (submitting or running), for the console.
pub async fn in_flight(pool: &PgPool) -> Result<HashMap<String, i64>> {
    Ok(sqlx::query_as(&format!(
        "SELECT provider, count(*) FROM jobs
          WHERE status IN {at} AND provider IS NOT NULL GROUP BY provider",
        at = JobStatus::sql_list(&JobStatus::AT_PROVIDER)
    ))
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect())
}

// ------------------------------------------------------------- limits ----

/// What one user may do beyond the deployment's defaults.
#[derive(Debug, Clone, Serialize, FromRow, PartialEq, Eq)]
pub struct UserLimits {
    /// `None`: the deployment's `limits.max_active_per_user`; 0: no limit.
    pub max_active: Option<i32>,
    /// May submit `priority: high`.
    pub priority: bool,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

pub async fn user_limits(pool: &PgPool, user_id: Uuid) -> Result<Option<UserLimits>> {
    Ok(sqlx::query_as(
        "SELECT max_active, priority, updated_by, updated_at FROM user_limits WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?)
}

/// A change to one user's limits; a field left `None` keeps its value.
#[derive(Debug, Clone, Default)]
pub struct LimitsChange {
    /// `Some(None)`: back to the deployment's default.
    pub max_active: Option<Option<i32>>,
    pub priority: Option<bool>,
}

/// Sets a user's limits and audits the change (before and after) in one
/// transaction; wakes the dispatchers (a raised limit frees slots).
pub async fn set_user_limits(
    pool: &PgPool,
    user_id: Uuid,
    change: &LimitsChange,
    actor: &str,
    reason: Option<&str>,
) -> Result<UserLimits> {
    let mut tx = pool.begin().await?;
    let after = set_user_limits_in(&mut tx, user_id, change, actor, reason).await?;
    tx.commit().await?;
    if let Err(e) = wake_dispatchers(pool).await {
        tracing::debug!(error = %e, "could not wake the dispatchers; their timers will");
    }
    Ok(after)
}

/// [`set_user_limits`] in the caller's transaction (a paid plan's invoice);
/// the dispatchers find a raised limit on their next look.
pub async fn set_user_limits_in(
    tx: &mut PgConnection,
    user_id: Uuid,
    change: &LimitsChange,
    actor: &str,
    reason: Option<&str>,
) -> Result<UserLimits> {
    let before: Option<UserLimits> = sqlx::query_as(
        "SELECT max_active, priority, updated_by, updated_at FROM user_limits
          WHERE user_id = $1 FOR UPDATE",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;
    let max_active = match change.max_active {
        Some(v) => v,
        None => before.as_ref().and_then(|b| b.max_active),
    };
    let priority = change
        .priority
        .unwrap_or(before.as_ref().is_some_and(|b| b.priority));
    let after: UserLimits = sqlx::query_as(
        "INSERT INTO user_limits (user_id, max_active, priority, updated_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE
            SET max_active = EXCLUDED.max_active, priority = EXCLUDED.priority,
                updated_by = EXCLUDED.updated_by, updated_at = now()
         RETURNING max_active, priority, updated_by, updated_at",
    )
    .bind(user_id)
    .bind(max_active)
    .bind(priority)
    .bind(actor)
    .fetch_one(&mut *tx)
    .await?;
    let view = |l: Option<&UserLimits>| {
        serde_json::json!({
            "max_active": l.and_then(|l| l.max_active),
            "priority": l.is_some_and(|l| l.priority),
        })
    };
    sqlx::query(
        "INSERT INTO audit_log (actor, action, target_user_id, details)
         VALUES ($1, 'user.limits', $2, $3)",
    )
    .bind(actor)
    .bind(user_id)
    .bind(serde_json::json!({
        "before": view(before.as_ref()),
        "after": view(Some(&after)),
        "reason": reason,
    }))
    .execute(&mut *tx)
    .await?;
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_sentences_name_the_reason() {
        let u = WaitReason::UserLimit { limit: 2 };
        assert_eq!(
            u.message("runway", 0),
            "Waiting: you have 2 videos in progress, the most at once on your plan."
        );
        let c = WaitReason::Concurrency { limit: 4 };
        assert_eq!(
            c.message("runway", 3),
            "Waiting for a free slot at runway (4 at once): 3 of your jobs are ahead."
        );
        assert_eq!(
            c.message("runway", 1),
            "Waiting for a free slot at runway (4 at once): 1 of your jobs is ahead."
        );
    }

    #[test]
    fn lines_are_served_high_then_oldest_turn_then_oldest_head() {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let line = |high, turn, created| Line {
            provider: "p".into(),
            user_id: Uuid::nil(),
            head: Uuid::new_v4(),
            high,
            created_at: at(created),
            attempts: 0,
            turn,
            own_limit: None,
        };
        let mut ls = [
            line(false, Some(5), 1),
            line(false, None, 9),
            line(true, Some(9), 9),
            line(false, Some(2), 3),
        ];
        ls.sort_by_key(Line::order);
        let order: Vec<(bool, Option<i64>)> = ls.iter().map(|l| (l.high, l.turn)).collect();
        assert_eq!(
            order,
            [
                (true, Some(9)),
                (false, None),
                (false, Some(2)),
                (false, Some(5))
            ]
        );
    }
}
