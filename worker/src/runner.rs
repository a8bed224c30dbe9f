//! The worker process: connects (and reconnects, with backoff) to the broker,
//! runs the outbox relay, the start/poll consumers and the webhook consumer
//! (its own channel, prefetch and concurrency, so that slow endpoints never
//! hold jobs) and on shutdown stops consuming and drains in-flight work.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use genq_broker::{reconnect_backoff, Publisher, Topology, CONNECT_TIMEOUT};
use genq_core::config::Settings;
use genq_providers::provider::Providers;
use genq_store::store::outbox::Doorbell;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::acks::Acker;
use crate::handler::{Handler, WorkQueue};
use crate::relay;

/// Delay before a delivery that hit an infrastructure error is tried again.
const INFRA_RETRY_TIER_MS: u64 = 5_000;

/// How one session (one broker connection) ended.
enum SessionEnd {
    Stopped,
    Lost(anyhow::Error),
}

pub struct Runner {
    pub(crate) settings: Arc<Settings>,
    pub(crate) pool: PgPool,
    pub(crate) providers: Arc<Providers>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) videos: genq_providers::storage::VideoStore,
    pub(crate) webhook_client: Arc<crate::webhooks::WebhookClient>,
    /// Deliveries this worker handled and acked (read by tests).
    pub(crate) processed: Arc<AtomicU64>,
    /// Drops everything at once, as a crash would; only tests cancel it.
    pub(crate) kill: CancellationToken,
    /// Test hook: crash at the next ack instead of sending it.
    pub(crate) crash_before_ack: Arc<AtomicBool>,
    /// The steps' moves, batched across deliveries (one per process).
    pub(crate) settler: crate::settle::Settler,
    /// Rung after each handled delivery: wakes the APIs' event feeds.
    pub(crate) events_bell: Doorbell,
}

impl Runner {
    /// Runs sessions until `shutdown` (then drains in-flight work).
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let kill = self.kill.clone();
        let bell_stop = shutdown.child_token();
        tokio::spawn(
            self.events_bell
                .clone()
                .run(self.pool.clone(), bell_stop.clone()),
        );
        let _stop_bell = bell_stop.drop_guard();
        let mut backoff = reconnect_backoff();
        loop {
            if shutdown.is_cancelled() || kill.is_cancelled() {
                return Ok(());
            }
            match self.session(&shutdown, &kill).await {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Lost(e) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %format!("{e:#}"), ?delay, "worker lost its connection; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = kill.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    async fn session(&self, shutdown: &CancellationToken, kill: &CancellationToken) -> SessionEnd {
        let connection = tokio::select! {
            c = genq_broker::connect(&self.settings) => match c {
                Ok(c) => c,
                Err(e) => return SessionEnd::Lost(e),
            },
            _ = shutdown.cancelled() => return SessionEnd::Stopped,
            _ = kill.cancelled() => return SessionEnd::Stopped,
        };
        let end = self.consume(&connection, shutdown, kill).await;
        // Closing hands unacked deliveries back to the broker for another worker.
        let _ = connection.close(200, "worker session over".into()).await;
        end
    }

    async fn consume(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
        kill: &CancellationToken,
    ) -> SessionEnd {
        let setup = async {
            let publisher = Publisher::new(connection).await?;
            self.topology.declare(publisher.channel()).await?;
            let channel = connection.create_channel().await?;
            // Prefetch bounds what the broker pushes to this worker per consumer.
            channel
                .basic_qos(self.settings.queue.prefetch, BasicQosOptions::default())
                .await?;
            let start = channel
                .basic_consume(
                    self.topology.start_queue().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let poll = channel
                .basic_consume(
                    self.topology.poll_queue().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            // Webhooks on a channel of their own, prefetching only what
            // their own concurrency can send.
            let webhook_channel = connection.create_channel().await?;
            webhook_channel
                .basic_qos(
                    self.settings.webhooks.concurrency as u16,
                    BasicQosOptions::default(),
                )
                .await?;
            let webhooks = webhook_channel
                .basic_consume(
                    self.topology.webhook_queue().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            anyhow::Ok((publisher, channel, start, poll, webhook_channel, webhooks))
        };
        // Bounded: a broker that is still starting may never answer.
        let (publisher, channel, start, poll, webhook_channel, webhooks) =
            match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return SessionEnd::Lost(e),
                Err(_) => {
                    return SessionEnd::Lost(anyhow::anyhow!("setting up the session timed out"))
                }
            };
        let handler = Handler {
            pool: self.pool.clone(),
            publisher: publisher.clone(),
            topology: self.topology.clone(),
            providers: self.providers.clone(),
            settings: self.settings.clone(),
            videos: self.videos.clone(),
            events_bell: self.events_bell.clone(),
            webhooks: crate::webhooks::WebhookSender {
                pool: self.pool.clone(),
                publisher: publisher.clone(),
                topology: self.topology.clone(),
                settings: self.settings.clone(),
                client: self.webhook_client.clone(),
            },
            settler: self.settler.clone(),
        };
        let session_over = CancellationToken::new();
        let relay = tokio::spawn({
            let (pool, publisher, over) =
                (self.pool.clone(), publisher.clone(), session_over.clone());
            let topology = self.topology.clone();
            let w = &self.settings.worker;
            let (batch, interval) = (w.relay_batch, Duration::from_millis(w.relay_interval_ms));
            async move { relay::run(pool, publisher, topology, batch, interval, over).await }
        });
        let sweeper = tokio::spawn(crate::sweeper::run(
            handler.clone(),
            Duration::from_millis(self.settings.worker.sweep_interval_ms),
            session_over.clone(),
        ));
        let dispatcher = tokio::spawn(crate::gate::run(handler.clone(), session_over.clone()));
        let archiver = match connection.create_channel().await {
            Ok(ch) => tokio::spawn(archive_dead_letters(
                ch,
                self.pool.clone(),
                self.topology.dead_letter_queue(),
                session_over.clone(),
            )),
            Err(e) => {
                session_over.cancel();
                return SessionEnd::Lost(e.into());
            }
        };
        let acker_for = |channel: &lapin::Channel| {
            Acker::start(
                channel.clone(),
                self.processed.clone(),
                self.crash_before_ack.clone(),
                kill.clone(),
                session_over.clone(),
            )
        };
        let (acker, acks) = acker_for(&channel);
        let (webhook_acker, webhook_acks) = acker_for(&webhook_channel);
        tracing::info!(prefix = %self.topology.prefix, "worker consuming");

        let start_tag = start.tag();
        let poll_tag = poll.tag();
        let webhooks_tag = webhooks.tag();
        let mut deliveries = futures::stream::select(
            futures::stream::select(
                start.map(|d| (WorkQueue::Start, d)),
                poll.map(|d| (WorkQueue::Poll, d)),
            ),
            webhooks.map(|d| (WorkQueue::Webhook, d)),
        );
        let limit = Arc::new(Semaphore::new(self.settings.worker.concurrency));
        let webhook_limit = Arc::new(Semaphore::new(self.settings.webhooks.concurrency));
        let mut in_flight = JoinSet::new();
        let (mut relay, mut archiver) = (relay, archiver);
        // Set once a task ended, so its handle is not awaited twice.
        let (mut relay_ended, mut archiver_ended) = (false, false);
        let end = loop {
            tokio::select! {
                _ = kill.cancelled() => {
                    // A crash: abandon everything; the broker requeues on close.
                    in_flight.abort_all();
                    relay.abort();
                    sweeper.abort();
                    dispatcher.abort();
                    archiver.abort();
                    return SessionEnd::Stopped;
                }
                _ = shutdown.cancelled() => break SessionEnd::Stopped,
                r = &mut relay, if !relay_ended => {
                    relay_ended = true;
                    break SessionEnd::Lost(task_ended("outbox relay", r));
                }
                r = &mut archiver, if !archiver_ended => {
                    // Dead letters would pile up unarchived: start a new session.
                    archiver_ended = true;
                    break SessionEnd::Lost(task_ended("dead-letter archiver", r));
                }
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(e) = done { tracing::error!(error = %e, "delivery task panicked"); }
                }
                next = deliveries.next() => match next {
                    Some((queue, Ok(delivery))) => {
                        let (limit, acker) = match queue {
                            WorkQueue::Webhook => (webhook_limit.clone(), webhook_acker.clone()),
                            _ => (limit.clone(), acker.clone()),
                        };
                        acker.delivered(delivery.delivery_tag);
                        let handler = handler.clone();
                        // Prefetch bounds the tasks; the semaphore bounds the
                        // provider calls, without blocking this loop (so a
                        // shutdown or kill is seen at once).
                        in_flight.spawn(async move {
                            let permit = limit.acquire_owned().await.expect("semaphore open");
                            process(&handler, &acker, queue, delivery).await;
                            drop(permit);
                        });
                    }
                    Some((_, Err(e))) => break SessionEnd::Lost(e.into()),
                    None => break SessionEnd::Lost(anyhow::anyhow!("consumer canceled by the broker")),
                }
            }
        };
        // Stop taking new deliveries, then let in-flight ones finish (bounded).
        let _ = channel
            .basic_cancel(start_tag, BasicCancelOptions::default())
            .await;
        let _ = channel
            .basic_cancel(poll_tag, BasicCancelOptions::default())
            .await;
        let _ = webhook_channel
            .basic_cancel(webhooks_tag, BasicCancelOptions::default())
            .await;
        let grace = Duration::from_secs(self.settings.worker.shutdown_grace_secs);
        let drained = tokio::time::timeout(grace, async {
            while let Some(done) = in_flight.join_next().await {
                if let Err(e) = done {
                    tracing::error!(error = %e, "delivery task panicked");
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("in-flight deliveries did not finish in time; handing them back");
            in_flight.abort_all();
        }
        session_over.cancel();
        // What finished is acked before the channels close.
        let _ = acks.await;
        let _ = webhook_acks.await;
        if !relay_ended {
            let _ = relay.await;
        }
        let _ = sweeper.await;
        let _ = dispatcher.await;
        if !archiver_ended {
            let _ = archiver.await;
        }
        tracing::info!("worker session ended");
        end
    }
}

/// Why a session task that should run until the session ends has ended.
fn task_ended(
    task: &str,
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Error {
    let e = match result {
        Ok(Ok(())) => anyhow::anyhow!("stopped"),
        Ok(Err(e)) => e,
        Err(e) => anyhow::anyhow!("panicked: {e}"),
    };
    e.context(task.to_owned())
}

/// Handles one delivery and has it acked; an infrastructure failure sends
/// the message round a wait queue (which doesn't count as a redelivery) or,
/// if even that fails, hands it back to the broker.
async fn process(
    handler: &Handler,
    acker: &Acker,
    queue: WorkQueue,
    delivery: lapin::message::Delivery,
) {
    let tag = delivery.delivery_tag;
    // A span of the trace the message carries: the step's own spans (and
    // whatever it publishes) join that trace.
    let queue_name = || match queue {
        WorkQueue::Start => handler.topology.start_queue(),
        WorkQueue::Poll => handler.topology.poll_queue(),
        WorkQueue::Webhook => handler.topology.webhook_queue(),
    };
    let span = genq_broker::trace::consumer_span(
        queue_name,
        &delivery.properties,
        delivery.routing_key.as_str(),
    );
    match handler
        .handle(queue, &delivery.data)
        .instrument(span.clone())
        .await
    {
        Ok(()) => acker.ack(tag),
        Err(e) => {
            tracing::warn!(error = %e, ?queue, "delivery failed; retrying later");
            metrics::counter!("genq_infra_errors_total").increment(1);
            // The same trace: the retry is a new span of it.
            let delayed = handler
                .publisher
                .publish_traced(
                    &handler.topology.delay_exchange(INFRA_RETRY_TIER_MS),
                    queue.routing_key(),
                    &delivery.data,
                )
                .instrument(span)
                .await;
            match delayed {
                Ok(()) => acker.ack(tag),
                Err(_) => {
                    let nack = BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    };
                    if let Err(e) = delivery.nack(nack).await {
                        tracing::warn!(error = %e, "nack failed; the message will be redelivered");
                    }
                    // Only once the nack is sent: no multiple ack may cover it.
                    acker.forget(tag);
                }
            }
        }
    }
}

/// Moves dead letters from the broker into the database archive, acking
/// each once stored; operators work them from there. Returns `Ok` only when
/// stopped; a consumer that ends or fails is an error, so the session
/// restarts rather than leaving dead letters unarchived in silence.
async fn archive_dead_letters(
    channel: lapin::Channel,
    pool: PgPool,
    queue: String,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the dead-letter consumer was canceled"),
        };
        match genq_broker::dead_letters::archive(&pool, &delivery.properties, &delivery.data).await
        {
            Ok(id) => {
                tracing::warn!(dead_letter = id, "dead letter archived");
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "archiving a dead letter failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                delivery
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await?;
            }
        }
    }
}
