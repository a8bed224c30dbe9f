//! A seed decides the whole run: two runs of one seed print the same trace.

use genq_sim::{run_seed, Env};

#[tokio::test(flavor = "current_thread")]
async fn one_seed_replays_the_same_trace() {
    let env = Env::new().await.expect("simulator starts");
    for seed in [7, 8] {
        let first = run_seed(&env, seed, 150).await.expect("runs");
        let second = run_seed(&env, seed, 150).await.expect("runs");
        assert_eq!(first.violation, None, "seed {seed}: {:?}", first.violation);
        assert!(first.steps > 150, "the quiet phase ran");
        assert_eq!(
            first.trace, second.trace,
            "seed {seed} printed two different traces"
        );
    }
    // A different seed makes different choices.
    let other = run_seed(&env, 9, 150).await.expect("runs");
    let seven = run_seed(&env, 7, 150).await.expect("runs");
    assert_ne!(other.trace, seven.trace);
    env.close().await;
}
