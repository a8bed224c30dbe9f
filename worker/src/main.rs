//! `genq-worker`: runs the relay and the consumers until SIGTERM or ctrl-c.

use clap::Parser;
use genq_core::config::Settings;
use genq_core::telemetry;
use genq_worker::Worker;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "genq-worker",
    about = "genq's worker: outbox relay, provider submission and polling, settlement",
    version
)]
struct Cli {
    /// A TOML configuration file (else $GENQ_CONFIG, else defaults and environment).
    #[arg(long)]
    config: Option<String>,
}

#[tokio::main]
async fn main() {
    // One readable line for a bad configuration or a failed start, no backtrace.
    if let Err(e) = run().await {
        eprintln!("genq-worker: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load(cli.config.as_deref())?;
    let tracing = telemetry::init_tracing(&settings.log, "genq-worker");
    let shutdown = CancellationToken::new();
    tokio::spawn(genq_core::shutdown::on_signal(shutdown.clone()));
    let worker = Worker::build(settings, None).await?;
    tracing::info!(metrics_port = worker.metrics_port(), "genq-worker starting");
    let result = worker.run_until_stopped(shutdown).await;
    // The exporter's last send blocks (bounded by its timeout).
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    result
}
