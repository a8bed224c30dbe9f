//! What every handler shares: the pool, the settings, the JWT key, the topology.

use std::sync::Arc;

use genq_shared::config::Settings;
use genq_shared::queue::Topology;
use jsonwebtoken::DecodingKey;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use uuid::Uuid;

/// Per-user limiter of submissions.
pub type SubmitLimiter = governor::DefaultKeyedRateLimiter<Uuid>;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub jwt_key: Arc<DecodingKey>,
    pub topology: Arc<Topology>,
    pub metrics: PrometheusHandle,
    pub submit_limiter: Arc<SubmitLimiter>,
    /// Rung after each outbox write; one task turns rings into NOTIFYs,
    /// coalescing them under load.
    pub outbox_bell: Arc<tokio::sync::Notify>,
}

impl AppState {
    /// Takes one submission from the user's allowance, or says how long to wait.
    pub fn check_submit_rate(&self, user_id: Uuid) -> Result<(), std::time::Duration> {
        use governor::clock::{Clock, DefaultClock};
        self.submit_limiter
            .check_key(&user_id)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The limiter the settings describe.
pub fn submit_limiter(settings: &genq_shared::config::ApiSettings) -> SubmitLimiter {
    use std::num::NonZeroU32;
    let per_minute = NonZeroU32::new(settings.submit_per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(settings.submit_burst).unwrap_or(NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(per_minute).allow_burst(burst))
}
