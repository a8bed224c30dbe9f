//! Layered settings: defaults in code → optional TOML file → `DATABASE_URL` /
//! `AMQP_URL` → `GENQ__SECTION__KEY` environment variables, validated at load.

mod billing;
mod events;
pub mod keys;
mod limits;
mod models;
mod storage;
mod web;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use billing::{BillingSettings, StripeSettings};
pub use events::EventsSettings;
pub use limits::{LimitsSettings, MAX_ACTIVE_MAX};
pub use models::{ModelSettings, Price, ProviderChoice, MODEL_NAME_MAX, PRICE_MAX};
pub use storage::StorageSettings;
pub use web::WebSettings;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub credits: CreditSettings,
    pub queue: QueueSettings,
    /// The deployment's default provider: jobs submitted without `model`.
    pub provider: ProviderSettings,
    /// Models a submission may name, each a provider with its price and caps.
    pub models: BTreeMap<String, ModelSettings>,
    pub worker: WorkerSettings,
    pub events: EventsSettings,
    pub storage: StorageSettings,
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
    /// The page served at `/`.
    pub web: WebSettings,
    /// Money in: the payment provider's webhook.
    pub billing: BillingSettings,
    /// How much of the providers one user may hold at once.
    pub limits: LimitsSettings,
    /// Links from genq to the deployment's trace viewer.
    pub observability: ObservabilitySettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObservabilitySettings {
    /// A URL of the trace viewer with `{trace_id}` where a job's trace ID
    /// goes (e.g. `https://jaeger.example.com/trace/{trace_id}`); empty for
    /// no link. Traces themselves are configured by the `OTEL_*` variables.
    pub trace_url_template: String,
}

impl ObservabilitySettings {
    /// The link to trace `trace_id`, when a template is set.
    pub fn trace_url(&self, trace_id: &str) -> Option<String> {
        let t = self.trace_url_template.trim();
        (!t.is_empty()).then(|| t.replace("{trace_id}", trace_id))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// A secret because it may carry a password.
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// How long a starting process waits for Postgres to answer before it
    /// gives up (a deploy or a restart beside a database restart).
    pub startup_wait_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    /// One AMQP URL, or a cluster's nodes separated by commas.
    pub url: SecretString,
    /// RabbitMQ's management API (`http://user:pass@host:15672`), read by
    /// the console's System page for queue depths and consumers. Unset: the
    /// page says it is not available. A secret because it carries a password.
    pub management_url: Option<SecretString>,
}

impl AmqpSettings {
    /// The nodes to connect to, in the configured order.
    pub fn urls(&self) -> Vec<SecretString> {
        self.url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(SecretString::from)
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    pub addr: String,
    /// Where the API serves `/metrics`, apart from the public port; port 0
    /// picks a free port.
    pub metrics_addr: String,
    /// A connection that has not sent a whole request head this long after
    /// it opened (or after its previous response) is closed: a slow client
    /// can't hold connections open for ever.
    pub header_read_timeout_ms: u64,
    /// Client connections served at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    /// Submissions one user may make per minute, sustained.
    pub submit_per_minute: u32,
    /// Submissions one user may make in a burst.
    pub submit_burst: u32,
    /// Where the allowance is kept: `postgres` (one allowance across every
    /// API process) or `memory` (per process, no database round trip).
    pub rate_limit: RateLimitStore,
    /// The most submissions (of different users) one statement accepts at
    /// once; 1 submits each alone.
    pub submit_batch: usize,
    /// Submit statements one API process runs at once: submissions ready
    /// while they run form the next batch.
    pub submit_in_flight: usize,
}

/// Where the per-user submission allowance is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitStore {
    /// Shared by every API process (a row per user).
    #[default]
    Postgres,
    /// In each process's memory: N processes allow N times the limit.
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret of genq's own tokens (stream tokens, the development
    /// sign-in) and, without `jwks_url`, of user tokens. Required: at least
    /// 32 bytes, and none written in this repository.
    pub jwt_secret: SecretString,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// An identity provider's JWKS: user and operator tokens are then
    /// verified against its keys (RS256, ES256, EdDSA), and user tokens
    /// signed with `jwt_secret` are refused. Empty: off.
    pub jwks_url: String,
    /// The `iss` the identity provider's tokens carry (required with `jwks_url`).
    pub issuer: String,
    /// The `aud` they must carry; several separated by commas (required with `jwks_url`).
    pub audience: String,
    /// The claim that holds `admin` or `viewer`: a top-level name, or a JSON
    /// pointer (`/public_metadata/role`) for namespaced or nested claims.
    pub role_claim: String,
    /// A token naming an unknown `kid` refetches the JWKS at most once per
    /// this many seconds (per process).
    pub jwks_min_refetch_secs: u64,
}

/// Secrets that are written in this repository (examples, scripts, tests of
/// old): anyone can read them, so the API refuses to start with one.
pub const EXAMPLE_SECRETS: &[&str] = &[
    "change-me-to-a-long-random-secret",
    "dev-secret-change-me-0123456789",
    "bench-secret-0123456789abcdef",
    "test-secret-0123456789abcdef",
    "chaos-jwt-secret-4f1e2d3c4b5a69788796",
    "another-secret-0123456789",
];

/// The shortest `auth.jwt_secret`: an HS256 key at least as long as the
/// hash's output (RFC 7518, section 3.2).
pub const JWT_SECRET_MIN_BYTES: usize = 32;
/// The most clock skew `auth.leeway_secs` may allow.
pub const LEEWAY_MAX_SECS: u64 = 300;

impl AuthSettings {
    /// Whether user tokens come from an identity provider's JWKS.
    pub fn uses_jwks(&self) -> bool {
        !self.jwks_url.trim().is_empty()
    }

    /// The accepted audiences (`audience`, split at commas).
    pub fn audiences(&self) -> Vec<String> {
        self.audience
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreditSettings {
    /// Granted to a user on their first authenticated call.
    pub initial: i64,
    /// What one video costs.
    pub video_cost: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Every exchange and queue name starts with this, so deployments (and
    /// test runs) sharing a broker never see each other's messages.
    pub prefix: String,
    /// Unacked deliveries a worker holds per consumer.
    pub prefetch: u16,
    /// Deliveries of one message before the broker dead-letters it (poison guard).
    pub delivery_limit: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// The label stored on each job (`jobs.provider`).
    pub name: String,
    /// Which provider API to speak: taskid | replicate | fal | runway | luma |
    /// kling | veo | seedance | minimax.
    pub kind: String,
    /// The provider's model / version / endpoint ID; empty means the kind's default
    /// (see `ProviderKind::default_model`).
    pub model: String,
    /// Empty means the kind's real API base (taskid: http://127.0.0.1:8090).
    pub base_url: String,
    /// The provider's credential (Kling: `ACCESS_KEY:SECRET_KEY`).
    pub api_key: SecretString,
    pub timeout_ms: u64,
    /// Tasks in flight at once (submitting or running), across all workers; 0 = no cap.
    pub max_concurrent: u32,
    /// Submissions to the provider per minute, across all workers; 0 = no cap.
    pub max_per_minute: u32,
    /// Let genq download finished videos from private, loopback or other
    /// non-public addresses besides the provider's own base URL (outputs
    /// kept on another private host). Off: anything but the base URL's
    /// origin must be https to a public address.
    pub allow_private: bool,
    /// When to ask about a new task the first time, counted from its
    /// submission: about as long as this provider takes, so that a task is
    /// polled once or twice rather than on every doubling step. Absent:
    /// `worker.poll_initial_ms`. 0: at once, in the step that submitted it,
    /// without a trip through the broker (for a provider that usually has
    /// the video by then). Other values are rounded down to a wait tier.
    pub first_poll_ms: Option<u64>,
    /// The API's public base URL as providers reach it (e.g.
    /// `https://genq.example.com`): when set, a submit to a kind with
    /// callbacks (replicate, fal, kling, luma, seedance) hands the provider
    /// `{this}/v1/providers/{name}/callback?job=…&token=…`, and polling
    /// becomes the safety net. Empty: no callbacks, polling as usual.
    /// Read from `provider` for every configured provider.
    pub callback_base_url: String,
    /// The key of the per-job callback tokens (at least 32 bytes; required
    /// with `callback_base_url`). Changing it voids the URLs of tasks in flight
    /// (they end through polling).
    pub callback_secret: SecretString,
    /// Between polls of a task whose provider will call back (rounded down
    /// to a wait tier, at most 300000).
    pub poll_with_callbacks_ms: u64,
    /// Replicate's webhook signing secret (`whsec_…`, from its
    /// `/v1/webhooks/default/secret`): when set, a Replicate callback must
    /// also carry a valid Standard Webhooks signature.
    pub webhook_secret: SecretString,
    /// Where fal publishes the ED25519 keys it signs callbacks with; a fal
    /// callback must carry a valid signature by one of them. Empty: the
    /// per-job token alone.
    pub fal_jwks_url: String,
}

/// The provider APIs genq has an adapter for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    TaskId,
    Replicate,
    Fal,
    Runway,
    Luma,
    Kling,
    /// Google Veo through the Gemini API's long-running operations.
    Veo,
    /// ByteDance Seedance through BytePlus ModelArk.
    Seedance,
    /// MiniMax Hailuo.
    MiniMax,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 9] = [
        Self::TaskId,
        Self::Replicate,
        Self::Fal,
        Self::Runway,
        Self::Luma,
        Self::Kling,
        Self::Veo,
        Self::Seedance,
        Self::MiniMax,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TaskId => "taskid",
            Self::Replicate => "replicate",
            Self::Fal => "fal",
            Self::Runway => "runway",
            Self::Luma => "luma",
            Self::Kling => "kling",
            Self::Veo => "veo",
            Self::Seedance => "seedance",
            Self::MiniMax => "minimax",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The real provider's API base.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::TaskId => "http://127.0.0.1:8090",
            Self::Replicate => "https://api.replicate.com",
            Self::Fal => "https://queue.fal.run",
            Self::Runway => "https://api.dev.runwayml.com",
            Self::Luma => "https://api.lumalabs.ai",
            Self::Kling => "https://api-singapore.klingai.com",
            Self::Veo => "https://generativelanguage.googleapis.com",
            Self::Seedance => "https://ark.ap-southeast.bytepluses.com",
            Self::MiniMax => "https://api.minimax.io",
        }
    }

    /// A sensible model for text-to-video on each provider.
    pub fn default_model(self) -> &'static str {
        match self {
            Self::TaskId => "",
            Self::Replicate => "minimax/video-01",
            Self::Fal => "fal-ai/kling-video/v1.6/standard/text-to-video",
            Self::Runway => "gen4.5",
            Self::Luma => "ray-2",
            Self::Kling => "kling-v1-6",
            Self::Veo => "veo-3.0-generate-001",
            Self::Seedance => "seedance-1-0-pro-250528",
            Self::MiniMax => "MiniMax-Hailuo-02",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProviderSettings {
    /// The configured kind; `validate` rejects an unknown one, so this falls
    /// back to taskid only for settings that were never validated.
    pub fn kind(&self) -> ProviderKind {
        ProviderKind::parse(&self.kind).unwrap_or(ProviderKind::TaskId)
    }

    /// `base_url`, or the kind's real API base when empty; no trailing slash.
    pub fn effective_base_url(&self) -> String {
        let url = if self.base_url.trim().is_empty() {
            self.kind().default_base_url()
        } else {
            self.base_url.trim()
        };
        url.trim_end_matches('/').to_owned()
    }

    /// `model`, or the kind's default when empty.
    pub fn effective_model(&self) -> String {
        if self.model.trim().is_empty() {
            self.kind().default_model().to_owned()
        } else {
            self.model.trim().to_owned()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Where the worker serves `/metrics`; port 0 picks a free port.
    pub metrics_addr: String,
    /// Provider calls one worker makes at once.
    pub concurrency: usize,
    /// Attempts of one provider call before the job is dead.
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub poll_initial_ms: u64,
    pub poll_max_ms: u64,
    /// A job still unfinished this long after its submission is canceled and refunded.
    pub job_timeout_secs: u64,
    /// How long shutdown waits for in-flight deliveries before handing them back.
    pub shutdown_grace_secs: u64,
    /// Safety-net interval of the outbox relay (it is woken by NOTIFY otherwise).
    pub relay_interval_ms: u64,
    pub relay_batch: i64,
    /// The most job moves (claims, running transitions, commits) one
    /// statement applies at once; 1 applies each alone.
    pub settle_batch: usize,
    /// Batch statements one worker runs at once: moves ready while all are
    /// busy form the next batch (1 makes the largest batches; more keep
    /// moves going while one statement waits on a lock).
    pub settle_in_flight: usize,
    /// How often the sweeper looks for stuck jobs (one worker at a time).
    pub sweep_interval_ms: u64,
    /// An open job untouched this long is re-driven by the sweeper.
    pub stale_after_secs: u64,
    /// Any reservation still open this long after submission is closed and
    /// refunded: the bound on how long credits can stay reserved after a crash.
    pub max_job_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Let deliveries (and registrations) target private, loopback,
    /// link-local, CGNAT, unique-local and other non-public addresses.
    /// Off by default: a registered URL must not reach genq's own network.
    pub allow_private: bool,
    /// How long one attempt may take, connecting included (the spec
    /// recommends 15 to 30 s).
    pub timeout_ms: u64,
    /// Deliveries one worker sends at once (also its prefetch on the
    /// webhooks queue), apart from the job consumers' own bound.
    pub concurrency: usize,
    /// After a rotation the previous secret signs too, for this long.
    pub rotation_overlap_secs: u64,
    /// The delay before each retry, in milliseconds; after the last one a
    /// delivery has failed. In TOML a list, in the environment a
    /// comma-separated list.
    #[serde(deserialize_with = "millis_list")]
    pub retry_schedule_ms: Vec<u64>,
    /// Each retry's delay is moved by a random amount up to this share of
    /// it, either way (0.1: ±10%).
    pub jitter: f64,
}

/// A list of milliseconds, from a TOML list or the environment's
/// comma-separated text (or a single number).
fn millis_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<u64>),
        One(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::List(v) => Ok(v),
        Raw::One(n) => Ok(vec![n]),
        Raw::Text(t) => t
            .split(',')
            .map(|p| p.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                D::Error::custom(format!(
                    "expected milliseconds separated by commas, found {t:?}"
                ))
            }),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub json: bool,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/genq"),
            max_connections: 20,
            acquire_timeout_ms: 5_000,
            startup_wait_secs: 60,
        }
    }
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("amqp://guest:guest@127.0.0.1:5672/%2f"),
            management_url: None,
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            metrics_addr: "127.0.0.1:9464".into(),
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            // A 2,000-character prompt of escaped astral characters is ~24 KiB.
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            submit_per_minute: 60,
            submit_burst: 20,
            rate_limit: RateLimitStore::default(),
            submit_batch: 64,
            submit_in_flight: 1,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: SecretString::from(""),
            leeway_secs: 5,
            jwks_url: String::new(),
            issuer: String::new(),
            audience: String::new(),
            role_claim: "role".into(),
            jwks_min_refetch_secs: 30,
        }
    }
}

impl Default for CreditSettings {
    fn default() -> Self {
        Self {
            initial: 8,
            video_cost: 10,
        }
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            prefix: "genq".into(),
            prefetch: 32,
            delivery_limit: 5,
        }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        Self {
            name: "sim".into(),
            kind: "taskid".into(),
            model: String::new(),
            base_url: String::new(),
            api_key: SecretString::from(""),
            timeout_ms: 10_000,
            max_concurrent: 0,
            max_per_minute: 0,
            allow_private: false,
            first_poll_ms: None,
            callback_base_url: String::new(),
            callback_secret: SecretString::from(""),
            poll_with_callbacks_ms: 300_000,
            webhook_secret: SecretString::from(""),
            fal_jwks_url: crate::callbacks::FAL_JWKS_URL.into(),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            metrics_addr: "127.0.0.1:9091".into(),
            concurrency: 32,
            max_attempts: 6,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            poll_initial_ms: 1_000,
            poll_max_ms: 30_000,
            job_timeout_secs: 15 * 60,
            shutdown_grace_secs: 20,
            relay_interval_ms: 1_000,
            relay_batch: 200,
            settle_batch: 64,
            settle_in_flight: 1,
            sweep_interval_ms: 5_000,
            stale_after_secs: 120,
            max_job_age_secs: 2 * 60 * 60,
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout_ms: 15_000,
            concurrency: 16,
            rotation_overlap_secs: 24 * 60 * 60,
            retry_schedule_ms: crate::webhooks::RETRY_SCHEDULE_MS.to_vec(),
            jitter: 0.1,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            json: false,
            filter: "info,sqlx=warn".into(),
        }
    }
}

impl Settings {
    /// Loads the layers in order, `file` (if given and present) overriding the
    /// defaults, then the usual `DATABASE_URL` / `AMQP_URL`, then `GENQ__*`.
    pub fn load(file: Option<&str>) -> anyhow::Result<Self> {
        Self::load_from(file, std::env::vars().collect())
    }

    /// [`Settings::load`] with the environment given as a map: tests pass
    /// their own rather than change the process's, which other threads read.
    pub fn load_from(file: Option<&str>, env: BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::with_name(path).required(true));
        } else if let Some(path) = env.get("GENQ_CONFIG") {
            builder = builder.add_source(config::File::with_name(path).required(true));
        }
        for (var, key) in [("DATABASE_URL", "database.url"), ("AMQP_URL", "amqp.url")] {
            if let Some(value) = env.get(var) {
                builder = builder.set_override(key, value.as_str())?;
            }
        }
        builder = builder.add_source(
            config::Environment::with_prefix("GENQ")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.into_iter().collect())),
        );
        let settings: Settings = builder
            .build()
            .context("reading configuration")?
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what types alone can't; each message names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        fn fail(key: &str, why: &str) -> anyhow::Result<()> {
            let env = format!("GENQ__{}", key.replace('.', "__").to_uppercase());
            bail!("invalid configuration: {key} ({env}) {why}")
        }
        if self.credits.initial < 0 {
            fail("credits.initial", "must be 0 or more")?;
        }
        let template = self.observability.trace_url_template.trim();
        if !template.is_empty() {
            let ok = template.contains("{trace_id}")
                && template.len() <= 2000
                && url::Url::parse(&template.replace("{trace_id}", "0"))
                    .is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
            if !ok {
                fail(
                    "observability.trace_url_template",
                    "must be an http(s) URL containing {trace_id}, at most 2000 characters (or empty for no link)",
                )?;
            }
        }
        let p = &self.provider;
        let callback_base = p.callback_base_url.trim();
        if !callback_base.is_empty() {
            let ok = url::Url::parse(callback_base).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http") && u.query().is_none() && u.host().is_some()
            });
            if !ok {
                fail(
                    "provider.callback_base_url",
                    "must be the API's public base URL, such as https://genq.example.com (or empty for no callbacks)",
                )?;
            }
            if p.callback_secret.expose_secret().len() < 32 {
                fail(
                    "provider.callback_secret",
                    "must be at least 32 bytes when provider.callback_base_url is set",
                )?;
            }
        }
        if !(1_000..=300_000).contains(&p.poll_with_callbacks_ms) {
            fail(
                "provider.poll_with_callbacks_ms",
                "must be between 1000 and 300000",
            )?;
        }
        if !p.fal_jwks_url.trim().is_empty() && url::Url::parse(p.fal_jwks_url.trim()).is_err() {
            fail(
                "provider.fal_jwks_url",
                "must be a URL (or empty to rely on the per-job token alone)",
            )?;
        }
        let webhook_secret = p.webhook_secret.expose_secret();
        if !webhook_secret.is_empty() {
            if let Err(why) = crate::webhooks::Secret::parse(webhook_secret) {
                fail("provider.webhook_secret", &why)?;
            }
        }
        if self.credits.video_cost <= 0 {
            fail("credits.video_cost", "must be more than 0")?;
        }
        if self.api.addr.parse::<std::net::SocketAddr>().is_err() {
            fail("api.addr", "must be an address such as 127.0.0.1:8080")?;
        }
        if self
            .api
            .metrics_addr
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            fail(
                "api.metrics_addr",
                "must be an address such as 127.0.0.1:9464",
            )?;
        }
        if !(100..=300_000).contains(&self.api.header_read_timeout_ms) {
            fail(
                "api.header_read_timeout_ms",
                "must be between 100 and 300000",
            )?;
        }
        if self.api.max_connections == 0 {
            fail("api.max_connections", "must be more than 0")?;
        }
        if self.auth.leeway_secs > LEEWAY_MAX_SECS {
            fail("auth.leeway_secs", "must be at most 300")?;
        }
        if let Err((key, why)) = self.check_identity_provider() {
            fail(key, why)?;
        }
        if let Err((key, why)) = self.billing.stripe.check() {
            fail(key, why)?;
        }
        if self
            .worker
            .metrics_addr
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            fail(
                "worker.metrics_addr",
                "must be an address such as 127.0.0.1:9091",
            )?;
        }
        if self.api.body_limit_bytes < 256 {
            fail("api.body_limit_bytes", "must be at least 256")?;
        }
        if !(1..=256).contains(&self.api.submit_batch) {
            fail("api.submit_batch", "must be between 1 and 256")?;
        }
        if !(1..=64).contains(&self.api.submit_in_flight) {
            fail("api.submit_in_flight", "must be between 1 and 64")?;
        }
        if self.api.submit_per_minute == 0 || self.api.submit_burst == 0 {
            fail(
                "api.submit_per_minute",
                "and api.submit_burst must be more than 0",
            )?;
        }
        let urls = self.amqp.urls();
        if urls.is_empty()
            || urls.iter().any(|u| {
                let u = u.expose_secret();
                !(u.starts_with("amqp://") || u.starts_with("amqps://"))
            })
        {
            fail(
                "amqp.url",
                "must be one or more amqp:// or amqps:// URLs separated by commas",
            )?;
        }
        if let Some(m) = &self.amqp.management_url {
            let ok = url::Url::parse(m.expose_secret())
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                fail(
                    "amqp.management_url",
                    "must be an http:// or https:// URL of RabbitMQ's management API",
                )?;
            }
        }
        if self.database.max_connections == 0 {
            fail("database.max_connections", "must be more than 0")?;
        }
        if self.database.startup_wait_secs > 3_600 {
            fail("database.startup_wait_secs", "must be at most 3600")?;
        }
        let prefix_ok = !self.queue.prefix.is_empty()
            && self
                .queue
                .prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !prefix_ok {
            fail(
                "queue.prefix",
                "must be non-empty ASCII letters, digits, '-', '_' or '.'",
            )?;
        }
        if self.queue.prefetch == 0 {
            fail("queue.prefetch", "must be more than 0")?;
        }
        if self.worker.concurrency == 0 {
            fail("worker.concurrency", "must be more than 0")?;
        }
        if self.worker.max_attempts == 0 {
            fail("worker.max_attempts", "must be more than 0")?;
        }
        if self.worker.poll_initial_ms == 0 || self.worker.poll_max_ms < self.worker.poll_initial_ms
        {
            fail(
                "worker.poll_max_ms",
                "must be at least worker.poll_initial_ms, which must be more than 0",
            )?;
        }
        if self.worker.retry_base_ms == 0 || self.worker.retry_max_ms < self.worker.retry_base_ms {
            fail(
                "worker.retry_max_ms",
                "must be at least worker.retry_base_ms, which must be more than 0",
            )?;
        }
        if self.worker.job_timeout_secs == 0 {
            fail("worker.job_timeout_secs", "must be more than 0")?;
        }
        if self.worker.sweep_interval_ms == 0 || self.worker.stale_after_secs == 0 {
            fail(
                "worker.stale_after_secs",
                "and worker.sweep_interval_ms must be more than 0",
            )?;
        }
        if self.worker.max_job_age_secs <= self.worker.job_timeout_secs {
            fail(
                "worker.max_job_age_secs",
                "must be more than worker.job_timeout_secs",
            )?;
        }
        if self.worker.relay_batch <= 0 {
            fail("worker.relay_batch", "must be more than 0")?;
        }
        if !(1..=256).contains(&self.worker.settle_batch) {
            fail("worker.settle_batch", "must be between 1 and 256")?;
        }
        if !(1..=64).contains(&self.worker.settle_in_flight) {
            fail("worker.settle_in_flight", "must be between 1 and 64")?;
        }
        let w = &self.webhooks;
        if w.timeout_ms == 0 || w.timeout_ms > 120_000 {
            fail("webhooks.timeout_ms", "must be between 1 and 120000")?;
        }
        if w.concurrency == 0 {
            fail("webhooks.concurrency", "must be more than 0")?;
        }
        if w.concurrency > u16::MAX as usize {
            fail("webhooks.concurrency", "must be at most 65535")?;
        }
        if w.rotation_overlap_secs > 30 * 24 * 60 * 60 {
            fail(
                "webhooks.rotation_overlap_secs",
                "must be at most 2592000 (30 days)",
            )?;
        }
        let longest = 7 * 24 * 60 * 60 * 1000;
        if w.retry_schedule_ms.len() > 50
            || w.retry_schedule_ms
                .iter()
                .any(|ms| *ms == 0 || *ms > longest)
        {
            fail(
                "webhooks.retry_schedule_ms",
                "must be at most 50 delays, each from 1 ms to 7 days (an empty list: no retries)",
            )?;
        }
        if !(0.0..=1.0).contains(&w.jitter) {
            fail("webhooks.jitter", "must be between 0 and 1")?;
        }
        if let Err((key, why)) = self.storage.check().and_then(|()| self.events.check()) {
            fail(key, why)?;
        }
        if let Err((key, why)) = self.limits.check() {
            fail(key, why)?;
        }
        if let Err((key, why)) = self.web.check() {
            fail(key, why)?;
        }
        let checked = models::check_provider("provider", &self.provider)
            .and_then(|()| models::check_models(&self.models, &self.provider.name));
        if let Err((key, why)) = checked {
            fail(&key, &why)?;
        }
        Ok(())
    }

    /// What only the API needs: a JWT secret nobody else knows, and the
    /// development sign-in only where nobody else can reach it.
    pub fn validate_api(&self) -> anyhow::Result<()> {
        let secret = self.auth.jwt_secret.expose_secret();
        if secret.len() < JWT_SECRET_MIN_BYTES {
            bail!("invalid configuration: auth.jwt_secret (GENQ__AUTH__JWT_SECRET) must be set to at least {JWT_SECRET_MIN_BYTES} random bytes (e.g. openssl rand -hex 32)");
        }
        if EXAMPLE_SECRETS.contains(&secret.trim()) {
            bail!("invalid configuration: auth.jwt_secret (GENQ__AUTH__JWT_SECRET) is an example written in genq's repository, which anyone can read: set a random one (e.g. openssl rand -hex 32)");
        }
        let loopback = self
            .api
            .addr
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        if self.web.dev_sign_in && !loopback {
            bail!("invalid configuration: web.dev_sign_in (GENQ__WEB__DEV_SIGN_IN) lets anyone sign in as anyone, so it needs api.addr on a loopback address (127.0.0.1), not {}", self.api.addr);
        }
        Ok(())
    }

    /// `auth.jwks_url` and the settings that go with it: `Err((key, why))`.
    fn check_identity_provider(&self) -> Result<(), (&'static str, &'static str)> {
        let a = &self.auth;
        let role = a.role_claim.trim();
        if role.is_empty() || role.len() > 200 || role.chars().any(char::is_control) {
            return Err((
                "auth.role_claim",
                "must be a claim name or a JSON pointer (/a/b), at most 200 characters",
            ));
        }
        if a.jwks_min_refetch_secs == 0 || a.jwks_min_refetch_secs > 3_600 {
            return Err(("auth.jwks_min_refetch_secs", "must be between 1 and 3600"));
        }
        if a.jwks_url.trim().is_empty() {
            return Ok(());
        }
        let url_ok = url::Url::parse(a.jwks_url.trim()).is_ok_and(|u| {
            let loopback = match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            };
            u.scheme() == "https" || (u.scheme() == "http" && loopback)
        });
        if !url_ok {
            return Err((
                "auth.jwks_url",
                "must be an https:// URL (http:// only on a loopback address)",
            ));
        }
        if a.issuer.trim().is_empty() {
            return Err((
                "auth.issuer",
                "must be set with auth.jwks_url: the iss of the identity provider's tokens",
            ));
        }
        if a.audiences().is_empty() {
            return Err((
                "auth.audience",
                "must be set with auth.jwks_url: the aud the identity provider's tokens carry",
            ));
        }
        Ok(())
    }

    pub fn job_timeout(&self) -> Duration {
        Duration::from_secs(self.worker.job_timeout_secs)
    }
}
