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

/// A user as a path names one: an email (with an @), the identity
/// provider's `sub`, or genq's ID. Control characters or more than an
/// email's length name nobody (a 404 that sends nothing to SQL).
fn user_in_path(user: String) -> Result<genq_store::store::UserRef, crate::error::ApiError> {
    use genq_store::store::UserRef;
    if user.chars().any(char::is_control) || user.len() > genq_core::domain::EMAIL_MAX {
        return Err(crate::error::ApiError::NotFound("No such user.".into()));
    }
    Ok(if user.contains('@') {
        UserRef::Email(user)
    } else {
        UserRef::from_id(&user)
    })
}
