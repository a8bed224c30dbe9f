//! genq's HTTP API: authentication, validation, submission, queries, live
//! event streams, admin.

pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod fal_keys;
pub mod jwks;
pub mod openapi;
pub mod queue_stats;
pub mod routes;
pub mod startup;
pub mod state;
pub mod stripe;
pub mod submits;

pub use startup::Application;
