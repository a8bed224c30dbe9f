//! The fal.ai queue adapter: `POST {queue}/{model}` → `request_id`, then
//! `GET {queue}/{owner}/{app}/requests/{id}/status` (IN_QUEUE with a queue
//! position, IN_PROGRESS, COMPLETED), the result from its own URL
//! `GET …/requests/{id}`, and `PUT …/requests/{id}/cancel`. `Authorization: Key`.
//! fal offers no idempotency key.

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{self, generic, Reply};
use super::{
    clip, segment, unknown_status, FailureKind, ProviderError, ProviderResult, TaskRequest,
    TaskStatus, VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "fal";

pub struct FalProvider {
    /// Its model is the full endpoint ID, e.g.
    /// `fal-ai/kling-video/v1.6/standard/text-to-video`.
    api: http::Endpoint,
    /// Its `owner/app`: status, result and cancel URLs use only these.
    app: String,
}

#[derive(Deserialize)]
struct Submitted {
    request_id: String,
}

#[derive(Deserialize)]
struct QueueStatus {
    status: String,
    queue_position: Option<u32>,
    /// Set on a COMPLETED request that failed.
    #[serde(default)]
    error: Value,
    error_type: Option<String>,
}

impl FalProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let mut api = http::Endpoint::new(settings)?;
        api.model = api.model.trim_matches('/').to_owned();
        let model = &api.model;
        let parts: Vec<&str> = model.split('/').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            anyhow::bail!(
                "invalid configuration: provider.model (GENQ__PROVIDER__MODEL) must be a fal endpoint ID such as fal-ai/kling-video/v1.6/standard/text-to-video, not {model:?}"
            );
        }
        let app = format!("{}/{}", parts[0], parts[1]);
        Ok(Self { api, app })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.header(
            reqwest::header::AUTHORIZATION,
            format!("Key {}", self.api.api_key.expose_secret()),
        )
    }

    fn request_url(&self, id: &str) -> String {
        format!(
            "{}/{}/requests/{}",
            self.api.base_url,
            self.app,
            segment(id)
        )
    }

    /// A COMPLETED request's result: the video, or why there is none.
    /// `failed`: the status already said the request failed.
    async fn result(&self, id: &str, failed: bool) -> ProviderResult<TaskStatus> {
        let reply = http::send(self.authorized(self.api.client.get(self.request_url(id)))).await?;
        if reply.is_success() {
            let body: Value = reply.parse()?;
            return match video_url(&body) {
                Some(video_url) => Ok(TaskStatus::Succeeded { video_url }),
                None => Err(ProviderError::transient(
                    "the request completed without a video URL",
                )),
            };
        }
        failed_result(&reply, failed)
    }
}

/// `video.url` (most video endpoints), else `video_url`, else `videos[0].url`.
fn video_url(body: &Value) -> Option<String> {
    [
        &body["video"]["url"],
        &body["video_url"],
        &body["videos"][0]["url"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
}

/// The error a finished request's result URL answered: the request's own
/// outcome when its status said it failed (or the answer is a 4xx);
/// otherwise a 429/408/5xx is the gateway's, worth retrying.
fn failed_result(reply: &Reply, failed: bool) -> ProviderResult<TaskStatus> {
    if !failed && http::is_transient(reply.status) {
        return Err(reply.error());
    }
    let details = reply
        .json
        .as_ref()
        .map(|v| v.get("detail").unwrap_or(v))
        .cloned()
        .unwrap_or(Value::Null);
    let rejected = details.as_array().is_some_and(|items| {
        items
            .iter()
            .any(|i| i["type"] == "content_policy_violation")
    });
    let reason = reply.detail();
    let code = if rejected {
        FailureKind::ContentRejected
    } else if reason.to_ascii_lowercase().contains("cancel") {
        FailureKind::Canceled
    } else {
        FailureKind::Provider
    };
    let reason = if rejected {
        clip(&format!(
            "The content was refused by fal's content checker: {reason}"
        ))
    } else {
        reason
    };
    Ok(TaskStatus::Failed { code, reason })
}

impl VideoProvider for FalProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let body = json!({
                "prompt": request.prompt,
                "duration": request.duration_seconds.to_string(),
                "aspect_ratio": request.aspect_ratio,
            });
            let url = format!("{}/{}", self.api.base_url, self.api.model);
            let mut builder = self.authorized(self.api.client.post(url)).json(&body);
            if let Some(callback) = &request.callback_url {
                // fal calls the URL given as `fal_webhook` when the request ends.
                builder = builder.query(&[("fal_webhook", callback)]);
            }
            let r: Submitted = http::send_json(builder, |reply| {
                // A prompt refused at submission: 422 content_policy_violation.
                let rejected = reply.status.as_u16() == 422
                    && reply.json.as_ref().is_some_and(|v| {
                        v["detail"].as_array().is_some_and(|d| {
                            d.iter().any(|i| i["type"] == "content_policy_violation")
                        })
                    });
                rejected.then(|| ProviderError::content_rejected(reply.detail()))
            })
            .await?;
            Ok(r.request_id)
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let url = format!("{}/status", self.request_url(task_id));
            let s: QueueStatus =
                http::send_json(self.authorized(self.api.client.get(url)), generic).await?;
            match s.status.as_str() {
                "IN_QUEUE" => Ok(TaskStatus::Queued {
                    position: s.queue_position,
                }),
                "IN_PROGRESS" => Ok(TaskStatus::Running),
                "COMPLETED" => {
                    let failed = !s.error.is_null() || s.error_type.is_some();
                    let rejected = s.error_type.as_deref() == Some("content_policy_violation");
                    match self.result(task_id, failed).await {
                        // The status's own type is enough to call it a refusal.
                        Ok(TaskStatus::Failed { reason, .. }) if rejected => {
                            Ok(TaskStatus::Failed {
                                code: FailureKind::ContentRejected,
                                reason,
                            })
                        }
                        other => other,
                    }
                }
                other => Ok(unknown_status(NAME, other)),
            }
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            let url = format!("{}/cancel", self.request_url(task_id));
            let reply = http::send(self.authorized(self.api.client.put(url))).await?;
            let word = reply
                .json
                .as_ref()
                .and_then(|v| v["status"].as_str())
                .unwrap_or_default()
                .to_owned();
            match word.as_str() {
                // Requested, or nothing left to stop.
                "CANCELLATION_REQUESTED" | "ALREADY_COMPLETED" | "NOT_FOUND" => {
                    tracing::debug!(task_id, answer = %word, "fal cancel");
                    Ok(())
                }
                _ if reply.is_success() => Ok(()),
                _ => Err(reply.error()),
            }
        })
    }
}
