//! Webhook deliveries: the consumer of `{prefix}.webhooks` sends each due
//! delivery, signed, through an HTTP client that refuses non-public targets
//! (unless `webhooks.allow_private`), records every attempt, and waits for
//! retries in the wait queues, never in a sleeping task. The delivery's row
//! is the truth; a message only wakes the sender, and one that comes early
//! waits again for what remains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use genq_core::config::WebhookSettings;
use genq_core::messages::{WebhookMessage, WEBHOOK_KEY};
use genq_core::telemetry::error_chain;
use genq_core::webhooks::{
    check_url, retry_delay, signature_header, Secret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use genq_store::store::outbox;
use genq_store::store::webhooks::{
    self as store, AttemptRecord, DeliveryStatus, EndpointState, Outgoing, Verdict,
};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tracing::Instrument;

use crate::step::{Step, WorkQueue};

/// How long a later status change of a job waits, at least, while an
/// earlier one to the same endpoint is being sent: the shortest wait tier.
const ORDER_WAIT: Duration = Duration::from_millis(100);
/// How much of a failed attempt's response body is kept for operators.
const ERROR_BODY_BYTES: usize = 256;

/// The outbound HTTP client of webhooks: no redirects, no proxy, a bounded
/// time per attempt, and (unless private targets are allowed) a resolver
/// that refuses a host if any address it resolves to is not public. The
/// connection goes to the addresses the resolver checked; a URL naming an
/// address skips the resolver and is checked before sending.
pub struct WebhookClient {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
}

impl WebhookClient {
    pub fn new(settings: &WebhookSettings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        // A redirect is a failure (the spec's advice; it could also lead to
        // an address the resolver never saw).
        let client = genq_core::outbound::client_builder(settings.allow_private)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("genq-webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self {
            client,
            allow_private: settings.allow_private,
            timeout,
        })
    }

    /// One attempt: the body and headers signed now, the answer classified.
    async fn send(&self, d: &Outgoing) -> Sent {
        let started = Instant::now();
        let refused = |why: String| Sent {
            status: None,
            elapsed: started.elapsed(),
            error: Some(why),
            retry_after: None,
        };
        let url = match check_url(&d.url, self.allow_private) {
            Ok(url) => url,
            Err(e) => return refused(format!("refused: {}", e.message)),
        };
        let mut secrets = vec![];
        for text in std::iter::once(&d.secret).chain(d.previous_secret.as_ref()) {
            match Secret::parse(text) {
                Ok(s) => secrets.push(s),
                Err(e) => return refused(format!("the endpoint's stored secret is unusable: {e}")),
            }
        }
        let body = match serde_json::to_vec(&d.payload) {
            Ok(b) => b,
            Err(e) => return refused(format!("the payload does not serialize: {e}")),
        };
        let timestamp = Utc::now().timestamp();
        let signature = signature_header(&secrets, &d.msg_id, timestamp, &body);
        let span = genq_core::trace::http_client_span("POST", &url, "webhook");
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_ID, &d.msg_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body)
            .send()
            .instrument(span.clone())
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status();
                genq_core::trace::record_http_status(&span, status.as_u16());
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let error = if status.is_success() {
                    None
                } else {
                    // A little of the body says why, for operators; bounded.
                    let mut text = Vec::new();
                    while text.len() < ERROR_BODY_BYTES {
                        match response.chunk().await {
                            Ok(Some(chunk)) => text.extend_from_slice(&chunk),
                            _ => break,
                        }
                    }
                    text.truncate(ERROR_BODY_BYTES);
                    let text = String::from_utf8_lossy(&text);
                    let text = text.trim();
                    Some(if text.is_empty() {
                        format!("HTTP {}", status.as_u16())
                    } else {
                        format!("HTTP {}: {text}", status.as_u16())
                    })
                };
                Sent {
                    status: Some(status.as_u16()),
                    elapsed: started.elapsed(),
                    error,
                    retry_after,
                }
            }
            Err(e) => {
                let kind = if e.is_timeout() { "timeout" } else { "connect" };
                genq_core::trace::record_http_failure(&span, kind);
                let why = if e.is_timeout() {
                    format!("no answer within {} ms", self.timeout.as_millis())
                } else {
                    error_chain(&e)
                };
                Sent {
                    status: None,
                    elapsed: started.elapsed(),
                    error: Some(why),
                    retry_after: None,
                }
            }
        }
    }
}

/// What one attempt got.
struct Sent {
    status: Option<u16>,
    elapsed: Duration,
    error: Option<String>,
    retry_after: Option<Duration>,
}

/// The consumer of the webhooks queue: sends deliveries through its own
/// client, records each attempt and lets retries wait in the wait queues.
#[derive(Clone)]
pub struct WebhookSender {
    pub pool: sqlx::PgPool,
    pub publisher: genq_broker::Publisher,
    pub topology: Arc<genq_broker::Topology>,
    pub settings: Arc<genq_core::config::Settings>,
    pub client: Arc<WebhookClient>,
}

impl WebhookSender {
    /// Handles one message of the webhooks queue.
    pub async fn handle(&self, body: &[u8]) -> Step {
        match serde_json::from_slice::<WebhookMessage>(body) {
            Ok(WebhookMessage::Deliver { delivery_id, seq }) => {
                self.deliver(delivery_id, seq).await
            }
            Err(e) => {
                crate::step::malformed(
                    &self.publisher,
                    &self.topology,
                    WorkQueue::Webhook,
                    body,
                    &e.to_string(),
                )
                .await
            }
        }
    }

    /// Sends delivery `id` if it is due, pending, still at `seq`, its
    /// endpoint enabled and no earlier status change of the same job is
    /// still pending for the endpoint; else drops the message or lets it
    /// wait. Then records the attempt and what follows from it.
    #[tracing::instrument(skip(self), fields(job_id, endpoint_id))]
    async fn deliver(&self, id: i64, seq: i32) -> Step {
        let Some(d) = store::load_outgoing(&self.pool, id).await? else {
            tracing::debug!("no such delivery; message dropped");
            return Ok(());
        };
        let span = tracing::Span::current();
        span.record("job_id", tracing::field::display(d.job_id));
        span.record("endpoint_id", tracing::field::display(d.endpoint_id));
        if d.status != DeliveryStatus::Pending || d.seq != seq {
            tracing::debug!(status = ?d.status, "stale webhook message dropped");
            return Ok(());
        }
        if d.endpoint_state != EndpointState::Enabled {
            let why = match d.endpoint_state {
                EndpointState::Deleted => "dropped: the endpoint was deleted",
                _ => "dropped: the endpoint is disabled",
            };
            store::drop_delivery(&self.pool, id, seq, why).await?;
            metrics::counter!("genq_webhook_deliveries_total", "outcome" => "dropped").increment(1);
            return Ok(());
        }
        if d.wait_ms > 0 {
            return self
                .wait(id, seq, Duration::from_millis(d.wait_ms as u64))
                .await;
        }
        if d.earlier_id.is_some() {
            // The job's earlier change goes first. Its end wakes this one
            // (see `record_attempt`); this wait is the safety net: until the
            // earlier one is due, or its sender's claim runs out.
            let due_in = Duration::from_millis(d.earlier_wait_ms.unwrap_or(0).max(0) as u64);
            return self.wait(id, seq, due_in.max(ORDER_WAIT)).await;
        }
        let settings = &self.settings.webhooks;
        let lease = Duration::from_millis(settings.timeout_ms) + Duration::from_secs(10);
        if !store::claim(&self.pool, id, seq, lease).await? {
            tracing::debug!("another sender has this delivery; message dropped");
            return Ok(());
        }
        let sent = self.client.send(&d).await;
        let verdict = match sent.status {
            Some(s) if (200..300).contains(&s) => Verdict::Delivered,
            Some(410) => Verdict::Gone,
            _ => {
                let attempt = (d.round_attempts + 1) as u32;
                retry_delay(
                    &settings.retry_schedule_ms,
                    settings.jitter,
                    attempt,
                    sent.retry_after,
                )
                .map_or(Verdict::Failed, Verdict::Retry)
            }
        };
        let record = AttemptRecord {
            delivery_id: id,
            seq,
            status_code: sent.status,
            response_ms: sent.elapsed.as_millis() as u64,
            error: sent.error.as_deref(),
            verdict,
        };
        let recorded = store::record_attempt(&self.pool, &record).await?;
        let outcome = match verdict {
            Verdict::Delivered => "delivered",
            Verdict::Gone => "gone",
            Verdict::Retry(_) => "retry",
            Verdict::Failed => "failed",
        };
        metrics::counter!("genq_webhook_attempts_total", "outcome" => outcome).increment(1);
        metrics::histogram!("genq_webhook_attempt_seconds").record(sent.elapsed.as_secs_f64());
        match verdict {
            Verdict::Delivered => tracing::debug!(ms = record.response_ms, "webhook delivered"),
            _ => tracing::info!(
                status = ?sent.status, error = sent.error.as_deref().unwrap_or(""), ?verdict,
                "webhook attempt failed"
            ),
        }
        if recorded.is_some_and(|r| r.woke) {
            // A wake-up (the retry, or the job's next change) is in the
            // outbox; ring after the commit.
            if let Err(e) = outbox::wake_relays(&self.pool).await {
                tracing::debug!(error = %e, "NOTIFY failed; the relay's timer will pick the retry up");
            }
        }
        Ok(())
    }

    /// Lets a delivery's wake-up wait in the wait queues for `delay` at most
    /// (the longest tier not above it); woken early, it waits again.
    async fn wait(&self, id: i64, seq: i32, delay: Duration) -> Step {
        let body = serde_json::to_vec(&WebhookMessage::Deliver {
            delivery_id: id,
            seq,
        })
        .expect("webhook messages serialize");
        self.publisher
            .publish_traced(&self.topology.webhook_delay_for(delay), WEBHOOK_KEY, &body)
            .await?;
        Ok(())
    }
}
