//! The typed payloads of the work queues and their routing keys: what the
//! outbox stores and the broker carries, independent of the broker client.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Routing key of start messages on the work exchange.
pub const START_KEY: &str = "start";
/// Routing key of poll messages on the work exchange.
pub const POLL_KEY: &str = "poll";
/// Routing key of webhook messages on the work exchange (their own queue).
pub const WEBHOOK_KEY: &str = "webhook";

/// The payload of the start queue: submit the job to the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StartMessage {
    Start {
        job_id: Uuid,
        /// 1 for the first try; retries after transient errors count up.
        attempt: u32,
    },
    /// The job waited in a line and was granted a slot: the gate already
    /// claimed it for `attempt` (it is `submitting`); submit it, no claim.
    Granted { job_id: Uuid, attempt: u32 },
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

/// The payload of the webhooks queue: a wake-up for one delivery. The
/// delivery's row is the truth (when to send, whether still pending); the
/// message only says which row to look at. Written by the trigger on
/// `job_events` as JSON (see the migration `webhooks`) and by replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WebhookMessage {
    Deliver {
        delivery_id: i64,
        /// Must match the delivery's `seq`; a stale or duplicate wake-up is dropped.
        seq: i32,
    },
}

impl StartMessage {
    /// The first start message of a job (or of a replayed reservation).
    pub fn first(job_id: Uuid) -> Self {
        Self::Start { job_id, attempt: 1 }
    }

    pub fn job_id(&self) -> Uuid {
        match self {
            Self::Start { job_id, .. } | Self::Granted { job_id, .. } => *job_id,
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

/// A message for the work exchange: its routing key follows from its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkMessage {
    Start(StartMessage),
    Poll(PollMessage),
    Webhook(WebhookMessage),
}

impl WorkMessage {
    pub fn routing_key(&self) -> &'static str {
        match self {
            Self::Start(_) => START_KEY,
            Self::Poll(_) => POLL_KEY,
            Self::Webhook(_) => WEBHOOK_KEY,
        }
    }

    /// The job the message moves; a webhook message moves none (its outbox
    /// row must not make the sweeper think a job has work waiting).
    pub fn job_id(&self) -> Option<Uuid> {
        match self {
            Self::Start(m) => Some(m.job_id()),
            Self::Poll(m) => Some(m.job_id()),
            Self::Webhook(_) => None,
        }
    }

    /// The JSON body, as stored in the outbox and published.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::Start(m) => serde_json::to_value(m),
            Self::Poll(m) => serde_json::to_value(m),
            Self::Webhook(m) => serde_json::to_value(m),
        }
        .expect("work messages serialize")
    }
}

impl From<StartMessage> for WorkMessage {
    fn from(m: StartMessage) -> Self {
        Self::Start(m)
    }
}

impl From<PollMessage> for WorkMessage {
    fn from(m: PollMessage) -> Self {
        Self::Poll(m)
    }
}

impl From<WebhookMessage> for WorkMessage {
    fn from(m: WebhookMessage) -> Self {
        Self::Webhook(m)
    }
}

/// The job a message body names, if it parses as one of ours.
pub fn job_of(body: &[u8]) -> Option<Uuid> {
    serde_json::from_slice::<StartMessage>(body)
        .map(|m| m.job_id())
        .or_else(|_| serde_json::from_slice::<PollMessage>(body).map(|m| m.job_id()))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_routing_key_follows_the_type() {
        let start = WorkMessage::from(StartMessage::first(Uuid::nil()));
        assert_eq!(start.routing_key(), START_KEY);
        let body = serde_json::to_vec(&start.to_json()).unwrap();
        // The body a consumer reads back is the message that was stored.
        assert_eq!(
            WorkMessage::from(serde_json::from_slice::<StartMessage>(&body).unwrap()),
            start
        );
        assert_eq!(job_of(&body), Some(Uuid::nil()));
    }

    #[test]
    fn webhook_messages_have_their_own_key_and_no_job() {
        let m = WorkMessage::from(WebhookMessage::Deliver {
            delivery_id: 7,
            seq: 2,
        });
        assert_eq!(m.routing_key(), WEBHOOK_KEY);
        assert_eq!(m.job_id(), None);
        assert_eq!(
            m.to_json(),
            serde_json::json!({"type": "deliver", "delivery_id": 7, "seq": 2})
        );
        let body = serde_json::to_vec(&m.to_json()).unwrap();
        assert_eq!(job_of(&body), None);
    }
}
