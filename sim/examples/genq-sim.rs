//! `genq-sim` (`cargo run -p genq-sim --example genq-sim`): runs seeds of the
//! deterministic simulator (see lib.rs) and reports the first violation with
//! the shortest failing trace.

use std::time::Instant;

use clap::Parser;
use genq_core::bugs::{self, Switch};
use genq_sim::{run_seed, shrink, Env};

#[derive(Parser)]
#[command(about = "Deterministic simulation of genq's job and ledger state machine")]
struct Args {
    /// How many seeds to run (from --first).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of a --seeds run.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run this one seed and print its trace (only what the seed decides).
    #[arg(long)]
    seed: Option<u64>,
    /// Steps with faults per seed, before the quiet phase.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Re-introduce a known bug (test only): repeat-402, refund-after-cancel, no-status-check.
    #[arg(long)]
    bug: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(name) = &args.bug {
        anyhow::ensure!(
            bugs::COMPILED_IN,
            "--bug needs genq-core's bug-switches feature (run the example: cargo run -p genq-sim --example genq-sim)"
        );
        let switch = match name.as_str() {
            "repeat-402" => Switch::Repeat402,
            "refund-after-cancel" => Switch::RefundAfterCancel,
            "no-status-check" => Switch::NoStatusCheck,
            other => anyhow::bail!("unknown bug {other:?}"),
        };
        bugs::set(switch, true);
    }
    let env = Env::new().await?;
    // Interrupted: the run's database is dropped all the same.
    let result = tokio::select! {
        r = run(&env, &args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    env.close().await;
    match result? {
        true => Ok(()),
        false => std::process::exit(1),
    }
}

/// Ok(true) when every seed passed.
async fn run(env: &Env, args: &Args) -> anyhow::Result<bool> {
    if let Some(seed) = args.seed {
        let outcome = run_seed(env, seed, args.steps).await?;
        for line in &outcome.trace {
            println!("{line}");
        }
        return match &outcome.violation {
            None => {
                println!(
                    "seed {seed}: ok ({} steps, {} states checked)",
                    outcome.steps, outcome.checks
                );
                Ok(true)
            }
            Some(v) => {
                println!("seed {seed}: VIOLATION {v}");
                Ok(false)
            }
        };
    }
    let started = Instant::now();
    let (mut steps, mut checks) = (0u64, 0u64);
    for seed in args.first..args.first + args.seeds {
        let outcome = run_seed(env, seed, args.steps).await?;
        steps += outcome.steps;
        checks += outcome.checks;
        if let Some(v) = &outcome.violation {
            println!("seed {seed}: VIOLATION {v}");
            let (limit, shortest) = shrink(env, seed, args.steps).await?;
            println!(
                "shortest failing run: --seed {seed} --steps {limit} ({} steps); its trace:",
                shortest.steps
            );
            for line in &shortest.trace {
                println!("{line}");
            }
            if let Some(v) = &shortest.violation {
                println!("VIOLATION {v}");
            }
            return Ok(false);
        }
        let done = seed - args.first + 1;
        if done.is_multiple_of(100) {
            eprintln!(
                "{done} seeds, {steps} steps, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} seeds passed: {steps} steps, {checks} states checked, {secs:.1} s, {:.0} steps/s",
        args.seeds,
        steps as f64 / secs.max(1e-9)
    );
    Ok(true)
}
