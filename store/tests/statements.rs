//! Every composed statement prepares against the migrated schema: a CTE that
//! no longer fits the statement it is spliced into (a renamed column, a
//! placeholder of another type) fails here, against a real Postgres.

use genq_core::config::DatabaseSettings;
use secrecy::SecretString;
use sqlx::Executor;

#[tokio::test]
async fn every_composed_statement_prepares_against_the_schema() {
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let name = format!(
        "genq_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let settings = DatabaseSettings {
        url: SecretString::from(format!("{server}/{name}")),
        max_connections: 2,
        ..Default::default()
    };
    let pool = genq_store::db::connect_and_migrate(&settings)
        .await
        .expect("a migrated database");
    let mut failures = Vec::new();
    for (what, sql) in genq_store::store::composed_statements() {
        if let Err(e) = (&pool).prepare(sql.sql()).await {
            failures.push(format!("{what}: {e}"));
        }
    }
    pool.close().await;
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await;
    assert!(failures.is_empty(), "{failures:#?}");
}
