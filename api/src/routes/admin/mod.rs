//! The `/v1/admin` endpoints, one module per area. Reads need the admin or
//! the viewer role, actions the admin role (`crate::auth`); every action is
//! audited under the operator's name. Same logic as `genqctl`.

pub mod billing;
pub mod credits;
pub mod dlq;
pub mod jobs;
pub mod system;
pub mod users;
pub mod webhooks;

/// The largest age filter: ten years, far inside Postgres' interval range.
const MAX_AGE_SECS: u64 = 315_360_000;
