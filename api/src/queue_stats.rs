//! Queue depths and consumers as RabbitMQ's management API (HTTP) reports
//! them, for the console's System page (AMQP itself can't list queues).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use genq_core::telemetry::error_chain;

/// What the System page shows about the broker's queues.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// False when the management API is not configured or did not answer;
    /// `note` then says why.
    pub available: bool,
    pub note: Option<String>,
    /// This deployment's queues (named from its prefix), by name.
    pub queues: Vec<QueueDepth>,
}

/// One queue. The counts lag the broker by its statistics interval (5 s
/// by default).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueDepth {
    pub name: String,
    /// `quorum` or `classic`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Ready plus unacknowledged.
    // The broker omits counts it has not collected yet: 0 until then.
    #[serde(default)]
    #[schema(required = true)]
    pub messages: i64,
    #[serde(default, rename(deserialize = "messages_ready"))]
    #[schema(required = true)]
    pub ready: i64,
    #[serde(default, rename(deserialize = "messages_unacknowledged"))]
    #[schema(required = true)]
    pub unacked: i64,
    #[serde(default)]
    #[schema(required = true)]
    pub consumers: i64,
}

/// Bounded: the System page must not hang on a slow broker.
const TIMEOUT: Duration = Duration::from_secs(3);

impl QueueStats {
    fn unavailable(note: String) -> Self {
        Self {
            available: false,
            note: Some(note),
            queues: vec![],
        }
    }
}

/// Reads the queues of the deployment named `prefix` in the AMQP URL's
/// virtual host. Never fails: what went wrong becomes the `note`.
pub async fn queue_stats(
    client: &reqwest::Client,
    management_url: Option<&SecretString>,
    amqp_url: &SecretString,
    prefix: &str,
) -> QueueStats {
    let Some(management_url) = management_url else {
        return QueueStats::unavailable(
            "RabbitMQ's management API is not configured (set amqp.management_url, \
             GENQ__AMQP__MANAGEMENT_URL); see the broker's own tools, e.g. rabbitmqctl list_queues."
                .into(),
        );
    };
    match fetch(client, management_url, amqp_url, prefix).await {
        Ok(queues) => QueueStats {
            available: true,
            note: None,
            queues,
        },
        Err(e) => QueueStats::unavailable(format!("RabbitMQ's management API did not answer: {e}")),
    }
}

async fn fetch(
    client: &reqwest::Client,
    management_url: &SecretString,
    amqp_url: &SecretString,
    prefix: &str,
) -> Result<Vec<QueueDepth>, String> {
    let mut base = url::Url::parse(management_url.expose_secret())
        .map_err(|_| "amqp.management_url is not a URL".to_string())?;
    // Credentials go in a header, never in a URL that an error might print.
    let user = base.username().to_owned();
    let password = base.password().map(str::to_owned);
    let _ = base.set_username("");
    let _ = base.set_password(None);
    let (user, password) = if user.is_empty() {
        credentials_of(amqp_url)
    } else {
        (user, password)
    };
    let vhost = vhost_of(amqp_url);
    let mut url = base;
    url.path_segments_mut()
        .map_err(|_| "amqp.management_url cannot be a base URL".to_string())?
        .pop_if_empty()
        .extend(["api", "queues", &vhost]);
    url.query_pairs_mut().append_pair(
        "columns",
        "name,type,messages,messages_ready,messages_unacknowledged,consumers",
    );
    let response = client
        .get(url)
        .basic_auth(user, password)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| error_chain(&e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let mut queues: Vec<QueueDepth> = response
        .json()
        .await
        .map_err(|e| error_chain(&e.without_url()))?;
    let own = format!("{prefix}.");
    queues.retain(|q| q.name.starts_with(&own));
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(queues)
}

/// The first node's virtual host (`/` when the URL names none).
fn vhost_of(amqp_url: &SecretString) -> String {
    first_node(amqp_url)
        .and_then(|u| {
            let path = u.path().trim_start_matches('/');
            (!path.is_empty()).then(|| percent_decode(path))
        })
        .unwrap_or_else(|| "/".into())
}

/// The AMQP URL's user and password, which the management API usually shares.
fn credentials_of(amqp_url: &SecretString) -> (String, Option<String>) {
    match first_node(amqp_url) {
        Some(u) if !u.username().is_empty() => (
            percent_decode(u.username()),
            u.password().map(percent_decode),
        ),
        _ => ("guest".into(), Some("guest".into())),
    }
}

fn first_node(amqp_url: &SecretString) -> Option<url::Url> {
    let first = amqp_url.expose_secret().split(',').next()?.trim();
    url::Url::parse(first).ok()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vhost_and_credentials_come_from_the_first_amqp_node() {
        let one = SecretString::from("amqp://u%40x:p%2Fw@h:5672/%2f");
        assert_eq!(vhost_of(&one), "/");
        assert_eq!(credentials_of(&one), ("u@x".into(), Some("p/w".into())));
        let named = SecretString::from("amqp://a:b@h1:5672/prod, amqp://a:b@h2:5672/prod");
        assert_eq!(vhost_of(&named), "prod");
        assert_eq!(vhost_of(&SecretString::from("amqp://h")), "/");
        assert_eq!(
            credentials_of(&SecretString::from("amqp://h")),
            ("guest".into(), Some("guest".into()))
        );
    }
}
