//! genq's RabbitMQ side: the topology (declared in one place), connecting,
//! the publisher that waits for confirms, and the dead-letter mover. Only
//! the workers link it: the API talks to Postgres alone.

pub mod dead_letters;
pub mod publisher;
pub mod topology;
pub mod trace;

pub use publisher::{check_confirm, connect, reconnect_backoff, Publisher, CONNECT_TIMEOUT};
pub use topology::{tier_at_least, tier_at_most, Topology, DELAY_TIERS_MS, WEBHOOK_DELAY_TIERS_MS};
pub use trace::{current_trace_headers, delivery_trace, trace_headers};
