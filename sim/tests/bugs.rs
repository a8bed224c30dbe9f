//! The simulator finds known past bugs again: each is re-introduced behind
//! a test-only switch (genq-shared's `bug-switches`) and must be found
//! within a bounded number of seeds, which the clean code passes; a failing
//! seed replays the same trace. One test, since the switches are global.

use genq_core::bugs::{self, Switch};
use genq_sim::{run_seed, shrink, Env};

/// Seeds tried per bug before the test gives up.
const MAX_SEEDS: u64 = 20;
const STEPS: u64 = 200;

#[tokio::test(flavor = "current_thread")]
async fn every_reintroduced_bug_is_found_and_the_clean_code_passes() {
    let env = Env::new().await.expect("simulator starts");
    let mut last_needed = 0;
    for switch in [
        Switch::Repeat402,
        Switch::RefundAfterCancel,
        Switch::NoStatusCheck,
    ] {
        bugs::set(switch, true);
        let mut found = None;
        for seed in 0..MAX_SEEDS {
            let outcome = run_seed(&env, seed, STEPS).await.expect("runs");
            if outcome.violation.is_some() {
                found = Some(outcome);
                break;
            }
        }
        let found = found.unwrap_or_else(|| panic!("{switch:?} not found in {MAX_SEEDS} seeds"));
        // The failing seed replays the same trace and violation, and a
        // shorter prefix of it still fails.
        let again = run_seed(&env, found.seed, STEPS).await.expect("runs");
        assert_eq!(
            again.trace, found.trace,
            "{switch:?}: seed {} replayed differently",
            found.seed
        );
        assert_eq!(again.violation, found.violation);
        let (limit, shortest) = shrink(&env, found.seed, STEPS).await.expect("shrinks");
        assert!(limit <= STEPS && shortest.violation.is_some());
        eprintln!("{switch:?}: seed {} -> {:?}", found.seed, found.violation);
        bugs::set(switch, false);
        last_needed = last_needed.max(found.seed);
    }
    for seed in 0..=last_needed {
        let outcome = run_seed(&env, seed, STEPS).await.expect("runs");
        assert_eq!(outcome.violation, None, "clean code failed seed {seed}");
    }
    env.close().await;
}
