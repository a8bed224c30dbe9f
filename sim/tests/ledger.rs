//! The ledger check the simulator runs after every step (`ops::verify_ledger`,
//! also `genqctl ledger verify`) sees a settlement filed under a reservation
//! its job never made.

use genq_sim::{run_seed, Env};
use genq_store::ops;

#[tokio::test(flavor = "current_thread")]
async fn an_entry_for_a_reservation_the_job_never_made_is_a_violation() {
    let env = Env::new().await.expect("simulator starts");
    let outcome = run_seed(&env, 11, 120).await.expect("runs");
    assert_eq!(outcome.violation, None);
    assert!(ops::verify_ledger(&env.pool).await.unwrap().is_empty());
    let moved = sqlx::query(
        "UPDATE credit_ledger SET reservation = reservation + 5
          WHERE id = (SELECT min(id) FROM credit_ledger WHERE kind IN ('commit', 'refund'))",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1, "the seed settled something");
    let rules: Vec<String> = ops::verify_ledger(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.rule)
        .collect();
    assert!(rules.iter().any(|r| r == "entry_matches_job"), "{rules:?}");
    env.close().await;
}
