//! Publishing a new job's start message from the API itself when it is idle
//! (`api.publish_when_idle`), so a lone submission does not wait for the
//! doorbell's NOTIFY to wake a relay in a worker.
//!
//! The outbox row is still written in the submit's transaction and stays the
//! source of truth: the API publishes it with a confirm, then marks it
//! published, as a relay would. A relay that takes the row meanwhile
//! publishes it a second time, which workers treat as a duplicate. When the
//! API is busy (another submission in flight), has no broker connection, or
//! the publish fails, it rings the doorbell instead: under load the relays'
//! batches cost less per job than one publish and one mark each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use genq_broker::{reconnect_backoff, Publisher, Topology};
use genq_core::config::Settings;
use genq_core::messages::{StartMessage, WorkMessage};
use genq_store::store::outbox::{self, Doorbell};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the connection is looked at (and remade when it was lost).
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Publishes in flight at most; past it (a slow broker) the relays publish.
const MAX_PUBLISHING: usize = 4;

/// A publish and its mark taking longer than this are given up on (the
/// relays publish the row) and the connection is made again.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The API's own publisher of start messages; cheap to clone.
#[derive(Clone)]
pub struct EagerPublisher {
    enabled: bool,
    /// A connected publisher, or `None` while there is none.
    publisher: Arc<RwLock<Option<Publisher>>>,
    /// Submissions this process is handling now (see [`Busy`]).
    submitting: Arc<AtomicUsize>,
    /// Publishes from here in flight.
    publishing: Arc<AtomicUsize>,
    topology: Arc<Topology>,
}

/// Counts one submission in flight while it lives.
pub struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EagerPublisher {
    pub fn new(settings: &Settings) -> Self {
        Self {
            enabled: settings.api.publish_when_idle,
            publisher: Arc::default(),
            submitting: Arc::default(),
            publishing: Arc::default(),
            topology: Arc::new(Topology::new(settings)),
        }
    }

    /// Marks a submission in flight until the returned guard is dropped.
    pub fn enter(&self) -> Busy {
        self.submitting.fetch_add(1, Ordering::Relaxed);
        Busy(self.submitting.clone())
    }

    /// After `job_id`'s submission committed: publishes its start message
    /// from here when this is the only submission in flight and the broker
    /// is connected, else (or when that fails) rings `bell` for the relays.
    pub fn publish_or_ring(&self, pool: &PgPool, job_id: Uuid, bell: &Doorbell) {
        let publisher = match self.publisher.read() {
            Ok(p) => p.clone(),
            Err(_) => None,
        };
        let idle = self.submitting.load(Ordering::Relaxed) <= 1;
        let Some(publisher) = publisher.filter(|_| self.enabled && idle) else {
            bell.ring();
            return;
        };
        if self.publishing.fetch_add(1, Ordering::Relaxed) >= MAX_PUBLISHING {
            self.publishing.fetch_sub(1, Ordering::Relaxed);
            bell.ring();
            return;
        }
        let (this, pool, bell) = (self.clone(), pool.clone(), bell.clone());
        tokio::spawn(async move {
            let published =
                tokio::time::timeout(PUBLISH_TIMEOUT, this.publish(&publisher, &pool, job_id))
                    .await;
            this.publishing.fetch_sub(1, Ordering::Relaxed);
            let failed = match published {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{e:#}"),
                Err(_) => format!("no confirm within {PUBLISH_TIMEOUT:?}"),
            };
            tracing::debug!(%job_id, error = failed, "publishing from the API failed; the relays will");
            bell.ring();
            // A lost or stuck connection is made again by `run`.
            this.forget();
        });
    }

    async fn publish(
        &self,
        publisher: &Publisher,
        pool: &PgPool,
        job_id: Uuid,
    ) -> anyhow::Result<()> {
        let message = WorkMessage::from(StartMessage::first(job_id));
        let body = serde_json::to_vec(&message.to_json())?;
        publisher
            .publish(
                &self.topology.work_exchange(),
                message.routing_key(),
                &body,
                Default::default(),
            )
            .await?;
        outbox::mark_job_published(pool, job_id, message.routing_key()).await?;
        metrics::counter!("genq_outbox_published_by_api_total").increment(1);
        Ok(())
    }

    fn forget(&self) {
        if let Ok(mut p) = self.publisher.write() {
            *p = None;
        }
        metrics::gauge!("genq_api_broker_connected").set(0.0);
    }

    /// Keeps a connected publisher until `shutdown` (reconnecting with
    /// backoff); does nothing when `api.publish_when_idle` is off.
    pub async fn run(self, settings: Arc<Settings>, shutdown: CancellationToken) {
        if !self.enabled {
            return;
        }
        let mut backoff = reconnect_backoff();
        // Held so the connection stays open while its publisher is in use.
        let mut connection: Option<lapin::Connection> = None;
        loop {
            let connected = connection.as_ref().is_some_and(|c| c.status().connected())
                && self
                    .publisher
                    .read()
                    .is_ok_and(|p| p.as_ref().is_some_and(|p| p.channel().status().connected()));
            let wait = if connected {
                CHECK_EVERY
            } else {
                self.forget();
                if let Some(old) = connection.take() {
                    close(old, "reconnecting").await;
                }
                let opened = tokio::select! {
                    opened = self.open(&settings) => opened,
                    _ = shutdown.cancelled() => break,
                };
                match opened {
                    Ok((c, p)) => {
                        connection = Some(c);
                        if let Ok(mut slot) = self.publisher.write() {
                            *slot = Some(p);
                        }
                        metrics::gauge!("genq_api_broker_connected").set(1.0);
                        backoff = reconnect_backoff();
                        CHECK_EVERY
                    }
                    Err(e) => {
                        let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                        tracing::debug!(error = %format!("{e:#}"), ?delay, "the API's broker connection failed; the relays publish meanwhile");
                        delay
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.forget();
        if let Some(c) = connection {
            close(c, "API stopping").await;
        }
    }

    async fn open(&self, settings: &Settings) -> anyhow::Result<(lapin::Connection, Publisher)> {
        let connection = genq_broker::connect(settings).await?;
        let ready = async {
            let publisher = Publisher::new(&connection).await?;
            // Declared by the workers; until one has run there is nowhere to
            // publish, and the relays will publish (this retries with backoff).
            self.topology.start_queue_depth(publisher.channel()).await?;
            anyhow::Ok(publisher)
        };
        match ready.await {
            Ok(publisher) => Ok((connection, publisher)),
            Err(e) => {
                close(connection, "no start queue yet").await;
                Err(e)
            }
        }
    }
}

/// Closes `connection`, waiting at most a second: a broken one may never answer.
async fn close(connection: lapin::Connection, reason: &str) {
    let closing = connection.close(200, reason.into());
    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
}
