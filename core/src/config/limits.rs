//! `[limits]`: how much of the providers one user may hold at once.

use serde::Deserialize;

/// The largest per-user limit accepted (here and per user).
pub const MAX_ACTIVE_MAX: u32 = 10_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSettings {
    /// At most this many of one user's jobs submitting or running at the
    /// provider at once; the rest wait in the user's own line, queued, their
    /// credits reserved. 0: no limit. An operator's per-user limit
    /// (`PUT /v1/admin/users/{id}/limits`) overrides it.
    pub max_active_per_user: u32,
}

impl LimitsSettings {
    /// The first key whose value can't work, and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_active_per_user > MAX_ACTIVE_MAX {
            return Err((
                "limits.max_active_per_user",
                "must be between 0 (no limit) and 10000",
            ));
        }
        Ok(())
    }
}
