//! genq's core: configuration, the domain types, the typed work messages,
//! the address rules and signing of outbound requests (webhooks), telemetry,
//! and the small pieces every process shares (backoff, shutdown). No SQL, no
//! provider client, no broker client.

pub mod backoff;
pub mod bugs;
pub mod callbacks;
pub mod config;
pub mod domain;
pub mod group;
pub mod messages;
pub mod outbound;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod webhooks;
