//! Every exchange and queue of one deployment, named from its prefix and
//! declared in one place, each option with the reason it is there.

use std::time::Duration;

use genq_core::config::Settings;
use genq_core::messages::{POLL_KEY, START_KEY, WEBHOOK_KEY};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// Delays the wait queues offer, in milliseconds. Per-message TTLs only expire
/// at a queue's head, so each delay is its own queue with a fixed TTL.
pub const DELAY_TIERS_MS: [u64; 9] = [
    100, 250, 1_000, 2_000, 5_000, 15_000, 30_000, 60_000, 300_000,
];

/// The longer delays of webhook retries (5 min, 30 min, 2 h, 5 h, 10 h, the
/// steps of the Standard Webhooks schedule), for webhook messages only. A
/// delay between tiers is made of several waits: a woken delivery that is
/// not due yet waits again for what remains (see `tier_for_webhook`).
pub const WEBHOOK_DELAY_TIERS_MS: [u64; 5] = [
    5 * 60_000,
    30 * 60_000,
    2 * 3_600_000,
    5 * 3_600_000,
    10 * 3_600_000,
];

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
    /// The webhook deliveries' queue: its own consumer, so that a slow or
    /// dead endpoint never holds a job's delivery.
    pub fn webhook_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }
    pub fn webhook_delay_exchange(&self, tier_ms: u64) -> String {
        format!("{}.webhook-delay.{tier_ms}", self.prefix)
    }
    pub fn webhook_wait_queue(&self, tier_ms: u64) -> String {
        format!("{}.webhook-wait.{tier_ms}", self.prefix)
    }
    /// Where a webhook message waits for `delay` at most: the longest tier
    /// (short ones shared with the jobs, long ones of the webhooks) not
    /// above it, and at least the shortest.
    pub fn webhook_delay_for(&self, delay: Duration) -> String {
        let ms = delay.as_millis() as u64;
        match WEBHOOK_DELAY_TIERS_MS.iter().rev().find(|t| **t <= ms) {
            Some(long) => self.webhook_delay_exchange(*long),
            None => self.delay_exchange(tier_at_most(delay)),
        }
    }

    /// Declares everything; idempotent, so every worker does it at start.
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
            (self.webhook_queue(), WEBHOOK_KEY),
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
            let (exchange, queue) = (self.delay_exchange(tier), self.wait_queue(tier));
            self.declare_delay(channel, &exchange, &queue, tier, None)
                .await?;
        }
        // Webhook retries' long delays: the same shape, one tier per delay,
        // whose expired messages always come back as webhook messages.
        for tier in WEBHOOK_DELAY_TIERS_MS {
            let exchange = self.webhook_delay_exchange(tier);
            let queue = self.webhook_wait_queue(tier);
            self.declare_delay(channel, &exchange, &queue, tier, Some(WEBHOOK_KEY))
                .await?;
        }
        Ok(())
    }

    /// One delay tier: a fanout `exchange` into `queue`, whose messages wait
    /// `tier_ms`, then dead-letter into the work exchange, with their own
    /// routing key or `routing_key` when given.
    async fn declare_delay(
        &self,
        channel: &Channel,
        exchange: &str,
        queue: &str,
        tier_ms: u64,
        routing_key: Option<&str>,
    ) -> lapin::Result<()> {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        // The delay itself: every message waits exactly this long.
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(tier_ms as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&self.work_exchange()),
        );
        if let Some(key) = routing_key {
            // Back to this key's queue whatever key it was published with.
            args.insert("x-dead-letter-routing-key".into(), string(key));
        }
        // Expired messages move only once the work exchange confirmed
        // them, so a delayed message is never dropped on the way back.
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        // Required by at-least-once: a full queue refuses new publishes
        // (the publisher sees a nack) rather than dropping its head.
        args.insert("x-overflow".into(), string("reject-publish"));
        declare_bound(channel, queue, args, exchange, "").await
    }

    /// The messages ready in the start queue, read without declaring it (the
    /// workers declare the topology): a publisher of start messages checks
    /// with it that there is somewhere to publish. Declaring quorum queues
    /// from several processes at once can fail in the broker; a passive
    /// declare never races. A missing queue fails (and closes `channel`).
    pub async fn start_queue_depth(&self, channel: &Channel) -> lapin::Result<u32> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(
                self.start_queue().as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await?;
        Ok(queue.message_count())
    }

    /// Deletes every queue and exchange of the topology (test and chaos runs).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for q in self.all_queues() {
            channel.queue_delete(q.into(), Default::default()).await?;
        }
        let mut exchanges = vec![self.work_exchange(), self.dead_letter_exchange()];
        exchanges.extend(DELAY_TIERS_MS.iter().map(|t| self.delay_exchange(*t)));
        exchanges.extend(
            WEBHOOK_DELAY_TIERS_MS
                .iter()
                .map(|t| self.webhook_delay_exchange(*t)),
        );
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
            self.webhook_queue(),
            self.dead_letter_queue(),
        ];
        queues.extend(DELAY_TIERS_MS.iter().map(|t| self.wait_queue(*t)));
        queues.extend(
            WEBHOOK_DELAY_TIERS_MS
                .iter()
                .map(|t| self.webhook_wait_queue(*t)),
        );
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

/// An AMQP string value.
pub fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_round_the_right_way() {
        assert_eq!(tier_at_most(Duration::from_millis(10)), 100);
        assert_eq!(tier_at_most(Duration::from_millis(1_500)), 1_000);
        assert_eq!(tier_at_most(Duration::from_secs(3_600)), 300_000);
        assert_eq!(tier_at_most(Duration::from_secs(120)), 60_000);
        assert_eq!(tier_at_least(Duration::from_millis(1_500)), 2_000);
        assert_eq!(tier_at_least(Duration::from_secs(1)), 1_000);
        assert_eq!(tier_at_least(Duration::from_secs(3_600)), 300_000);
        assert_eq!(tier_at_least(Duration::from_secs(120)), 300_000);
    }

    #[test]
    fn webhook_delays_take_the_longest_tier_not_above_them() {
        let t = Topology {
            prefix: "p".into(),
            delivery_limit: 5,
        };
        assert_eq!(t.webhook_delay_for(Duration::from_secs(5)), "p.delay.5000");
        assert_eq!(
            t.webhook_delay_for(Duration::from_secs(299)),
            "p.delay.60000"
        );
        assert_eq!(
            t.webhook_delay_for(Duration::from_secs(330)),
            "p.webhook-delay.300000"
        );
        assert_eq!(
            t.webhook_delay_for(Duration::from_secs(11 * 3600)),
            "p.webhook-delay.36000000"
        );
        assert_eq!(t.webhook_delay_for(Duration::ZERO), "p.delay.100");
    }
}
