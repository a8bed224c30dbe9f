//! genq's core library: configuration, domain types, the typed work
//! messages, the store (every SQL statement of the ledger, jobs and outbox),
//! operator queries, the video provider client, telemetry. It knows nothing
//! of the broker client: that is `genq-broker`.

pub mod backoff;
pub mod bugs;
pub mod config;
pub mod db;
pub mod domain;
pub mod messages;
pub mod ops;
pub mod outbound;
pub mod provider;
pub mod queues;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod telemetry;
pub mod webhooks;
