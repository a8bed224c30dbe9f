//! RabbitMQ: the topology (declared in one place), the typed messages of each
//! queue, and a publisher that waits for the broker's confirm.

use std::time::Duration;

use anyhow::{bail, Context};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Settings;
use crate::store::OutboxMessage;

/// Routing key of start messages on the work exchange.
pub const START_KEY: &str = "start";
/// Routing key of poll messages on the work exchange.
pub const POLL_KEY: &str = "poll";

/// Delays the wait queues offer, in milliseconds. Per-message TTLs only expire
/// at a queue's head, so each delay is its own queue with a fixed TTL.
pub const DELAY_TIERS_MS: [u64; 8] = [100, 250, 1_000, 2_000, 5_000, 15_000, 30_000, 60_000];

/// Header naming why a message was dead-lettered by genq.
pub const REASON_HEADER: &str = "x-genq-reason";
/// Header naming the job a dead letter belongs to.
pub const JOB_HEADER: &str = "x-genq-job-id";
/// Header naming the queue a dead letter came from.
pub const SOURCE_HEADER: &str = "x-genq-source-queue";

/// The payload of the start queue: submit the job to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StartMessage {
    Start {
        job_id: Uuid,
        /// 1 for the first try; retries after transient errors count up.
        attempt: u32,
    },
}

/// The payload of the poll queue: ask the provider how the task is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PollMessage {
    Poll {
        job_id: Uuid,
        /// Must match the job's `poll_seq`; a stale or duplicate poll is dropped.
        seq: i32,
        /// Consecutive transient errors while polling.
        errors: u32,
    },
    /// Ask the provider to cancel the task of a job canceled in genq.
    Cancel { job_id: Uuid },
}

impl StartMessage {
    pub fn job_id(&self) -> Uuid {
        match self {
            Self::Start { job_id, .. } => *job_id,
        }
    }
}

impl PollMessage {
    pub fn job_id(&self) -> Uuid {
        match self {
            Self::Poll { job_id, .. } | Self::Cancel { job_id } => *job_id,
        }
    }
}

/// Every name of one deployment's topology, derived from its prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(settings: &Settings) -> Self {
        Self {
            prefix: settings.queue.prefix.clone(),
            delivery_limit: settings.queue.delivery_limit,
        }
    }

    /// Direct exchange for work: `start` and `poll` routing keys.
    pub fn work_exchange(&self) -> String {
        format!("{}.work", self.prefix)
    }
    pub fn start_queue(&self) -> String {
        format!("{}.start", self.prefix)
    }
    pub fn poll_queue(&self) -> String {
        format!("{}.poll", self.prefix)
    }
    /// Fanout exchange every dead letter goes through.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn delay_exchange(&self, tier_ms: u64) -> String {
        format!("{}.delay.{tier_ms}", self.prefix)
    }
    pub fn wait_queue(&self, tier_ms: u64) -> String {
        format!("{}.wait.{tier_ms}", self.prefix)
    }

    /// The start message of a new job, as the API writes it to the outbox.
    pub fn start_message(&self, job_id: Uuid) -> OutboxMessage {
        OutboxMessage {
            exchange: self.work_exchange(),
            routing_key: START_KEY.into(),
            payload: serde_json::to_value(StartMessage::Start { job_id, attempt: 1 })
                .expect("start message serializes"),
        }
    }

    /// Declares everything; idempotent, so every process does it at start.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };

        // Dead letters: a fanout exchange into one quorum queue that operators read.
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Fanout,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        // Quorum queues: replicated, and the only kind with a delivery limit.
        args.insert("x-queue-type".into(), string("quorum"));
        declare_bound(
            channel,
            &self.dead_letter_queue(),
            args,
            &self.dead_letter_exchange(),
            "",
        )
        .await?;

        // Work: a direct exchange routing `start` and `poll` to their queues.
        channel
            .exchange_declare(
                self.work_exchange().into(),
                ExchangeKind::Direct,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        for (queue, key) in [
            (self.start_queue(), START_KEY),
            (self.poll_queue(), POLL_KEY),
        ] {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), string("quorum"));
            // A message the broker had to redeliver this often (workers
            // crashing on it) is poison: dead-letter it instead of looping.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongInt(self.delivery_limit as i32),
            );
            // Rejected and over-delivered messages go to the dead-letter queue.
            args.insert(
                "x-dead-letter-exchange".into(),
                string(&self.dead_letter_exchange()),
            );
            declare_bound(channel, &queue, args, &self.work_exchange(), key).await?;
        }

        // Delays: per tier a fanout exchange into a wait queue whose messages
        // expire after the tier's TTL and dead-letter, keeping their routing
        // key (`start` or `poll`), back into the work exchange.
        for tier in DELAY_TIERS_MS {
            channel
                .exchange_declare(
                    self.delay_exchange(tier).into(),
                    ExchangeKind::Fanout,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await?;
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), string("quorum"));
            // The delay itself: every message waits exactly this long.
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(tier as i64));
            args.insert(
                "x-dead-letter-exchange".into(),
                string(&self.work_exchange()),
            );
            // Expired messages move only once the work exchange confirmed
            // them, so a delayed message is never dropped on the way back.
            args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
            // Required by at-least-once: a full queue refuses new publishes
            // (the publisher sees a nack) rather than dropping its head.
            args.insert("x-overflow".into(), string("reject-publish"));
            declare_bound(
                channel,
                &self.wait_queue(tier),
                args,
                &self.delay_exchange(tier),
                "",
            )
            .await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange of the topology (test and chaos runs).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for q in self.all_queues() {
            channel.queue_delete(q.into(), Default::default()).await?;
        }
        let mut exchanges = vec![self.work_exchange(), self.dead_letter_exchange()];
        exchanges.extend(DELAY_TIERS_MS.iter().map(|t| self.delay_exchange(*t)));
        for e in exchanges {
            channel
                .exchange_delete(e.into(), Default::default())
                .await?;
        }
        Ok(())
    }

    /// Every queue of the topology, for tests and operators.
    pub fn all_queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.start_queue(),
            self.poll_queue(),
            self.dead_letter_queue(),
        ];
        queues.extend(DELAY_TIERS_MS.iter().map(|t| self.wait_queue(*t)));
        queues
    }
}

/// Declares a durable queue with `args` and binds it to `exchange` with `key`.
async fn declare_bound(
    channel: &Channel,
    queue: &str,
    args: FieldTable,
    exchange: &str,
    key: &str,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(queue.into(), durable, args).await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The wait tier for a delay: the longest tier not above it (at least the shortest).
pub fn tier_at_most(delay: Duration) -> u64 {
    let ms = delay.as_millis() as u64;
    DELAY_TIERS_MS
        .iter()
        .rev()
        .copied()
        .find(|t| *t <= ms)
        .unwrap_or(DELAY_TIERS_MS[0])
}

/// The wait tier for a delay that must not be shortened (a `Retry-After`).
pub fn tier_at_least(delay: Duration) -> u64 {
    let ms = delay.as_millis() as u64;
    DELAY_TIERS_MS
        .iter()
        .copied()
        .find(|t| *t >= ms)
        .unwrap_or(DELAY_TIERS_MS[DELAY_TIERS_MS.len() - 1])
}

pub fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Reads a string header of a message.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(&ShortString::from(name))? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// How long a connection attempt may take: a broker that is starting can
/// accept TCP and never finish the AMQP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection to the configured broker, or fails within [`CONNECT_TIMEOUT`].
pub async fn connect(settings: &Settings) -> anyhow::Result<Connection> {
    let connecting = Connection::connect(
        settings.amqp.url.expose_secret(),
        ConnectionProperties::default(),
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.context("connecting to RabbitMQ"),
        Err(_) => bail!("connecting to RabbitMQ timed out after {CONNECT_TIMEOUT:?}"),
    }
}

/// A channel in confirm mode: each publish returns once the broker took
/// responsibility for the message (persisted, routed), or fails.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Starts a persistent, mandatory publish and returns its pending confirm,
    /// so a batch can be sent before the confirms are awaited.
    pub async fn start(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> anyhow::Result<lapin::PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        Ok(self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                // Mandatory: an unroutable message comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await?)
    }

    /// Publishes and waits for the confirm; a nack or a returned message is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        let pending = self.start(exchange, routing_key, body, headers).await?;
        check_confirm(pending.await?)
    }

    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(message)?;
        self.publish(exchange, routing_key, &body, FieldTable::default())
            .await
    }
}

/// Turns a broker confirm into success only for an ack of a routed message.
pub fn check_confirm(confirm: lapin::Confirmation) -> anyhow::Result<()> {
    use lapin::Confirmation;
    let outcome = match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(format!(
            "message returned unroutable: {}",
            returned.reply_text
        )),
        Confirmation::Nack(_) => Err("broker refused the message (nack)".to_owned()),
    };
    metrics::counter!(
        "genq_publish_confirms_total",
        "outcome" => if outcome.is_ok() { "ack" } else { "nack" }
    )
    .increment(1);
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => bail!(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_round_the_right_way() {
        assert_eq!(tier_at_most(Duration::from_millis(10)), 100);
        assert_eq!(tier_at_most(Duration::from_millis(1_500)), 1_000);
        assert_eq!(tier_at_most(Duration::from_secs(3_600)), 60_000);
        assert_eq!(tier_at_least(Duration::from_millis(1_500)), 2_000);
        assert_eq!(tier_at_least(Duration::from_secs(1)), 1_000);
        assert_eq!(tier_at_least(Duration::from_secs(3_600)), 60_000);
    }

    #[test]
    fn messages_round_trip_and_refuse_unknown_fields() {
        let m = PollMessage::Poll {
            job_id: Uuid::nil(),
            seq: 3,
            errors: 0,
        };
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<PollMessage>(&json).unwrap(), m);
        assert!(serde_json::from_str::<StartMessage>(
            r#"{"type":"start","job_id":"00000000-0000-0000-0000-000000000000","attempt":1,"x":1}"#
        )
        .is_err());
    }
}
