//! Database connection: creates the database if it is missing, applies the
//! embedded migrations, and hands out a bounded pool.

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use genq_core::config::DatabaseSettings;

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
///
/// A process started while Postgres is down or restarting (a deploy, a
/// supervisor restarting it beside a database failover) waits for it, up to
/// `database.startup_wait_secs`, instead of exiting. Anything else (a bad
/// URL, a refused password, a failed migration) stops it at once.
pub async fn connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let deadline = Instant::now() + Duration::from_secs(settings.startup_wait_secs);
    let mut delays = genq_core::backoff::reconnect(Duration::from_secs(5));
    loop {
        match try_connect_and_migrate(settings).await {
            Ok(pool) => return Ok(pool),
            Err(e) if is_unavailable(&e) && Instant::now() < deadline => {
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %format!("{e:#}"), ?delay, "Postgres is not answering yet; waiting for it");
                tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn try_connect_and_migrate(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    ensure_database(settings).await?;
    let pool = pool(settings)?;
    let migrated = MIGRATOR.run(&pool).await;
    if migrated.is_err() {
        // The next try makes a new pool; this one's connections go now.
        pool.close().await;
    }
    migrated.context("applying migrations")?;
    Ok(pool)
}

/// Whether `e` means Postgres is not reachable or not accepting connections
/// yet (worth waiting for), as opposed to a configuration or schema error.
fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let sqlx_error = cause.downcast_ref::<sqlx::Error>().or_else(|| {
            match cause.downcast_ref::<sqlx::migrate::MigrateError>() {
                Some(sqlx::migrate::MigrateError::Execute(e)) => Some(e),
                _ => None,
            }
        });
        match sqlx_error {
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => true,
            // Class 08: connection exceptions; 57P01-57P03: the server is
            // shutting down, crashed or still starting.
            Some(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
            _ => false,
        }
    })
}
