//! genq's deterministic simulator: one seed drives genq's real handler,
//! relay, sweeper and store functions against the real schema, with the
//! broker, the provider, the clock and crashes replaced by seeded choices,
//! one action at a time, and checks the ledger and job invariants after
//! every step. A failing seed replays the same trace.

pub mod broker;
pub mod provider;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Once};

use futures::FutureExt;
use genq_broker::{Publisher, Topology};
use genq_core::bugs::{self, Switch};
use genq_core::config::Settings;
use genq_core::domain::{
    AspectRatio, DurationSeconds, JobStatus, LedgerKind, Priority, Prompt, VideoRequest,
};
use genq_providers::provider::Providers;
use genq_providers::storage::VideoStore;
use genq_store::store::outbox::Doorbell;
use genq_store::store::{
    self, billing, dead_letters, CreditGrant, GrantOutcome, NewSubmission, SubmitOutcome,
};
use genq_store::{db, ops};
use genq_worker::{relay, sweeper, Handler};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use crate::broker::{describe, Broker, Msg};
use crate::provider::{lock, serve_videos, Shared, SimProvider, World, CRASH};

/// Steps of the quiet phase within which every accepted job must end.
pub const QUIESCE_BOUND: u64 = 400;
/// Users per seed.
const USERS: usize = 3;
const PROMPTS: [&str; 2] = ["a cat on the moon", "a dog in the rain"];

/// The open statuses as SQL's list, from their one definition.
fn open_statuses() -> String {
    JobStatus::sql_list(&JobStatus::OPEN)
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    /// Every line is decided by the seed: two runs of a seed print the same.
    pub trace: Vec<String>,
    pub violation: Option<String>,
    pub steps: u64,
    /// Invariant checks run (one after every step).
    pub checks: u64,
}

/// One database, one broker topology, one provider and video server for a
/// whole run; each seed starts from empty tables.
pub struct Env {
    pub pool: PgPool,
    /// The handler of seeds without caps or limits; a seed with them runs
    /// a copy built with its own.
    pub handler: Handler,
    adapter: Arc<SimProvider>,
    pub world: Shared,
    broker: Broker,
    connection: lapin::Connection,
    settings: Settings,
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&CRASH) {
                default(info);
            }
        }));
    });
}

fn sim_settings() -> Settings {
    let id = Uuid::new_v4().simple().to_string();
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut s = Settings::default();
    s.database.url = SecretString::from(format!("{server}/genq_sim_{}", &id[..16]));
    s.database.max_connections = 4;
    if let Ok(url) = std::env::var("AMQP_URL") {
        s.amqp.url = SecretString::from(url);
    }
    s.queue.prefix = format!("genq-sim-{}", &id[..12]);
    // Few attempts, so that jobs die, are dead-lettered and get replayed.
    s.worker.max_attempts = 2;
    // Simulated time: nothing is stale or late unless the seed ages it.
    s.worker.job_timeout_secs = 3_600;
    s.worker.stale_after_secs = 3_600;
    s.worker.max_job_age_secs = 7_200;
    s.storage.path = std::env::temp_dir()
        .join(format!("genq-sim-videos-{}", &id[..16]))
        .to_string_lossy()
        .into_owned();
    s
}

impl Env {
    /// Creates and migrates a fresh database, declares a private topology
    /// and starts the video server.
    pub async fn new() -> anyhow::Result<Self> {
        install_panic_hook();
        let settings = sim_settings();
        let migrated = db::connect_and_migrate(&settings.database).await?;
        // A simulation tests logic, not durability across a Postgres crash:
        // commits need not wait for the disk (several times faster here).
        let name = db::connect_options(&settings.database)?
            .get_database()
            .unwrap_or_default()
            .to_owned();
        sqlx::query(&format!(
            "ALTER DATABASE \"{name}\" SET synchronous_commit = off"
        ))
        .execute(&migrated)
        .await?;
        // Nor may a vacuum move rows between a seed's scans: no autovacuum
        // (each seed starts from emptied tables anyway).
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I', tablename) FROM pg_tables WHERE schemaname = 'public'",
        )
        .fetch_all(&migrated)
        .await?;
        for t in tables {
            sqlx::query(&format!("ALTER TABLE {t} SET (autovacuum_enabled = false)"))
                .execute(&migrated)
                .await?;
        }
        migrated.close().await;
        let pool = db::pool(&settings.database)?;
        let world: Shared = Arc::new(Mutex::new(World {
            rng: StdRng::seed_from_u64(0),
            trace: vec![],
            calm: false,
            crash_after_call: false,
            cancel_during_call: false,
            canceled: BTreeMap::new(),
            aliases: BTreeMap::new(),
            video_base: serve_videos().await?,
            failures: vec![],
        }));
        let adapter = Arc::new(SimProvider {
            world: world.clone(),
            pool: pool.clone(),
        });
        let providers = Providers::build(&settings, Some(adapter.clone()))?;
        let connection = genq_broker::connect(&settings).await?;
        let publisher = Publisher::new(&connection).await?;
        let topology = Topology::new(&settings);
        let broker = Broker::declare(&connection, topology.clone()).await?;
        let topology = Arc::new(topology);
        let shared = Arc::new(settings.clone());
        let handler = Handler {
            settler: genq_worker::settle::Settler::spawn(
                pool.clone(),
                settings.worker.settle_batch,
                settings.worker.settle_in_flight,
            ),
            pool: pool.clone(),
            publisher: publisher.clone(),
            topology: topology.clone(),
            providers: Arc::new(providers),
            settings: shared.clone(),
            videos: VideoStore::new(&settings)?,
            events_bell: Doorbell::job_events(),
            webhooks: genq_worker::webhooks::WebhookSender {
                pool: pool.clone(),
                publisher,
                topology,
                settings: shared,
                client: Arc::new(genq_worker::webhooks::WebhookClient::new(
                    &settings.webhooks,
                )?),
            },
        };
        Ok(Self {
            pool,
            handler,
            adapter,
            world,
            broker,
            connection,
            settings,
        })
    }

    /// Empties every table and the broker, and seeds the world.
    async fn reset(&self, seed: u64) -> anyhow::Result<()> {
        let tables: String = sqlx::query_scalar(
            "SELECT string_agg(format('%I', tablename), ', ') FROM pg_tables
              WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        sqlx::query(&format!("TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            .execute(&self.pool)
            .await?;
        self.broker.drain(&self.pool).await?;
        sqlx::query("TRUNCATE dead_letters RESTART IDENTITY")
            .execute(&self.pool)
            .await?;
        let mut w = lock(&self.world);
        w.rng = StdRng::seed_from_u64(seed);
        w.trace.clear();
        w.calm = false;
        w.crash_after_call = false;
        w.cancel_during_call = false;
        w.canceled.clear();
        w.aliases.clear();
        w.failures.clear();
        Ok(())
    }

    /// Closes the broker connection (its queues go with it) and drops the database.
    pub async fn close(self) {
        let _ = self.connection.close(200, "simulation done".into()).await;
        self.pool.close().await;
        let _ = std::fs::remove_dir_all(&self.settings.storage.path);
        if let Ok(options) = db::connect_options(&self.settings.database) {
            let name = options.get_database().unwrap_or_default().to_owned();
            if let Ok(admin) = PgPool::connect_with(options.database("postgres")).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        }
    }
}

/// Runs `seed`: `steps` steps with faults, then the quiet phase.
pub async fn run_seed(env: &Env, seed: u64, steps: u64) -> anyhow::Result<Outcome> {
    env.reset(seed).await?;
    let gate = Gate::roll(seed);
    let handler = gate.handler(env)?;
    let mut run = Run {
        env,
        handler,
        gate,
        passed: BTreeMap::new(),
        dispatched: false,
        dispatched_idle: false,
        msgs: vec![],
        users: vec![],
        keys: vec![],
        jobs: vec![],
        last: BTreeMap::new(),
        steps: 0,
        checks: 0,
    };
    let violation = run.go(steps).await?;
    let trace = std::mem::take(&mut lock(&env.world).trace);
    Ok(Outcome {
        seed,
        trace,
        violation,
        steps: run.steps,
        checks: run.checks,
    })
}

/// The shortest failing prefix of a failing seed: the least step limit that
/// still fails (bisected), with its run.
pub async fn shrink(env: &Env, seed: u64, steps: u64) -> anyhow::Result<(u64, Outcome)> {
    let (mut lo, mut hi) = (0, steps);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if run_seed(env, seed, mid).await?.violation.is_some() {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((hi, run_seed(env, seed, hi).await?))
}

/// An idempotency key the seed used, and the job it got.
struct KeyUse {
    user: usize,
    key: String,
    variant: usize,
    job: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ack,
    /// The worker crashes before its ack: the broker delivers it again.
    CrashBeforeAck,
    /// The worker crashes after its database write, before its publish.
    CrashBeforePublish,
    /// The worker crashes right after the provider call, before any write.
    CrashAfterCall,
    /// The user's cancel lands while the provider call is in flight.
    CancelDuringCall,
}

type Check = anyhow::Result<Option<String>>;

/// The lines before a step: each waiting job (id, user, high), and what
/// the provider and each user hold.
struct Lines {
    waiting: Vec<(Uuid, Uuid, bool)>,
    provider_active: i64,
    user_active: BTreeMap<Uuid, i64>,
}

/// A seed's caps, limits and priorities, from its own generator (so a seed
/// without them makes the same choices as before they existed).
#[derive(Debug, Clone, Default)]
struct Gate {
    /// The provider's `max_concurrent` (0: none).
    cap: u32,
    /// `limits.max_active_per_user` (0: none).
    limit: u32,
    /// u1's own limit: `Some(n)` (0: none for u1), `None`: the default.
    u1_limit: Option<i32>,
    /// u0 may ask for high priority.
    u0_priority: bool,
}

impl Gate {
    fn roll(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6761_7465);
        if rng.random_range(0..3) == 0 {
            return Self::default();
        }
        Self {
            cap: [0, 1, 2, 3][rng.random_range(0..4)],
            limit: [0, 0, 1, 2][rng.random_range(0..4)],
            u1_limit: [None, None, Some(1), Some(0)][rng.random_range(0..4)],
            u0_priority: rng.random_range(0..2) == 0,
        }
    }

    fn any(&self) -> bool {
        self.cap > 0 || self.limit > 0 || self.u1_limit.is_some() || self.u0_priority
    }

    fn handler(&self, env: &Env) -> anyhow::Result<Handler> {
        if !self.any() {
            return Ok(env.handler.clone());
        }
        let mut settings = env.settings.clone();
        settings.provider.max_concurrent = self.cap;
        settings.limits.max_active_per_user = self.limit;
        let providers = Providers::build(&settings, Some(env.adapter.clone()))?;
        Ok(Handler {
            providers: Arc::new(providers),
            settings: Arc::new(settings),
            ..env.handler.clone()
        })
    }

    /// The limit that applies to user `i` (0: none).
    fn limit_of(&self, i: usize) -> u32 {
        match (i, self.u1_limit) {
            (1, Some(n)) => n as u32,
            _ => self.limit,
        }
    }
}

struct Run<'a> {
    env: &'a Env,
    /// The seed's handler (its caps and limits).
    handler: Handler,
    gate: Gate,
    /// Per (provider, user) line: turns granted to other users' lines of
    /// the same standing while it could have been served (the fairness
    /// bound: at most one per other user).
    passed: BTreeMap<(String, Uuid), u32>,
    /// Whether the step was a dispatch (the only step that may grant).
    dispatched: bool,
    /// In the quiet phase: a dispatch found nothing since the last message.
    dispatched_idle: bool,
    /// What the broker holds for delivery.
    msgs: Vec<Msg>,
    users: Vec<Uuid>,
    keys: Vec<KeyUse>,
    /// Every job the seed created, with its owner.
    jobs: Vec<(Uuid, usize)>,
    /// The last seen reservation and status of each job.
    last: BTreeMap<Uuid, (i32, JobStatus)>,
    steps: u64,
    checks: u64,
}

impl Run<'_> {
    fn roll(&self, n: u64) -> u64 {
        lock(&self.env.world).rng.random_range(0..n)
    }

    fn note(&self, line: String) {
        lock(&self.env.world).note(line);
    }

    fn alias(&self, id: Uuid) -> String {
        lock(&self.env.world).alias(id)
    }

    async fn go(&mut self, steps: u64) -> Check {
        for i in 0..USERS {
            let credits = [0, 10, 20, 30, 45][self.roll(5) as usize];
            let who = store::Identity {
                external_id: format!("sim-u{i}"),
                email: None,
                email_verified: false,
                name: None,
            };
            self.users
                .push(store::ensure_user(&self.env.pool, &who, credits).await?);
            self.note(format!("user u{i} with {credits} credits"));
        }
        self.set_up_gate().await?;
        for _ in 0..steps {
            self.steps += 1;
            let before = self.lines().await?;
            self.dispatched = false;
            if let Some(v) = self.fault_step().await? {
                return Ok(Some(self.at(v)));
            }
            if let Some(v) = self.after_step().await? {
                return Ok(Some(self.at(v)));
            }
            if let Some(v) = self.check_gate(before).await? {
                return Ok(Some(self.at(v)));
            }
        }
        self.quiesce().await
    }

    fn at(&self, violation: String) -> String {
        format!("step {}: {violation}", self.steps)
    }

    /// One seeded action of the faulty phase.
    async fn fault_step(&mut self) -> Check {
        let n = self.steps;
        match self.roll(100) {
            0..36 => {
                let mode = match self.roll(100) {
                    0..56 => Mode::Ack,
                    56..64 => return self.deliver_together().await,
                    64..74 => Mode::CrashBeforeAck,
                    74..82 => Mode::CrashBeforePublish,
                    82..92 => Mode::CrashAfterCall,
                    _ => Mode::CancelDuringCall,
                };
                self.deliver(mode).await
            }
            36..46 if self.gate.any() && self.roll(3) == 0 => self.dispatch().await,
            36..46 => self.relay().await,
            46..51 => self.sweep().await,
            51..56 => self.age().await,
            56..71 => self.submit(false).await,
            71..75 => self.submit(true).await,
            75..83 => self.cancel().await,
            83..86 => self.grant().await,
            86..92 => self.money().await,
            92..97 => self.dead_letter().await,
            _ => {
                self.note(format!("{n:>4} deliver a malformed start message"));
                self.handle(Msg {
                    key: genq_core::messages::START_KEY,
                    body: b"{\"type\":\"launch\"}".to_vec(),
                })
                .await
                .map(|r| r.err())
            }
        }
    }

    /// Runs the handler on `msg`: `Ok(Ok(crashed))`, or the violation.
    async fn handle(&self, msg: Msg) -> anyhow::Result<Result<bool, String>> {
        let step = AssertUnwindSafe(self.handler.handle(msg.queue(), &msg.body))
            .catch_unwind()
            .await;
        Ok(match step {
            Ok(Ok(())) => Ok(false),
            Ok(Err(e)) => Err(format!("the handler failed: {e:#}")),
            Err(panic) => {
                if panic.downcast_ref::<&str>() == Some(&CRASH) {
                    Ok(true)
                } else {
                    let text = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("the handler panicked: {text}"))
                }
            }
        })
    }

    async fn deliver(&mut self, mode: Mode) -> Check {
        if self.msgs.is_empty() {
            return self.relay().await;
        }
        let i = self.roll(self.msgs.len() as u64) as usize;
        let keep = matches!(mode, Mode::CrashBeforeAck | Mode::CrashBeforePublish);
        let msg = if keep {
            self.msgs[i].clone()
        } else {
            self.msgs.remove(i)
        };
        let what = {
            let w = lock(&self.env.world);
            describe(&msg, |id| w.alias(id))
        };
        let how = match mode {
            Mode::Ack => "",
            Mode::CrashBeforeAck => " (crash before the ack)",
            Mode::CrashBeforePublish => " (crash after the write, before the publish)",
            Mode::CrashAfterCall => " (crash after the provider call)",
            Mode::CancelDuringCall => " (the user cancels during the provider call)",
        };
        self.note(format!("{:>4} deliver {what}{how}", self.steps));
        {
            let mut w = lock(&self.env.world);
            w.crash_after_call = mode == Mode::CrashAfterCall;
            w.cancel_during_call = mode == Mode::CancelDuringCall;
        }
        let result = self.handle(msg.clone()).await?;
        {
            let mut w = lock(&self.env.world);
            w.crash_after_call = false;
            w.cancel_during_call = false;
        }
        match result {
            Err(v) => return Ok(Some(v)),
            // Never acked: the broker delivers it again.
            Ok(true) => self.msgs.push(msg),
            Ok(false) if mode == Mode::CrashAfterCall => {
                self.note("       (no provider call, no crash: acked)".into());
            }
            Ok(false) => {}
        }
        if mode == Mode::CrashBeforePublish {
            let lost = self.env.broker.drain(&self.env.pool).await?;
            self.note(format!(
                "       {} follow-up message(s) lost",
                lost.work.len()
            ));
        }
        Ok(None)
    }

    /// Two to four messages of different jobs handled at once, each acked:
    /// the moves of their steps may share one batch statement, as in a busy
    /// worker. They reach the provider one after another, in order (see
    /// [`provider::wait_turn`]), so the seed still decides the trace.
    async fn deliver_together(&mut self) -> Check {
        let k = 2 + self.roll(3) as usize;
        let mut msgs = Vec::with_capacity(k);
        let mut jobs = std::collections::HashSet::new();
        for _ in 0..k {
            if self.msgs.is_empty() {
                break;
            }
            let i = self.roll(self.msgs.len() as u64) as usize;
            // Malformed messages and webhooks have no job: one of each kind at most.
            if jobs.insert(broker::job_of(&self.msgs[i])) {
                msgs.push(self.msgs.remove(i));
            }
        }
        if msgs.len() < 2 {
            self.msgs.extend(msgs);
            return self.deliver(Mode::Ack).await;
        }
        let what: Vec<String> = {
            let w = lock(&self.env.world);
            msgs.iter().map(|m| describe(m, |id| w.alias(id))).collect()
        };
        self.note(format!(
            "{:>4} deliver together: {}",
            self.steps,
            what.join("; ")
        ));
        let (turn, turns) = tokio::sync::watch::channel(0usize);
        let this = &*self;
        let results = futures::future::join_all(msgs.iter().cloned().enumerate().map(|(i, m)| {
            let (turn, turns) = (&turn, turns.clone());
            provider::TURN.scope((i, turns), async move {
                let r = this.handle(m).await;
                // Done in order: the next handler's turn comes after this one's.
                provider::wait_turn().await;
                turn.send_replace(i + 1);
                r
            })
        }))
        .await;
        for (r, msg) in results.into_iter().zip(msgs) {
            match r? {
                Err(v) => return Ok(Some(v)),
                // Never acked: the broker delivers it again.
                Ok(true) => self.msgs.push(msg),
                Ok(false) => {}
            }
        }
        Ok(None)
    }

    async fn relay(&mut self) -> Check {
        let batch = 1 + self.roll(4) as i64;
        let h = &self.handler;
        if self.roll(5) == 0 {
            // The relay's own steps up to a crash after the confirms and
            // before marking the rows: they are published again later.
            let mut tx = h.pool.begin().await?;
            let rows = store::outbox::claim_batch(&mut tx, batch).await?;
            for row in &rows {
                let body = serde_json::to_vec(&row.payload)?;
                h.publisher
                    .publish(
                        &h.topology.work_exchange(),
                        &row.routing_key,
                        &body,
                        lapin::types::FieldTable::default(),
                    )
                    .await?;
            }
            tx.rollback().await?;
            self.note(format!(
                "{:>4} relay (batch {batch}) -> {} published, then it crashes before marking them",
                self.steps,
                rows.len()
            ));
            return Ok(None);
        }
        let n = relay::relay_once(&h.pool, &h.publisher, &h.topology, batch).await?;
        self.note(format!(
            "{:>4} relay (batch {batch}) -> {n} published",
            self.steps
        ));
        Ok(None)
    }

    async fn sweep(&mut self) -> Check {
        let report = sweeper::sweep_once(&self.handler, false).await?;
        self.note(format!("{:>4} sweep -> {report:?}", self.steps));
        Ok(None)
    }

    /// Simulated time: one job's clock moves back a day (stale, past its
    /// deadline, or past the maximum age).
    async fn age(&mut self) -> Check {
        // Sometimes the clock passes the expiry of the next expiring lot.
        if self.roll(4) == 0 {
            let lot: Option<i64> = sqlx::query_scalar(
                "UPDATE credit_lots SET expires_at = now() - interval '1 minute'
                  WHERE id = (SELECT id FROM credit_lots WHERE expires_at > now() ORDER BY id LIMIT 1)
                 RETURNING id",
            )
            .fetch_optional(&self.env.pool)
            .await?;
            if let Some(lot) = lot {
                self.note(format!(
                    "{:>4} clock: credit lot {lot} is past its expiry",
                    self.steps
                ));
                return Ok(None);
            }
        }
        if self.jobs.is_empty() {
            return self.sweep().await;
        }
        let (job, _) = self.jobs[self.roll(self.jobs.len() as u64) as usize];
        let (what, set) = match self.roll(3) {
            0 => (
                "stale",
                "updated_at = updated_at - interval '2 days', polled_at = polled_at - interval '2 days'",
            ),
            1 => ("past its deadline", "deadline_at = deadline_at - interval '2 days', updated_at = updated_at - interval '2 days'"),
            _ => ("past the maximum age", "created_at = created_at - interval '2 days'"),
        };
        sqlx::query(&format!("UPDATE jobs SET {set} WHERE id = $1"))
            .bind(job)
            .execute(&self.env.pool)
            .await?;
        let alias = self.alias(job);
        self.note(format!("{:>4} clock: {alias} is {what}", self.steps));
        Ok(None)
    }

    async fn submit(&mut self, racing: bool) -> Check {
        let taken: Vec<usize> = (0..self.keys.len())
            .filter(|i| self.keys[*i].job.is_some())
            .collect();
        // (user, key index into self.keys or a new key, variant)
        let (user, key, variant) = if racing && !taken.is_empty() {
            let k = taken[self.roll(taken.len() as u64) as usize];
            (self.keys[k].user, Some(k), self.keys[k].variant)
        } else {
            match self.roll(10) {
                0..3 => (
                    self.roll(USERS as u64) as usize,
                    None,
                    self.roll(2) as usize,
                ),
                3..7 => {
                    let user = self.roll(USERS as u64) as usize;
                    let variant = self.roll(2) as usize;
                    self.keys.push(KeyUse {
                        user,
                        key: format!("k{}", self.keys.len()),
                        variant,
                        job: None,
                    });
                    (user, Some(self.keys.len() - 1), variant)
                }
                _ if self.keys.is_empty() => (0, None, 0),
                _ => {
                    let k = self.roll(self.keys.len() as u64) as usize;
                    let variant = if self.roll(5) == 0 {
                        1 - self.keys[k].variant
                    } else {
                        self.keys[k].variant
                    };
                    (self.keys[k].user, Some(k), variant)
                }
            }
        };
        let racing = racing && key.is_some();
        let job_id = {
            let bytes: [u8; 16] = lock(&self.env.world).rng.random();
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        };
        let request = VideoRequest {
            prompt: Prompt::parse(PROMPTS[variant]).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            duration: DurationSeconds::parse(5).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            aspect_ratio: AspectRatio::Landscape,
            model: None,
            // Part of the request: a repeat under the same key asks the same.
            priority: if user == 0 && self.gate.u0_priority && variant == 1 {
                Priority::High
            } else {
                Priority::Normal
            },
        };
        let s = &self.env.settings;
        let new = NewSubmission {
            job_id,
            user_id: self.users[user],
            request: &request,
            cost: s.credits.video_cost,
            idempotency_key: key.map(|k| self.keys[k].key.as_str()),
            provider: &s.provider.name,
            allowance: None,
            trace: None,
        };
        if racing {
            bugs::set(Switch::StaleKeyLookup, true);
        }
        let outcome = store::submit(&self.env.pool, &new).await;
        bugs::set(Switch::StaleKeyLookup, false);
        let label = format!(
            "{:>4} submit u{user} key {} prompt {}{}",
            self.steps,
            key.map(|k| self.keys[k].key.clone()).unwrap_or("-".into()),
            ["A", "B"][variant],
            if racing {
                " (racing a request with the same key)"
            } else {
                ""
            }
        );
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.note(label);
                return Ok(Some(format!("the submit failed: {e}")));
            }
        };
        if let SubmitOutcome::Accepted { job, .. }
        | SubmitOutcome::Rejected { job, .. }
        | SubmitOutcome::Owed { job, .. } = &outcome
        {
            if job.id == job_id {
                let mut w = lock(&self.env.world);
                let n = w.aliases.len();
                w.aliases.insert(job_id, n);
                self.jobs.push((job_id, user));
            }
        }
        let said = match &outcome {
            SubmitOutcome::Accepted { job, replayed } => {
                format!(
                    "{} {}",
                    if *replayed { "replayed" } else { "accepted" },
                    self.alias(job.id)
                )
            }
            SubmitOutcome::Rejected {
                job,
                required,
                available,
            } => format!(
                "402 {} (needs {required}, has {available})",
                self.alias(job.id)
            ),
            SubmitOutcome::Owed { job, owed } => {
                format!("402 {} (owes {owed})", self.alias(job.id))
            }
            SubmitOutcome::IdempotencyConflict => "409 conflict".into(),
            SubmitOutcome::RateLimited { .. } => "429".into(),
        };
        self.note(format!("{label} -> {said}"));
        // The idempotency contract: a repeat answers with the first job, a
        // different request under the same key is a conflict.
        if let Some(k) = key {
            let first = &self.keys[k];
            match (first.job, &outcome) {
                (
                    Some(j),
                    SubmitOutcome::Accepted {
                        job,
                        replayed: true,
                    },
                ) if job.id == j && variant == first.variant => {}
                (Some(_), SubmitOutcome::IdempotencyConflict) if variant != first.variant => {}
                (Some(j), _) => {
                    return Ok(Some(format!(
                        "idempotent repeat of {} (key {}) answered {said}",
                        self.alias(j),
                        first.key
                    )))
                }
                (
                    None,
                    SubmitOutcome::Accepted {
                        job,
                        replayed: false,
                    },
                ) => {
                    let id = job.id;
                    self.keys[k].job = Some(id);
                    self.keys[k].variant = variant;
                }
                (None, _) => {}
            }
        }
        Ok(None)
    }

    async fn cancel(&mut self) -> Check {
        if self.jobs.is_empty() {
            return self.relay().await;
        }
        let (job, owner) = self.jobs[self.roll(self.jobs.len() as u64) as usize];
        let r = store::cancel_job(&self.env.pool, self.users[owner], job, "user").await;
        let said = provider::cancel_words(r);
        let alias = self.alias(job);
        self.note(format!(
            "{:>4} cancel {alias} by u{owner} -> {said}",
            self.steps
        ));
        Ok(said
            .starts_with("ERROR")
            .then(|| format!("the cancel failed: {said}")))
    }

    async fn grant(&mut self) -> Check {
        let user = self.roll(USERS as u64) as usize;
        let amount = 5 + self.roll(26) as i64;
        let reference = match self.roll(2) {
            0 => None,
            _ => Some(format!("pay-u{user}-{}", self.roll(4))),
        };
        let kind = if reference.is_some() {
            LedgerKind::Purchase
        } else {
            LedgerKind::Grant
        };
        let grant = CreditGrant {
            user_id: self.users[user],
            kind,
            amount,
            reason: "simulated".into(),
            reference: reference.clone(),
            actor: "sim-admin".into(),
            // Some grants expire (the clock step brings their time).
            expires_at: (self.roll(2) == 0)
                .then(|| chrono::Utc::now() + chrono::Duration::hours(1)),
        };
        let said = match store::add_credits(&self.env.pool, &grant).await {
            Ok(GrantOutcome::Applied(_)) => "applied".to_owned(),
            Ok(GrantOutcome::AlreadyApplied(_)) => "already applied".to_owned(),
            Err(e) => {
                return Ok(Some(format!("the grant failed: {e}")));
            }
        };
        self.note(format!(
            "{:>4} admin grants u{user} {amount} ({}) -> {said}",
            self.steps,
            reference.as_deref().unwrap_or("no reference")
        ));
        Ok(None)
    }

    /// A payment event as Stripe would send it (repeats, twins and refunds
    /// before their checkout included), or an operator's waiver, applied
    /// through the same store calls as the webhook.
    async fn money(&mut self) -> Check {
        let user = self.roll(USERS as u64) as usize;
        // Few payments and event IDs: repeats and cross-events happen.
        let pay = self.roll(4);
        let pi = format!("pi_sim_{pay}");
        let event = format!("evt_sim_{}", self.roll(12));
        let amount = 1_000;
        let (what, applied) = match self.roll(5) {
            0 | 1 => {
                let credits = 10 + 10 * self.roll(3) as i64;
                let session = format!("cs_sim_{pay}");
                let checkout = billing::PaidCheckout {
                    session_id: &session,
                    payment_intent: Some(&pi),
                    user_id: self.users[user],
                    credits,
                    amount: Some(amount),
                    currency: Some("usd"),
                };
                let mut tx = self.env.pool.begin().await?;
                let applied =
                    if billing::claim_event(&mut tx, &event, "checkout.session.completed").await? {
                        let a = billing::credit_checkout(&mut tx, &checkout).await?;
                        billing::finish_event(&mut tx, &event, &a).await?;
                        a.outcome
                    } else {
                        "duplicate event"
                    };
                tx.commit().await?;
                (
                    format!("u{user} pays {credits} credits ({session}, {event})"),
                    applied,
                )
            }
            2 | 3 => {
                let dispute = self.roll(2) == 0;
                let taken = [250, 500, 1_000][self.roll(3) as usize];
                let clawback = billing::Clawback {
                    payment_intent: &pi,
                    amount: Some(amount),
                    currency: Some("usd"),
                    kind: if dispute {
                        billing::ClawbackKind::Dispute
                    } else {
                        billing::ClawbackKind::Refund
                    },
                    taken,
                };
                let kind = if dispute {
                    "charge.dispute.created"
                } else {
                    "charge.refunded"
                };
                let mut tx = self.env.pool.begin().await?;
                let applied = if billing::claim_event(&mut tx, &event, kind).await? {
                    let a = billing::record_clawback(&mut tx, &clawback).await?;
                    billing::finish_event(&mut tx, &event, &a).await?;
                    a.outcome
                } else {
                    "duplicate event"
                };
                tx.commit().await?;
                (
                    format!("{kind} {taken}/{amount} of {pi} ({event})"),
                    applied,
                )
            }
            _ => {
                let amount = (self.roll(2) == 0).then(|| 1 + self.roll(15) as i64);
                let waived = billing::waive_owed(
                    &self.env.pool,
                    self.users[user],
                    amount,
                    "sim-admin",
                    "simulated",
                )
                .await?;
                (
                    format!("operator waives {amount:?} owed by u{user}"),
                    if waived > 0 { "waived" } else { "nothing owed" },
                )
            }
        };
        self.note(format!("{:>4} {what} -> {applied}", self.steps));
        // Each payment credits once, and never reverses more than it bought.
        let over: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT p.payment_intent, p.credits_reversed, COALESCE(p.credits, 0)
               FROM stripe_payments p
              WHERE p.credits_reversed > COALESCE(p.credits, 0)
                 OR (SELECT count(*) FROM credit_ledger l
                      WHERE l.kind = 'purchase' AND l.reference = p.session_id) > 1
              LIMIT 1",
        )
        .fetch_optional(&self.env.pool)
        .await?;
        Ok(over.map(|(pi, reversed, credits)| {
            format!("payment {pi} reversed {reversed} of {credits} credits, or was credited twice")
        }))
    }

    async fn dead_letter(&mut self) -> Check {
        let letters = dead_letters::list(&self.env.pool, false, 100).await?;
        if letters.is_empty() {
            return self.sweep().await;
        }
        let letter = &letters[self.roll(letters.len() as u64) as usize];
        let replay = self.roll(3) > 0;
        let r = if replay {
            dead_letters::replay(&self.env.pool, letter.id, "sim-admin").await
        } else {
            dead_letters::discard(&self.env.pool, letter.id, "sim-admin").await
        };
        let job = letter
            .job_id
            .map(|j| self.alias(j))
            .unwrap_or("no job".into());
        let verb = if replay { "replays" } else { "discards" };
        let said = match r {
            Ok(res) => format!(
                "{} {}",
                if res.done { "done:" } else { "refused:" },
                res.message
            ),
            Err(e) => {
                self.note(format!(
                    "{:>4} operator {verb} dead letter {} ({job})",
                    self.steps, letter.id
                ));
                return Ok(Some(format!("the dead-letter {verb} failed: {e}")));
            }
        };
        self.note(format!(
            "{:>4} operator {verb} dead letter {} ({job}) -> {said}",
            self.steps, letter.id
        ));
        Ok(None)
    }

    /// The seed's own limits and rights, as an operator sets them.
    async fn set_up_gate(&mut self) -> anyhow::Result<()> {
        let g = self.gate.clone();
        if !g.any() {
            return Ok(());
        }
        self.note(format!(
            "gate: cap {}, limit {}, u1's limit {:?}, u0 may ask for high priority: {}",
            g.cap, g.limit, g.u1_limit, g.u0_priority
        ));
        let set = [
            (
                1,
                store::gate::LimitsChange {
                    max_active: g.u1_limit.map(Some),
                    priority: None,
                },
            ),
            (
                0,
                store::gate::LimitsChange {
                    max_active: None,
                    priority: g.u0_priority.then_some(true),
                },
            ),
        ];
        for (i, change) in set {
            if change.max_active.is_some() || change.priority.is_some() {
                store::gate::set_user_limits(
                    &self.env.pool,
                    self.users[i],
                    &change,
                    "sim-admin",
                    None,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self) -> Check {
        self.dispatched = true;
        let d = genq_worker::gate::dispatch_once(&self.handler).await?;
        let granted: Vec<String> = d.granted.iter().map(|g| self.alias(g.job_id)).collect();
        self.note(format!(
            "{:>4} dispatch -> granted [{}]",
            self.steps,
            granted.join(", ")
        ));
        Ok(None)
    }

    /// The waiting jobs and who could be served, before a step.
    async fn lines(&self) -> anyhow::Result<Option<Lines>> {
        if !self.gate.any() {
            return Ok(None);
        }
        let waiting: Vec<(Uuid, Uuid, bool)> = sqlx::query_as(
            "SELECT id, user_id, priority = 'high' FROM jobs WHERE waiting AND status = 'queued'",
        )
        .fetch_all(&self.env.pool)
        .await?;
        let (provider_active, user_active) = self.at_provider().await?;
        Ok(Some(Lines {
            waiting,
            provider_active,
            user_active,
        }))
    }

    /// Jobs at the provider, and per user.
    async fn at_provider(&self) -> anyhow::Result<(i64, BTreeMap<Uuid, i64>)> {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT user_id, count(*) FROM jobs WHERE status IN {} GROUP BY user_id",
            JobStatus::sql_list(&JobStatus::AT_PROVIDER)
        ))
        .fetch_all(&self.env.pool)
        .await?;
        Ok((rows.iter().map(|r| r.1).sum(), rows.into_iter().collect()))
    }

    /// The gate's invariants after a step: no provider over its cap, no
    /// user over their limit, nobody leaving a line but by a grant (or an
    /// end), no normal job granted before an eligible high one, and at most
    /// one turn of each other user's line before an eligible line's next.
    async fn check_gate(&mut self, before: Option<Lines>) -> Check {
        let Some(before) = before else {
            return Ok(None);
        };
        let (active, per_user) = self.at_provider().await?;
        if self.gate.cap > 0 && active > i64::from(self.gate.cap) {
            return Ok(Some(format!(
                "{active} jobs at the provider over its cap of {}",
                self.gate.cap
            )));
        }
        for (i, u) in self.users.iter().enumerate() {
            let limit = self.gate.limit_of(i);
            let n = per_user.get(u).copied().unwrap_or(0);
            if limit > 0 && n > i64::from(limit) {
                return Ok(Some(format!(
                    "u{i} has {n} jobs at the provider over a limit of {limit}"
                )));
            }
        }
        let ids: Vec<Uuid> = before.waiting.iter().map(|w| w.0).collect();
        // Only a grant moves a waiting job on to the provider (a cancel or
        // the maximum age end it).
        let started: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE id = ANY($1) AND status IN {}",
            JobStatus::sql_list(&JobStatus::AT_PROVIDER)
        ))
        .bind(&ids)
        .fetch_all(&self.env.pool)
        .await?;
        let granted: Vec<&(Uuid, Uuid, bool)> = before
            .waiting
            .iter()
            .filter(|w| started.contains(&w.0))
            .collect();
        if granted.is_empty() {
            return Ok(None);
        }
        if !self.dispatched {
            return Ok(Some(format!(
                "{} left its line without a grant",
                self.alias(granted[0].0)
            )));
        }
        let provider = self.env.settings.provider.name.clone();
        let room = |limit: u32, used: i64| limit == 0 || used < i64::from(limit);
        let provider_room = room(self.gate.cap, before.provider_active);
        for (i, u) in self.users.iter().enumerate() {
            let mine: Vec<&(Uuid, Uuid, bool)> =
                before.waiting.iter().filter(|w| w.1 == *u).collect();
            if mine.is_empty() {
                continue;
            }
            let high = mine.iter().any(|w| w.2);
            let eligible = provider_room
                && room(
                    self.gate.limit_of(i),
                    before.user_active.get(u).copied().unwrap_or(0),
                );
            let served = granted.iter().any(|g| g.1 == *u);
            let key = (provider.clone(), *u);
            if served {
                self.passed.remove(&key);
                continue;
            }
            if !eligible || self.gate.cap == 0 {
                continue;
            }
            for g in granted.iter().filter(|g| g.1 != *u) {
                if high && !g.2 {
                    return Ok(Some(format!(
                        "{} (normal) was granted before u{i}'s high-priority job",
                        self.alias(g.0)
                    )));
                }
                if g.2 == high {
                    *self.passed.entry(key.clone()).or_default() += 1;
                }
            }
            let passed = self.passed.get(&key).copied().unwrap_or(0);
            if passed as usize > USERS - 1 {
                return Ok(Some(format!(
                    "u{i}'s line was passed over {passed} times while it could be served"
                )));
            }
        }
        Ok(None)
    }

    /// Collects what the step published, then checks every invariant.
    async fn after_step(&mut self) -> Check {
        let drained = self.env.broker.drain(&self.env.pool).await?;
        if drained.dead > 0 {
            self.note(format!("       {} dead letter(s) archived", drained.dead));
        }
        self.msgs.extend(drained.work);
        self.check().await
    }

    async fn check(&mut self) -> Check {
        self.checks += 1;
        let failures = std::mem::take(&mut lock(&self.env.world).failures);
        if let Some(f) = failures.into_iter().next() {
            return Ok(Some(f));
        }
        if let Some(v) = ops::verify_ledger(&self.env.pool).await?.into_iter().next() {
            let job = v.job_id.map(|j| self.alias(j)).unwrap_or_default();
            return Ok(Some(format!(
                "ledger invariant {} {job}: {}",
                v.rule, v.detail
            )));
        }
        let rows: Vec<(Uuid, JobStatus, i32)> =
            sqlx::query_as("SELECT id, status, reservation FROM jobs ORDER BY id")
                .fetch_all(&self.env.pool)
                .await?;
        for (id, status, reservation) in rows {
            if let Some(&(r, was)) = self.last.get(&id) {
                let alias = self.alias(id);
                if reservation < r {
                    return Ok(Some(format!(
                        "{alias}'s reservation went back from {r} to {reservation}"
                    )));
                }
                if reservation == r && was.is_terminal() && status != was {
                    return Ok(Some(format!(
                        "terminal job {alias} moved from {was} to {status}"
                    )));
                }
            }
            self.last.insert(id, (reservation, status));
        }
        Ok(None)
    }

    /// No more faults: deliver everything in order, relay, and let the
    /// sweeper re-drive what lost its message, until no job is open.
    async fn quiesce(&mut self) -> Check {
        lock(&self.env.world).calm = true;
        self.note("---- quiesce: no more faults".into());
        let mut sweeps = 0;
        for _ in 0..QUIESCE_BOUND {
            self.steps += 1;
            let before = self.lines().await?;
            self.dispatched = false;
            if !self.msgs.is_empty() {
                self.dispatched_idle = false;
                let msg = self.msgs.remove(0);
                let what = {
                    let w = lock(&self.env.world);
                    describe(&msg, |id| w.alias(id))
                };
                self.note(format!("{:>4} deliver {what}", self.steps));
                if let Err(v) = self.handle(msg).await? {
                    return Ok(Some(self.at(v)));
                }
            } else {
                let h = &self.handler;
                let n = relay::relay_once(&h.pool, &h.publisher, &h.topology, 200).await?;
                let waiting = before.as_ref().is_some_and(|l| !l.waiting.is_empty());
                if n > 0 {
                    self.dispatched_idle = false;
                    self.note(format!("{:>4} relay -> {n} published", self.steps));
                } else if waiting && !self.dispatched_idle {
                    // Slots freed: the dispatcher grants them (once per
                    // quiet spell; then the clock moves).
                    self.dispatch().await?;
                    self.dispatched_idle = true;
                } else {
                    self.dispatched_idle = false;
                    let open: Vec<Uuid> = sqlx::query_scalar(&format!(
                        "SELECT id FROM jobs WHERE status IN {} ORDER BY id",
                        open_statuses()
                    ))
                    .fetch_all(&self.env.pool)
                    .await?;
                    if open.is_empty() {
                        self.note(format!("{:>4} quiet: every job ended", self.steps));
                        return Ok(None);
                    }
                    sweeps += 1;
                    // Stalled jobs are re-driven; after a few rounds, the
                    // deadlines and the maximum age close what is left.
                    let set = if sweeps <= 3 {
                        "updated_at = updated_at - interval '2 days', polled_at = polled_at - interval '2 days'"
                    } else {
                        "updated_at = updated_at - interval '2 days', polled_at = polled_at - interval '2 days', deadline_at = deadline_at - interval '2 days', created_at = created_at - interval '2 days'"
                    };
                    sqlx::query(&format!(
                        "UPDATE jobs SET {set} WHERE status IN {}",
                        open_statuses()
                    ))
                    .execute(&self.env.pool)
                    .await?;
                    let report = sweeper::sweep_once(&self.handler, false).await?;
                    self.note(format!(
                        "{:>4} clock: {} open job(s) age; sweep -> {report:?}",
                        self.steps,
                        open.len()
                    ));
                }
            }
            if let Some(v) = self.after_step().await? {
                return Ok(Some(self.at(v)));
            }
            if let Some(v) = self.check_gate(before).await? {
                return Ok(Some(self.at(v)));
            }
        }
        let open: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE status IN {} ORDER BY id",
            open_statuses()
        ))
        .fetch_all(&self.env.pool)
        .await?;
        let names: Vec<String> = open.iter().map(|j| self.alias(*j)).collect();
        Ok(Some(self.at(format!(
            "liveness: {} job(s) still open after {QUIESCE_BOUND} quiet steps: {}",
            names.len(),
            names.join(", ")
        ))))
    }
}
