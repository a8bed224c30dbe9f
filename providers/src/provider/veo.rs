//! The Google Veo adapter, through the Gemini API's long-running operations:
//! `POST /v1beta/models/{model}:predictLongRunning` → an operation `name`,
//! `GET /v1beta/{name}` until `done`, then its `error` or the response's
//! generated video URI (`generateVideoResponse.generatedSamples[0].video.uri`),
//! which is downloaded with the same `x-goog-api-key` header. A refusal is a
//! finished operation without samples whose `raiMediaFilteredReasons` say why.
//! The Gemini API documents no cancel and no idempotency key for video.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::http::{self, Reply};
use super::{
    clip, unknown_status, FailureKind, ProviderError, ProviderResult, TaskRequest, TaskStatus,
    VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "veo";

/// The header the Gemini API reads its key from (also on video downloads).
pub const API_KEY_HEADER: &str = "x-goog-api-key";

/// Longest operation name accepted from the provider.
const MAX_NAME_CHARS: usize = 300;

pub struct VeoProvider {
    api: http::Endpoint,
}

impl VeoProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: http::Endpoint::new(settings)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.header(API_KEY_HEADER, self.api.api_key.expose_secret())
    }
}

/// An operation name as the provider sent it is a path (`models/…/operations/…`):
/// only the characters such names use, no `..`, bounded; anything else is
/// refused rather than put into a URL.
fn checked_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && !name.starts_with('/')
        && !name
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    ok.then_some(name)
}

/// Google's rate-limit signal: a 429 `RESOURCE_EXHAUSTED` whose details may
/// carry a `google.rpc.RetryInfo` with `retryDelay` ("1s", "0.5s").
fn classify(reply: &Reply) -> Option<ProviderError> {
    let json = reply.json.as_ref()?;
    let delay = json["error"]["details"]
        .as_array()?
        .iter()
        .filter(|d| {
            d["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d["retryDelay"].as_str())
        .and_then(parse_delay)?;
    let mut e = reply.error();
    if let ProviderError::Transient { retry_after, .. } = &mut e {
        *retry_after = Some(delay);
    }
    Some(e)
}

/// A protobuf Duration in JSON: decimal seconds with an `s` (bounded to a day).
fn parse_delay(text: &str) -> Option<Duration> {
    let secs: f64 = text.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && (0.0..=86_400.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

fn interpret(op: &Value) -> ProviderResult<TaskStatus> {
    if !op["done"].as_bool().unwrap_or(false) {
        // An unfinished operation says nothing more: it is being generated.
        return Ok(TaskStatus::Running);
    }
    if op["error"].is_object() {
        let message = op["error"]["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or("the operation failed without a message");
        return Ok(TaskStatus::Failed {
            code: FailureKind::Provider,
            reason: clip(message),
        });
    }
    let response = &op["response"]["generateVideoResponse"];
    if !response.is_object() {
        // Done, but with a result this adapter does not know: never a success.
        let kind = op["response"]["@type"]
            .as_str()
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or("done-without-result");
        return Ok(unknown_status(NAME, kind));
    }
    if let Some(uri) = response["generatedSamples"][0]["video"]["uri"]
        .as_str()
        .filter(|u| !u.is_empty())
    {
        return Ok(TaskStatus::Succeeded {
            video_url: uri.to_owned(),
        });
    }
    let reasons: Vec<&str> = response["raiMediaFilteredReasons"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let filtered = response["raiMediaFilteredCount"].as_u64().unwrap_or(0);
    if filtered > 0 || !reasons.is_empty() {
        let why = if reasons.is_empty() {
            "no reason given".to_owned()
        } else {
            reasons.join(" ")
        };
        return Ok(TaskStatus::Failed {
            code: FailureKind::ContentRejected,
            reason: clip(&format!("Veo's safety filters removed the video: {why}")),
        });
    }
    Err(ProviderError::transient(
        "the operation finished without a video or a reason",
    ))
}

impl VideoProvider for VeoProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            // Veo 3 makes 4, 6 or 8 s clips, landscape or portrait.
            let seconds = match request.duration_seconds {
                0..=4 => 4,
                5..=6 => 6,
                _ => 8,
            };
            let aspect = if request.aspect_ratio == "9:16" {
                "9:16"
            } else {
                "16:9"
            };
            let body = json!({
                "instances": [{"prompt": request.prompt}],
                "parameters": {"aspectRatio": aspect, "durationSeconds": seconds},
            });
            let url = format!(
                "{}/v1beta/models/{}:predictLongRunning",
                self.api.base_url,
                super::segment(&self.api.model)
            );
            let op: Value = http::send_json(
                self.authorized(self.api.client.post(url)).json(&body),
                classify,
            )
            .await?;
            op["name"]
                .as_str()
                .and_then(checked_name)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ProviderError::transient("submit answered without a usable operation name")
                })
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let name = checked_name(task_id).ok_or_else(|| {
                ProviderError::permanent("provider_task_id", "not an operation name")
            })?;
            let url = format!("{}/v1beta/{name}", self.api.base_url);
            let op: Value =
                http::send_json(self.authorized(self.api.client.get(url)), classify).await?;
            interpret(&op)
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        super::no_cancel(NAME, task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_are_paths_without_tricks() {
        assert!(checked_name("models/veo-3.0-generate-001/operations/abc123").is_some());
        for bad in [
            "",
            "/abs",
            "models/../x",
            "a//b",
            "a?b",
            "a b",
            "models/x#y",
        ] {
            assert!(checked_name(bad).is_none(), "{bad:?}");
        }
        assert!(checked_name(&"a".repeat(301)).is_none());
    }

    #[test]
    fn retry_delays() {
        assert_eq!(parse_delay("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_delay("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_delay("-1s"), None);
        assert_eq!(parse_delay("1e9s"), None);
        assert_eq!(parse_delay("1"), None);
    }

    #[test]
    fn a_refusal_is_a_content_rejection() {
        let op = json!({"done": true, "response": {"generateVideoResponse": {
            "raiMediaFilteredCount": 1,
            "raiMediaFilteredReasons": ["The prompt could not be submitted."]}}});
        assert!(matches!(
            interpret(&op).unwrap(),
            TaskStatus::Failed {
                code: FailureKind::ContentRejected,
                ..
            }
        ));
    }
}
