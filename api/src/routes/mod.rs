//! HTTP handlers, one module per resource.

pub mod admin;
pub mod billing;
pub mod callbacks;
pub mod credits;
pub mod dev;
pub mod events;
pub mod generations;
pub mod health;
pub mod models;
pub mod video;
pub mod web;

/// Largest page size of any listing.
pub const MAX_PAGE: i64 = 100;
pub const DEFAULT_PAGE: i64 = 20;

/// Checks a `limit` query parameter.
pub fn page_limit(limit: Option<i64>) -> Result<i64, crate::error::ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
        Some(_) => Err(crate::error::ApiError::invalid(
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}."),
        )),
    }
}
