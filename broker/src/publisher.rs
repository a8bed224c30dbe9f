//! Connecting to RabbitMQ within a bound, and a publisher that returns only
//! once the broker confirmed (or refused) each message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use serde::Serialize;
use tracing::Instrument;

use genq_core::config::Settings;

/// How long a connection attempt may take: a broker that is starting can
/// accept TCP and never finish the AMQP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the next [`connect`] starts in the list of nodes: a random node at
/// first (so the processes of a deployment spread over the cluster), then
/// one further each call, so a session whose node failed reconnects to
/// another one first.
static NEXT_NODE: LazyLock<AtomicUsize> =
    LazyLock::new(|| AtomicUsize::new(rand::random::<u32>() as usize));

/// Opens a connection to one of the configured nodes (`amqp.url`, one URL or
/// several separated by commas): the first that answers, trying each once,
/// each within [`CONNECT_TIMEOUT`]. Callers retry with backoff.
pub async fn connect(settings: &Settings) -> anyhow::Result<Connection> {
    let urls = settings.amqp.urls();
    if urls.is_empty() {
        bail!("amqp.url names no broker");
    }
    let start = NEXT_NODE.fetch_add(1, Ordering::Relaxed);
    let mut failures = Vec::with_capacity(urls.len());
    for i in 0..urls.len() {
        let url = &urls[(start + i) % urls.len()];
        match connect_one(url.expose_secret()).await {
            Ok(connection) => return Ok(connection),
            Err(e) => {
                tracing::warn!(node = %node_name(url.expose_secret()), error = %format!("{e:#}"), "a RabbitMQ node did not answer");
                failures.push(format!("{}: {e:#}", node_name(url.expose_secret())));
            }
        }
    }
    bail!("connecting to RabbitMQ failed: {}", failures.join("; "))
}

async fn connect_one(url: &str) -> anyhow::Result<Connection> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected.context("connecting to RabbitMQ"),
        Err(_) => bail!("connecting to RabbitMQ timed out after {CONNECT_TIMEOUT:?}"),
    }
}

/// The delays between attempts to reconnect to the broker: from 200 ms up
/// to 10 s, with jitter, without end.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    genq_core::backoff::reconnect(Duration::from_secs(10))
}

/// A node as logs may name it: host and port, never the credentials.
fn node_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}",
            u.host_str().unwrap_or("?"),
            u.port()
                .unwrap_or(if u.scheme() == "amqps" { 5671 } else { 5672 })
        ),
        Err(_) => "an unreadable URL".into(),
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

    /// Publishes a work message as a producer span of the current trace,
    /// whose context the message carries.
    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &T,
    ) -> anyhow::Result<()> {
        let body = serde_json::to_vec(message)?;
        self.publish_traced(exchange, routing_key, &body).await
    }

    /// Publishes `body` as a producer span of the current trace, whose
    /// context the message carries (no trace headers when untraced).
    pub async fn publish_traced(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let span = crate::trace::producer_span(exchange, routing_key);
        let headers =
            crate::trace::trace_headers(genq_core::trace::TraceParent::of(&span).as_ref());
        self.publish(exchange, routing_key, body, headers)
            .instrument(span)
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

/// Reads a header of a message as text.
pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    headers.inner().get(&ShortString::from(name)).map(amqp_text)
}

/// An AMQP value as text, for people and the archive.
pub fn amqp_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::node_name;

    #[test]
    fn a_node_is_named_without_its_credentials() {
        assert_eq!(
            node_name("amqp://guest:secret@10.0.0.7:5673/%2f"),
            "10.0.0.7:5673"
        );
        assert_eq!(node_name("amqps://u:p@mq.example/%2f"), "mq.example:5671");
        assert!(!node_name("not a url :secret@").contains("secret"));
    }
}
