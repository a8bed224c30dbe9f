//! genq's HTTP API: authentication, validation, submission, queries, admin.

pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod state;

pub use startup::Application;
