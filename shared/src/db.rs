//! Database connection: creates the database if it is missing, applies the
//! embedded migrations, and hands out a bounded pool.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())
        .context("invalid configuration: database.url (DATABASE_URL) is not a Postgres URL")?;
    // Statement logging at INFO would print every query; keep it for debugging.
    Ok(options.log_statements(tracing::log::LevelFilter::Debug))
}

/// Creates the configured database when it does not exist yet.
pub async fn ensure_database(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to Postgres")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut admin).await {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it in the meantime.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// A lazily connecting pool: a process starts even while Postgres is down
/// and `/readyz` says so.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
        // sqlx pings every connection it hands out (a round trip) and again
        // when it takes it back. The second ping stays (it can't be turned
        // off, and it catches a connection that broke in use); the first is
        // kept only for a connection idle long enough to have been cut, as
        // after a Postgres restart. Under load that saves a round trip per
        // statement (scripts/bench.sh; flame graph in docs/perf/).
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(connect_options(settings)?))
}

/// See [`pool`]: a connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Creates the database if needed, migrates it and returns a pool.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    ensure_database(settings).await?;
    let pool = pool(settings)?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    Ok(pool)
}
