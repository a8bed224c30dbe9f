//! What every handler shares: the pool, the settings, the JWT key, the topology.

use std::sync::Arc;

use genq_shared::config::Settings;
use genq_shared::queue::Topology;
use jsonwebtoken::DecodingKey;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub jwt_key: Arc<DecodingKey>,
    pub topology: Arc<Topology>,
    pub metrics: PrometheusHandle,
}
