//! The simulated broker: a private topology with the names genq publishes
//! to, whose delay exchanges route straight to the work queues (simulated
//! time: the seed decides when a delayed message comes back), drained after
//! every step into the simulator's pool of deliverable messages.

use genq_broker::{Topology, DELAY_TIERS_MS};
use genq_core::messages::{PollMessage, StartMessage, POLL_KEY, START_KEY, WEBHOOK_KEY};
use genq_worker::handler::WorkQueue;
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ExchangeKind};
use sqlx::PgPool;

/// A message the broker holds for delivery.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    pub key: &'static str,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn queue(&self) -> WorkQueue {
        match self.key {
            START_KEY => WorkQueue::Start,
            WEBHOOK_KEY => WorkQueue::Webhook,
            _ => WorkQueue::Poll,
        }
    }
}

/// What a step left in the broker.
#[derive(Debug, Default)]
pub struct Drained {
    pub work: Vec<Msg>,
    /// Dead letters moved into the archive (`dead_letters`).
    pub dead: usize,
}

pub struct Broker {
    channel: Channel,
    topology: Topology,
}

fn key_of(routing_key: &str) -> Option<&'static str> {
    match routing_key {
        START_KEY => Some(START_KEY),
        POLL_KEY => Some(POLL_KEY),
        WEBHOOK_KEY => Some(WEBHOOK_KEY),
        _ => None,
    }
}

impl Broker {
    /// Declares the topology on `connection`: exclusive, auto-deleted queues
    /// and auto-deleted exchanges, so nothing outlives the run.
    pub async fn declare(connection: &Connection, topology: Topology) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        let exchange = |kind| {
            (
                kind,
                ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
            )
        };
        let queue_opts = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let mut exchanges = vec![
            (topology.work_exchange(), exchange(ExchangeKind::Direct)),
            (
                topology.dead_letter_exchange(),
                exchange(ExchangeKind::Fanout),
            ),
        ];
        // The delay exchanges route by key straight to the work queues: the
        // simulator decides when a delayed message comes back.
        for tier in DELAY_TIERS_MS {
            exchanges.push((
                topology.delay_exchange(tier),
                exchange(ExchangeKind::Direct),
            ));
        }
        for (name, (kind, opts)) in &exchanges {
            channel
                .exchange_declare(
                    name.as_str().into(),
                    kind.clone(),
                    *opts,
                    FieldTable::default(),
                )
                .await?;
        }
        let mut bindings = vec![
            (topology.start_queue(), topology.work_exchange(), START_KEY),
            (topology.poll_queue(), topology.work_exchange(), POLL_KEY),
            // The simulated users subscribe no webhooks; their queue is here
            // so that a webhook message would be delivered like any other.
            (
                topology.webhook_queue(),
                topology.work_exchange(),
                WEBHOOK_KEY,
            ),
            (
                topology.dead_letter_queue(),
                topology.dead_letter_exchange(),
                "",
            ),
        ];
        for tier in DELAY_TIERS_MS {
            bindings.push((
                topology.start_queue(),
                topology.delay_exchange(tier),
                START_KEY,
            ));
            bindings.push((
                topology.poll_queue(),
                topology.delay_exchange(tier),
                POLL_KEY,
            ));
            bindings.push((
                topology.webhook_queue(),
                topology.delay_exchange(tier),
                WEBHOOK_KEY,
            ));
        }
        for (queue, exchange, key) in bindings {
            channel
                .queue_declare(queue.as_str().into(), queue_opts, FieldTable::default())
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(Self { channel, topology })
    }

    /// Takes everything out of the broker: work messages in a canonical
    /// order (so a batch's publish timing can't change the run), dead
    /// letters into the database's archive, as the worker's archiver does.
    pub async fn drain(&self, pool: &PgPool) -> anyhow::Result<Drained> {
        let mut out = Drained::default();
        let get = BasicGetOptions { no_ack: true };
        for queue in [
            self.topology.start_queue(),
            self.topology.poll_queue(),
            self.topology.webhook_queue(),
        ] {
            while let Some(m) = self.channel.basic_get(queue.as_str().into(), get).await? {
                let Some(key) = key_of(m.delivery.routing_key.as_str()) else {
                    anyhow::bail!("a message with routing key {}", m.delivery.routing_key);
                };
                out.work.push(Msg {
                    key,
                    body: m.delivery.data.clone(),
                });
            }
        }
        out.work.sort();
        let dead = self.topology.dead_letter_queue();
        while let Some(m) = self.channel.basic_get(dead.as_str().into(), get).await? {
            genq_broker::dead_letters::archive(pool, &m.delivery.properties, &m.delivery.data)
                .await?;
            out.dead += 1;
        }
        Ok(out)
    }
}

/// A message in words, with `alias` naming jobs.
/// The job a message is about (`None`: malformed, or a webhook delivery).
pub fn job_of(msg: &Msg) -> Option<uuid::Uuid> {
    match msg.queue() {
        WorkQueue::Start => match serde_json::from_slice::<StartMessage>(&msg.body).ok()? {
            StartMessage::Start { job_id, .. } | StartMessage::Granted { job_id, .. } => {
                Some(job_id)
            }
        },
        WorkQueue::Poll => match serde_json::from_slice::<PollMessage>(&msg.body).ok()? {
            PollMessage::Poll { job_id, .. } | PollMessage::Cancel { job_id } => Some(job_id),
        },
        WorkQueue::Webhook => None,
    }
}

pub fn describe(msg: &Msg, alias: impl Fn(uuid::Uuid) -> String) -> String {
    match msg.queue() {
        WorkQueue::Start => match serde_json::from_slice::<StartMessage>(&msg.body) {
            Ok(StartMessage::Start { job_id, attempt }) => {
                format!("start {} #{attempt}", alias(job_id))
            }
            Ok(StartMessage::Granted { job_id, attempt }) => {
                format!("granted {} #{attempt}", alias(job_id))
            }
            Err(_) => "start <malformed>".into(),
        },
        WorkQueue::Poll => match serde_json::from_slice::<PollMessage>(&msg.body) {
            Ok(PollMessage::Poll {
                job_id,
                seq,
                errors,
            }) => format!("poll {} seq {seq} errors {errors}", alias(job_id)),
            Ok(PollMessage::Cancel { job_id }) => format!("cancel-at-provider {}", alias(job_id)),
            Err(_) => "poll <malformed>".into(),
        },
        WorkQueue::Webhook => "webhook delivery".into(),
    }
}
