//! genq's core library: configuration, domain types, the ledger and job store,
//! queue topology and messages, the video provider client, telemetry.

pub mod config;
pub mod db;
pub mod dlq;
pub mod domain;
pub mod ops;
pub mod provider;
pub mod queue;
pub mod shutdown;
pub mod store;
pub mod telemetry;
