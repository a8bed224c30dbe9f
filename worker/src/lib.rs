//! genq's worker: the outbox relay, the start/poll consumers, provider calls
//! and settlement, webhook deliveries, and the worker's `/metrics`.

pub mod acks;
pub mod archive;
pub mod gate;
pub mod handler;
pub mod relay;
pub mod runner;
pub mod settle;
pub mod step;
pub mod sweeper;
pub mod webhooks;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use genq_broker::Topology;
use genq_core::config::Settings;
use genq_core::telemetry;
use genq_providers::provider::{Providers, VideoProvider};
use genq_store::db;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use handler::Handler;
pub use runner::Runner;

pub struct Worker {
    runner: Runner,
    metrics_listener: TcpListener,
}

impl Worker {
    /// Connects to the database (creating and migrating it if needed) and
    /// binds the metrics address; the broker is connected when running.
    /// One adapter per configured provider; `provider` replaces the default's.
    pub async fn build(
        settings: Settings,
        provider: Option<Arc<dyn VideoProvider>>,
    ) -> anyhow::Result<Self> {
        let pool = db::connect_and_migrate(&settings.database).await?;
        let providers = std::sync::Arc::new(Providers::build(&settings, provider)?);
        let settler = settle::Settler::spawn(
            pool.clone(),
            settings.worker.settle_batch,
            settings.worker.settle_in_flight,
        );
        let metrics_listener = TcpListener::bind(&settings.worker.metrics_addr).await?;
        Ok(Self {
            runner: Runner {
                topology: Arc::new(Topology::new(&settings)),
                videos: genq_providers::storage::VideoStore::new(&settings)?,
                webhook_client: Arc::new(webhooks::WebhookClient::new(&settings.webhooks)?),
                settings: Arc::new(settings),
                pool,
                providers,
                settler,
                processed: Arc::default(),
                kill: CancellationToken::new(),
                crash_before_ack: Arc::default(),
                events_bell: genq_store::store::outbox::Doorbell::job_events(),
            },
            metrics_listener,
        })
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(0)
    }

    /// Hooks for tests: a crash switch and the count of deliveries handled.
    #[cfg(feature = "test-hooks")]
    pub fn test_hooks(&self) -> TestHooks {
        TestHooks {
            kill: self.runner.kill.clone(),
            processed: self.runner.processed.clone(),
            crash_before_ack: self.runner.crash_before_ack.clone(),
        }
    }

    /// Runs until `shutdown`: stops consuming, drains in-flight deliveries
    /// (bounded by `worker.shutdown_grace_secs`), then returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let kill = self.runner.kill.clone();
        let handle = telemetry::metrics_handle();
        let metrics = Router::new()
            .route("/metrics", get(move || std::future::ready(handle.render())))
            .route("/healthz", get(|| std::future::ready("ok")));
        let stop = shutdown.clone();
        let kill2 = kill.clone();
        let server = tokio::spawn(async move {
            axum::serve(self.metrics_listener, metrics)
                .with_graceful_shutdown(async move {
                    tokio::select! { _ = stop.cancelled() => {}, _ = kill2.cancelled() => {} }
                })
                .await
        });
        let result = self.runner.run(shutdown).await;
        server.abort();
        result
    }
}

/// What tests reach inside a worker (feature `test-hooks`, never in the binary).
#[cfg(feature = "test-hooks")]
#[derive(Clone)]
pub struct TestHooks {
    /// Cancel to drop everything at once, as a crash would.
    pub kill: CancellationToken,
    /// Deliveries handled and acked so far.
    pub processed: Arc<std::sync::atomic::AtomicU64>,
    /// Set: the worker crashes at its next ack instead of sending it
    /// (after the commit of what it would have acked).
    pub crash_before_ack: Arc<std::sync::atomic::AtomicBool>,
}
