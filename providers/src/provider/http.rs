//! The HTTP plumbing every adapter shares: the client, sending a request, and
//! classifying a failed answer (429/408/5xx transient with `Retry-After`; any
//! other 4xx permanent), with the provider's own error text kept readable.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{clip, ProviderError, ProviderResult};
use genq_core::config::ProviderSettings;
use genq_core::trace;
use tracing::Instrument;

/// What most adapters hold: the client, the API base (no trailing slash),
/// the key and the model, from one provider's settings.
pub struct Endpoint {
    pub client: reqwest::Client,
    pub base_url: String,
    pub api_key: secrecy::SecretString,
    pub model: String,
}

impl Endpoint {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            client: client(settings)?,
            base_url: settings.effective_base_url(),
            api_key: settings.api_key.clone(),
            model: settings.effective_model(),
        })
    }
}

/// A client with the deployment's timeouts.
pub fn client(settings: &ProviderSettings) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.timeout_ms))
        .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
        .pool_max_idle_per_host(64)
        .build()?)
}

/// A provider's answer, whatever its status.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub text: String,
    /// The body, when it is JSON.
    pub json: Option<Value>,
    pub retry_after: Option<Duration>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The answer to a cancel or delete: done, or (404) nothing to stop.
    pub fn nothing_left_to_stop(&self) -> bool {
        self.is_success() || self.status == StatusCode::NOT_FOUND
    }

    /// The body as `T`; an unreadable success is transient (a proxy's page, a
    /// truncated body), so it is retried rather than trusted.
    pub fn parse<T: DeserializeOwned>(&self) -> ProviderResult<T> {
        serde_json::from_str(&self.text).map_err(|e| {
            ProviderError::transient(format!(
                "unreadable response (HTTP {}): {e}",
                self.status.as_u16()
            ))
        })
    }

    /// The provider's own words about an error, from the usual fields:
    /// `message`, `error` (text or `{message}`), `detail` (text or a list of
    /// `{msg}`), `failure`, `title`; else the raw text.
    pub fn detail(&self) -> String {
        let from_json = self.json.as_ref().and_then(|v| {
            let text = |v: &Value| v.as_str().map(str::to_owned);
            text(&v["message"])
                .filter(|s| !s.is_empty())
                .or_else(|| text(&v["error"]))
                .or_else(|| text(&v["error"]["message"]))
                .or_else(|| text(&v["detail"]))
                .or_else(|| {
                    let items = v["detail"].as_array().or_else(|| v.as_array())?;
                    let msgs: Vec<String> = items.iter().filter_map(|i| text(&i["msg"])).collect();
                    (!msgs.is_empty()).then(|| msgs.join("; "))
                })
                .or_else(|| text(&v["failure"]))
                .or_else(|| text(&v["title"]))
        });
        clip(&from_json.unwrap_or_else(|| self.text.trim().to_owned()))
    }

    /// The provider's error code, text or number (`code`, `error.code`, or a
    /// `type` that is a word rather than an RFC 7807 type URI).
    pub fn code(&self) -> Option<String> {
        let v = self.json.as_ref()?;
        [&v["code"], &v["error"]["code"], &v["type"]]
            .into_iter()
            .find_map(|c| match c {
                Value::String(s) if !s.is_empty() && !s.contains('/') => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    }

    /// The generic classification of a failed answer.
    pub fn error(&self) -> ProviderError {
        let message = clip(&format!("HTTP {}: {}", self.status.as_u16(), self.detail()));
        if is_transient(self.status) {
            ProviderError::Transient {
                message,
                retry_after: self.retry_after,
            }
        } else {
            ProviderError::Permanent {
                code: self
                    .code()
                    .unwrap_or_else(|| format!("provider_http_{}", self.status.as_u16())),
                message,
            }
        }
    }
}

/// 408, 429 and 5xx are worth retrying; every other 4xx is not.
pub fn is_transient(status: StatusCode) -> bool {
    status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error()
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Sends `builder`; a connection failure or timeout is transient, any answer
/// (success or not) comes back as a `Reply`.
pub async fn send(builder: reqwest::RequestBuilder) -> ProviderResult<Reply> {
    // Without the URL: it may carry the provider's IDs, and the error is enough.
    let failed = |e: reqwest::Error| {
        ProviderError::transient(format!("request failed: {}", e.without_url()))
    };
    let (client, request) = builder.build_split();
    let request = request.map_err(failed)?;
    let span = trace::http_client_span(request.method().as_str(), request.url(), "provider");
    let response = client
        .execute(request)
        .instrument(span.clone())
        .await
        .map_err(|e| {
            trace::record_http_failure(&span, if e.is_timeout() { "timeout" } else { "connect" });
            failed(e)
        })?;
    trace::record_http_status(&span, response.status().as_u16());
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let text = response.text().await.map_err(|e| {
        ProviderError::transient(format!("reading the response: {}", e.without_url()))
    })?;
    let json = serde_json::from_str(&text).ok();
    Ok(Reply {
        status,
        text,
        json,
        retry_after,
    })
}

/// Sends `builder` and reads a successful answer as `T`; a failed one goes
/// through `classify` first (an adapter's own codes), then the generic rules.
pub async fn send_json<T: DeserializeOwned>(
    builder: reqwest::RequestBuilder,
    classify: impl Fn(&Reply) -> Option<ProviderError>,
) -> ProviderResult<T> {
    let reply = send(builder).await?;
    if reply.is_success() {
        return reply.parse();
    }
    Err(classify(&reply).unwrap_or_else(|| reply.error()))
}

/// No adapter-specific classification.
pub fn generic(_: &Reply) -> Option<ProviderError> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            text: body.into(),
            json: serde_json::from_str(body).ok(),
            retry_after: Some(Duration::from_secs(3)),
        }
    }

    #[test]
    fn classification() {
        let e = reply(429, r#"{"detail":"slow down"}"#).error();
        assert!(
            matches!(e, ProviderError::Transient { ref message, retry_after: Some(d) } if message.contains("slow down") && d.as_secs() == 3)
        );
        assert!(matches!(
            reply(503, "oops").error(),
            ProviderError::Transient { .. }
        ));
        let e = reply(400, r#"{"code":1201,"message":"bad"}"#).error();
        assert!(matches!(e, ProviderError::Permanent { ref code, .. } if code == "1201"));
        let e = reply(
            422,
            r#"{"detail":[{"msg":"flagged","type":"content_policy_violation"}]}"#,
        );
        assert_eq!(e.detail(), "flagged");
        assert_eq!(reply(401, r#"{"error":"bad key"}"#).detail(), "bad key");
    }
}
