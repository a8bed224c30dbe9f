//! genq's RabbitMQ side: the topology (declared in one place), connecting,
//! the publisher that waits for confirms, the dead-letter mover, and the
//! management API's queue depths (`queues`, for the console). The
//! workers publish the outbox through it; the API only to publish a lone
//! submission's start message itself (`api/src/eager.rs`).

pub mod dead_letters;
pub mod publisher;
pub mod queues;
pub mod topology;

pub use publisher::{check_confirm, connect, reconnect_backoff, Publisher, CONNECT_TIMEOUT};
pub use topology::{tier_at_least, tier_at_most, Topology, DELAY_TIERS_MS, WEBHOOK_DELAY_TIERS_MS};
