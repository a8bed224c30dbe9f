//! `genq-provider-sim`: runs the provider simulator until ctrl-c or SIGTERM.

use std::time::Duration;

use clap::Parser;
use genq_provider_sim::{start, CallbackFaults, Dialect, SimConfig, MARKERS_HELP};

#[derive(Parser)]
#[command(
    name = "genq-provider-sim",
    about = "A video provider for tests and demos, speaking one provider's API (--dialect): taskid (POST /v1/tasks, GET /v1/tasks/{id}, POST /v1/tasks/{id}/cancel), replicate, fal, runway, luma, kling, veo, seedance or minimax. Also GET /v1/stats, and the output videos at /files/{id}/output.mp4.",
    after_help = MARKERS_HELP,
    version
)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    addr: String,
    /// Delay added to every response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Time from submission to a finished task, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    generation_ms: u64,
    /// Share of requests answered 503 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Share of requests answered 429 with Retry-After (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    rate_limit_rate: f64,
    /// Retry-After of a 429, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Share of tasks that end failed (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    permanent_fail_rate: f64,
    /// Share of tasks that never finish (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    hang_rate: f64,
    /// Which provider API to speak.
    #[arg(long, value_enum, default_value = "taskid")]
    dialect: Dialect,
    /// How long an output URL works once the video is ready, in milliseconds
    /// (default one hour).
    #[arg(long)]
    url_ttl_ms: Option<u64>,
    /// How long serving one output video takes (sent in pieces), in
    /// milliseconds, so a download can be interrupted half-way.
    #[arg(long, default_value_t = 0)]
    download_ms: u64,
    /// Call back when a task ends, for submits that name a callback URL
    /// (replicate, fal, kling, luma, seedance).
    #[arg(long)]
    callbacks: bool,
    /// Share of callbacks never sent (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    callback_drop_rate: f64,
    /// Send every callback twice.
    #[arg(long)]
    callback_duplicate: bool,
    /// Wait this long after a task ends before calling back, in milliseconds.
    #[arg(long, default_value_t = 0)]
    callback_delay_ms: u64,
    /// Before each callback, send a forged one (a wrong token, or for
    /// replicate with --webhook-secret a wrong signature).
    #[arg(long)]
    callback_forge: bool,
    /// Call back once while a task is still working, before its submit is answered.
    #[arg(long)]
    callback_early: bool,
    /// After each callback, send a stale one (the task still running).
    #[arg(long)]
    callback_reorder: bool,
    /// The size of each output video in bytes: a real, playable MP4 padded
    /// to that size (default: the 23 KB sample as it is).
    #[arg(long, default_value_t = 0)]
    video_bytes: u64,
    /// Replicate's webhook signing secret (whsec_…): its callbacks are signed.
    #[arg(long)]
    webhook_secret: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    for (name, rate) in [
        ("--fail-rate", cli.fail_rate),
        ("--rate-limit-rate", cli.rate_limit_rate),
        ("--permanent-fail-rate", cli.permanent_fail_rate),
        ("--hang-rate", cli.hang_rate),
        ("--callback-drop-rate", cli.callback_drop_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            anyhow::bail!("{name} must be between 0.0 and 1.0, not {rate}");
        }
    }
    let handle = start(
        SimConfig {
            latency: Duration::from_millis(cli.latency_ms),
            generation: Duration::from_millis(cli.generation_ms),
            fail_rate: cli.fail_rate,
            rate_limit_rate: cli.rate_limit_rate,
            retry_after_secs: cli.retry_after_secs,
            permanent_fail_rate: cli.permanent_fail_rate,
            hang_rate: cli.hang_rate,
            download: Duration::from_millis(cli.download_ms),
            dialect: cli.dialect,
            url_ttl: cli.url_ttl_ms.map(Duration::from_millis),
            video_bytes: cli.video_bytes,
            callbacks: CallbackFaults {
                enabled: cli.callbacks,
                drop_rate: cli.callback_drop_rate,
                duplicate: cli.callback_duplicate,
                delay: Duration::from_millis(cli.callback_delay_ms),
                forge: cli.callback_forge,
                early: cli.callback_early,
                reorder: cli.callback_reorder,
                webhook_secret: cli.webhook_secret,
            },
        },
        &cli.addr,
    )
    .await?;
    tracing::info!(addr = %handle.addr, dialect = ?cli.dialect, "genq-provider-sim listening");
    tokio::signal::ctrl_c().await?;
    handle.stop();
    Ok(())
}
