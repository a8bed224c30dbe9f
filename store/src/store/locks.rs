//! Session-level advisory locks: work that one process at a time does (the
//! sweeper), held by a connection and released with it if the process dies.

use sqlx::PgConnection;

use super::Result;

/// Takes `key` for this connection's session if no other session holds it.
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await?)
}

/// Releases `key` taken by this connection's session.
pub async fn unlock(conn: &mut PgConnection, key: i64) -> Result<()> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}
