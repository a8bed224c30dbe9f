//! The per-user submission limit kept in Postgres, so that every API process
//! enforces one allowance: GCRA (the token bucket as one timestamp per user),
//! decided and recorded in one conditional statement.

use std::time::Duration;

use uuid::Uuid;

use super::Result;

/// Takes one submission from `user`'s allowance of `per_minute` with bursts
/// of `burst`; `Err(wait)` when there is none left, with how long until one.
pub async fn take_submission<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    user: Uuid,
    per_minute: u32,
    burst: u32,
) -> Result<std::result::Result<(), Duration>> {
    // The emission interval: one submission's share of a minute.
    let interval = 60.0 / f64::from(per_minute.max(1));
    // How far ahead of now the TAT may be and still allow one more.
    let tolerance = interval * f64::from(burst.max(1) - 1);
    let (allowed, ahead): (bool, Option<f64>) = sqlx::query_as(
        "WITH now AS (SELECT clock_timestamp() AS t),
         took AS (
             INSERT INTO submit_rate AS r (user_id, tat)
             SELECT $1, now.t + make_interval(secs => $2) FROM now
             ON CONFLICT (user_id) DO UPDATE
                SET tat = greatest(r.tat, EXCLUDED.tat - make_interval(secs => $2))
                          + make_interval(secs => $2)
              WHERE greatest(r.tat, EXCLUDED.tat - make_interval(secs => $2))
                    <= EXCLUDED.tat - make_interval(secs => $2) + make_interval(secs => $3)
             RETURNING 1
         )
         SELECT EXISTS (SELECT 1 FROM took),
                (SELECT extract(epoch FROM r.tat - now.t)::float8
                   FROM submit_rate r, now WHERE r.user_id = $1)",
    )
    .bind(user)
    .bind(interval)
    .bind(tolerance)
    .fetch_one(executor)
    .await?;
    if allowed {
        return Ok(Ok(()));
    }
    // Refused: the row is as it was; one more fits once the TAT is within
    // the tolerance again.
    let wait = (ahead.unwrap_or(0.0) - tolerance).max(0.0);
    Ok(Err(Duration::from_secs_f64(wait)))
}
