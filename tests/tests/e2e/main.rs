//! genq's end-to-end suite, one test binary: each module is one area, against
//! the real Postgres, RabbitMQ and provider simulator (linking the stack once
//! instead of once per area keeps the debug build small and quick).

#[path = "../harness/mod.rs"]
#[allow(dead_code)]
mod harness;

mod api;
mod archive;
mod batches;
mod billing;
mod callbacks;
mod console;
mod events;
mod fairness;
mod hardening;
mod hostile;
mod jwks;
mod lifecycles;
mod models;
mod openapi;
mod operator;
mod pipeline;
mod providers;
mod web;
mod webhooks;
