//! The Replicate predictions adapter: `POST /v1/models/{owner}/{name}/predictions`
//! (or `POST /v1/predictions` with a `version`), `GET /v1/predictions/{id}`,
//! `POST /v1/predictions/{id}/cancel`, `Authorization: Bearer`, and the job's
//! deadline sent as `Cancel-After`. Replicate offers no idempotency key.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{self, generic};
use super::{
    clip, failed_with_text, segment, unknown_status, FailureKind, ProviderError, ProviderResult,
    TaskRequest, TaskStatus, VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "replicate";

/// Replicate rejects deadlines under five seconds.
const MIN_CANCEL_AFTER: Duration = Duration::from_secs(5);

pub struct ReplicateProvider {
    /// Its model is `owner/name` (the model's current version) or
    /// `owner/name:version`.
    api: http::Endpoint,
}

#[derive(Deserialize)]
struct Prediction {
    id: String,
    status: String,
    #[serde(default)]
    output: Value,
    #[serde(default)]
    error: Value,
}

impl ReplicateProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let api = http::Endpoint::new(settings)?;
        let model = &api.model;
        let (name, _) = model.split_once(':').unwrap_or((model, ""));
        if name.split('/').count() != 2 {
            anyhow::bail!(
                "invalid configuration: provider.model (GENQ__PROVIDER__MODEL) must be owner/name or owner/name:version for replicate, not {model:?}"
            );
        }
        Ok(Self { api })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth(self.api.api_key.expose_secret())
    }

    fn prediction_url(&self, id: &str) -> String {
        format!("{}/v1/predictions/{}", self.api.base_url, segment(id))
    }
}

/// `Cancel-After` in Replicate's duration format (`90s`), at least 5 s.
pub(crate) fn cancel_after_header(after: Duration) -> String {
    format!("{}s", after.max(MIN_CANCEL_AFTER).as_secs())
}

/// The video URL of a succeeded prediction: a URL, a list of URLs (the
/// first), or an object with `video` / `url`.
fn output_url(output: &Value) -> Option<String> {
    match output {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Array(items) => items.iter().find_map(output_url),
        Value::Object(map) => map
            .get("video")
            .or_else(|| map.get("url"))
            .and_then(output_url),
        _ => None,
    }
}

fn error_text(error: &Value) -> Option<String> {
    match error {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Replicate's status words and what genq makes of them.
fn interpret(p: Prediction) -> ProviderResult<TaskStatus> {
    let reason = |fallback: &str| clip(&error_text(&p.error).unwrap_or_else(|| fallback.into()));
    Ok(match p.status.as_str() {
        "starting" => TaskStatus::Queued { position: None },
        "processing" => TaskStatus::Running,
        "succeeded" => match output_url(&p.output) {
            Some(video_url) => TaskStatus::Succeeded { video_url },
            None => {
                return Err(ProviderError::transient(
                    "prediction succeeded without an output URL",
                ))
            }
        },
        "failed" => {
            let reason = reason("the prediction failed without an error message");
            // Replicate has no structured moderation code: its safety checkers
            // fail the prediction with words such as "NSFW content detected".
            failed_with_text(reason)
        }
        "canceled" => TaskStatus::Failed {
            code: FailureKind::Canceled,
            reason: reason("the prediction was canceled (or ran past its deadline)"),
        },
        "aborted" => TaskStatus::Failed {
            code: FailureKind::Aborted,
            reason: reason("the deadline passed before the prediction started; it was not billed"),
        },
        other => unknown_status(NAME, other),
    })
}

impl VideoProvider for ReplicateProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            // Model inputs differ; `prompt` is the one every text-to-video model takes.
            let input = json!({ "prompt": request.prompt });
            let (url, mut body) = match self.api.model.split_once(':') {
                Some((_, version)) => (
                    format!("{}/v1/predictions", self.api.base_url),
                    json!({ "version": version, "input": input }),
                ),
                None => (
                    format!(
                        "{}/v1/models/{}/predictions",
                        self.api.base_url, self.api.model
                    ),
                    json!({ "input": input }),
                ),
            };
            if let Some(callback) = &request.callback_url {
                // Called once, when the prediction ends.
                body["webhook"] = json!(callback);
                body["webhook_events_filter"] = json!(["completed"]);
            }
            let mut builder = self.authorized(self.api.client.post(url)).json(&body);
            if let Some(after) = request.cancel_after {
                builder = builder.header("Cancel-After", cancel_after_header(after));
            }
            let p: Prediction = http::send_json(builder, generic).await?;
            Ok(p.id)
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let builder = self.authorized(self.api.client.get(self.prediction_url(task_id)));
            interpret(http::send_json(builder, generic).await?)
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            let url = format!("{}/cancel", self.prediction_url(task_id));
            let _: Value =
                http::send_json(self.authorized(self.api.client.post(url)), generic).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_after_is_whole_seconds_and_at_least_five() {
        assert_eq!(cancel_after_header(Duration::from_millis(900)), "5s");
        assert_eq!(cancel_after_header(Duration::from_secs(900)), "900s");
    }

    #[test]
    fn output_shapes() {
        assert_eq!(
            output_url(&json!("https://a/b.mp4")).as_deref(),
            Some("https://a/b.mp4")
        );
        assert_eq!(
            output_url(&json!(["https://a/1.mp4", "x"])).as_deref(),
            Some("https://a/1.mp4")
        );
        assert_eq!(
            output_url(&json!({"video": "https://v"})).as_deref(),
            Some("https://v")
        );
        assert_eq!(output_url(&json!(null)), None);
    }
}
