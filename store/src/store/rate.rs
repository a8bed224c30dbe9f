//! The per-user submission limit kept in Postgres, so that every API process
//! enforces one allowance: GCRA (the token bucket as one timestamp per user),
//! decided and recorded in the submitting statement itself (see
//! [`take_ctes`]), so a refused submission changes nothing.

use std::time::Duration;

use uuid::Uuid;

use super::Result;

/// A user's submission allowance: `per_minute` sustained, bursts of `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Allowance {
    pub per_minute: u32,
    pub burst: u32,
}

impl Allowance {
    /// The emission interval: one submission's share of a minute, in seconds.
    pub fn interval_secs(self) -> f64 {
        60.0 / f64::from(self.per_minute.max(1))
    }

    /// How far ahead of now the TAT may be and still allow one more.
    pub fn tolerance_secs(self) -> f64 {
        self.interval_secs() * f64::from(self.burst.max(1) - 1)
    }
}

/// The GCRA step as two CTEs of the caller's statement: `rate_now` (the
/// clock) and `took`, which returns the `user_id` of each user one
/// submission was taken from and changes nothing for a user with none
/// left. `user` is the SQL of the user, one row for each of `from` (a FROM
/// list with `rate_now` in it); `order` is empty for one user, and for
/// several their `ORDER BY` (user order, so that two statements never wait
/// on each other in a cycle). The
/// parameters `:rate_interval` and `:rate_tolerance` are the seconds of
/// [`Allowance`]; a NULL interval takes nothing (the caller tests it for
/// "not limited here").
pub(crate) fn take_ctes(user: &str, from: &str, order: &str) -> String {
    let interval = INTERVAL;
    let tolerance = ":rate_tolerance::float8";
    format!(
        "rate_now AS (SELECT clock_timestamp() AS t),
         took AS (
             INSERT INTO submit_rate AS r (user_id, tat)
             SELECT {user}, rate_now.t + make_interval(secs => {interval}) FROM {from}
              WHERE {interval} IS NOT NULL {order}
             ON CONFLICT (user_id) DO UPDATE
                SET tat = greatest(r.tat, EXCLUDED.tat - make_interval(secs => {interval}))
                          + make_interval(secs => {interval})
              WHERE greatest(r.tat, EXCLUDED.tat - make_interval(secs => {interval}))
                    <= EXCLUDED.tat - make_interval(secs => {interval}) + make_interval(secs => {tolerance})
             RETURNING r.user_id
         )"
    )
}

/// Whether `user`'s submission may go ahead, as SQL over [`take_ctes`]'
/// `took`: not limited here (`:rate_interval` NULL), or one taken for them.
pub(crate) fn allowed(user: &str) -> String {
    format!("({INTERVAL} IS NULL OR {user} IN (SELECT user_id FROM took))")
}

const INTERVAL: &str = ":rate_interval::float8";

/// How long after a refusal until `user` may submit again.
pub(crate) async fn wait_after_refusal<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user: Uuid,
    allowance: Allowance,
) -> Result<Duration> {
    let ahead: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM tat - clock_timestamp())::float8 FROM submit_rate WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(executor)
    .await?
    .flatten();
    Ok(wait(ahead, allowance))
}

/// Refused: one more fits once the TAT is within the tolerance again.
fn wait(ahead: Option<f64>, allowance: Allowance) -> Duration {
    Duration::from_secs_f64((ahead.unwrap_or(0.0) - allowance.tolerance_secs()).max(0.0))
}
