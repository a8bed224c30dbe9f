//! Connecting to RabbitMQ within a bound, and a publisher that returns only
//! once the broker confirmed (or refused) each message.

use std::time::Duration;

use anyhow::{bail, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use serde::Serialize;

use genq_shared::config::Settings;

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
