//! What every handler shares: the pool, the settings, the JWT key, the
//! submission limiter, the relays' doorbell, the live event feed and the known callers.

use std::sync::Arc;
use std::time::Duration;

use genq_core::config::{RateLimitStore, Settings};
use genq_core::telemetry;
use genq_providers::storage::VideoStore;
use genq_store::store::outbox::Doorbell;
use genq_store::store::users::Identity;
use jsonwebtoken::DecodingKey;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::EventFeed;

/// Per-user limiter of submissions.
pub type SubmitLimiter = governor::DefaultKeyedRateLimiter<Uuid>;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub jwt_key: Arc<DecodingKey>,
    pub metrics: PrometheusHandle,
    pub submit_limiter: Arc<SubmitLimiter>,
    /// Submissions, group-committed (see [`crate::submits`]).
    pub submitter: crate::submits::Submitter,
    /// Rung after each committed outbox write; see [`Doorbell`].
    pub outbox_bell: Doorbell,
    /// The identity provider's keys, when `auth.jwks_url` is set.
    pub jwks: Option<Arc<crate::jwks::Jwks>>,
    /// The providers this API takes callbacks for, when callbacks are on.
    pub callbacks: Option<Arc<crate::routes::callbacks::CallbackRoutes>>,
    /// fal's webhook keys, when `provider.fal_jwks_url` is set (fetched
    /// only when a fal callback arrives).
    pub fal_keys: Option<Arc<crate::fal_keys::FalKeys>>,
    /// genq's copies of finished videos.
    pub videos: VideoStore,
    /// This process's live job-event feed and stream bounds.
    pub events: EventFeed,
    /// Callers already known to the database; see [`known_users`].
    pub users: moka::sync::Cache<String, (Identity, Uuid)>,
    /// For RabbitMQ's management API (the console's queue depths); one
    /// client, so its connections are reused.
    pub http: reqwest::Client,
    /// The providers' caps and the per-user limit (a waiting job's place).
    pub gate: Arc<genq_store::store::gate::Rules>,
}

impl AppState {
    /// The state of an API over `pool` (which may not be reachable yet).
    pub fn new(settings: Settings, pool: PgPool) -> anyhow::Result<Self> {
        Ok(Self {
            jwt_key: Arc::new(DecodingKey::from_secret(
                settings.auth.jwt_secret.expose_secret().as_bytes(),
            )),
            jwks: if settings.auth.uses_jwks() {
                Some(Arc::new(crate::jwks::Jwks::new(
                    &settings.auth.jwks_url,
                    Duration::from_secs(settings.auth.jwks_min_refetch_secs),
                )?))
            } else {
                None
            },
            callbacks: crate::routes::callbacks::CallbackRoutes::from_settings(&settings)
                .map(Arc::new),
            fal_keys: match settings.provider.fal_jwks_url.trim() {
                "" => None,
                url => Some(Arc::new(crate::fal_keys::FalKeys::new(url)?)),
            },
            submit_limiter: Arc::new(submit_limiter(&settings.api)),
            submitter: crate::submits::Submitter::new(
                pool.clone(),
                settings.api.submit_batch,
                settings.api.submit_in_flight,
            ),
            outbox_bell: Doorbell::outbox(),
            metrics: telemetry::metrics_handle(),
            videos: VideoStore::new(&settings)?,
            events: EventFeed::new(
                settings.events.max_streams,
                settings.events.max_streams_per_user,
            ),
            http: reqwest::Client::new(),
            users: known_users(),
            gate: Arc::new(genq_store::store::gate::Rules::from_settings(&settings)),
            settings: Arc::new(settings),
            pool,
        })
    }

    /// The allowance a submission takes in its own statement: `Some` when
    /// `api.rate_limit` keeps it in Postgres.
    pub fn submit_allowance(&self) -> Option<genq_store::store::rate::Allowance> {
        let api = &self.settings.api;
        (api.rate_limit == RateLimitStore::Postgres).then_some(genq_store::store::rate::Allowance {
            per_minute: api.submit_per_minute,
            burst: api.submit_burst,
        })
    }

    /// Takes one submission from the user's allowance kept in this
    /// process (`api.rate_limit = "memory"`), or says how long to wait.
    pub fn check_memory_rate(&self, user_id: Uuid) -> Result<(), std::time::Duration> {
        use governor::clock::{Clock, DefaultClock};
        self.submit_limiter
            .check_key(&user_id)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The limiter the settings describe.
pub fn submit_limiter(settings: &genq_core::config::ApiSettings) -> SubmitLimiter {
    use std::num::NonZeroU32;
    let per_minute = NonZeroU32::new(settings.submit_per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(settings.submit_burst).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute).allow_burst(burst))
}

/// How long a caller's identity is trusted to be in the database without
/// asking it again. The upsert it saves refreshes `last_seen_at` at most once
/// a minute anyway; a changed email or name misses the cache, so it
/// reaches the database at once. Users are never deleted, so an entry can't
/// name a user who is gone.
const KNOWN_USER_TTL: Duration = Duration::from_secs(60);
/// Bounded: one entry is a few hundred bytes.
const KNOWN_USERS_MAX: u64 = 100_000;

/// The cache that saves each request the user upsert (two round trips for a
/// known user): measured by scripts/bench.sh.
/// Keyed by the token's subject; the entry holds the identity last written.
fn known_users() -> moka::sync::Cache<String, (Identity, Uuid)> {
    moka::sync::Cache::builder()
        .max_capacity(KNOWN_USERS_MAX)
        .time_to_live(KNOWN_USER_TTL)
        .build()
}
