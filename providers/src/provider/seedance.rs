//! The ByteDance Seedance adapter, through BytePlus ModelArk:
//! `POST /api/v3/contents/generations/tasks` → a task `id`,
//! `GET …/tasks/{id}` (queued, running, succeeded, failed, cancelled,
//! expired; `content.video_url` on success, `error {code, message}` on
//! failure), `DELETE …/tasks/{id}` cancels a task that is still queued (a
//! running one goes on); `Authorization: Bearer`. No idempotency key.

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::http::{self, Reply};
use super::{
    clip, segment, unknown_status, FailureKind, ProviderError, ProviderResult, TaskRequest,
    TaskStatus, VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "seedance";

pub struct SeedanceProvider {
    api: http::Endpoint,
}

impl SeedanceProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: http::Endpoint::new(settings)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth(self.api.api_key.expose_secret())
    }

    fn task_url(&self, id: &str) -> String {
        format!(
            "{}/api/v3/contents/generations/tasks/{}",
            self.api.base_url,
            segment(id)
        )
    }
}

/// ModelArk's moderation codes all name sensitive content
/// (`InputTextSensitiveContentDetected`, `OutputVideoSensitiveContentDetected`, …).
fn is_moderation(code: &str) -> bool {
    code.contains("SensitiveContent")
}

/// A prompt refused at creation is a content rejection, whatever the status.
fn classify(reply: &Reply) -> Option<ProviderError> {
    let code = reply.code()?;
    is_moderation(&code).then(|| {
        ProviderError::content_rejected(clip(&format!(
            "Seedance refused the prompt ({code}): {}",
            reply.detail()
        )))
    })
}

fn interpret(task: &Value) -> ProviderResult<TaskStatus> {
    let status = task["status"].as_str().unwrap_or_default();
    let error = || {
        let code = task["error"]["code"].as_str().unwrap_or_default();
        let message = task["error"]["message"]
            .as_str()
            .filter(|m| !m.is_empty())
            .unwrap_or("the task failed without a message");
        (code.to_owned(), clip(message))
    };
    Ok(match status {
        "queued" => TaskStatus::Queued { position: None },
        "running" => TaskStatus::Running,
        "succeeded" => match task["content"]["video_url"].as_str() {
            Some(url) if !url.is_empty() => TaskStatus::Succeeded {
                video_url: url.to_owned(),
            },
            _ => {
                return Err(ProviderError::transient(
                    "task succeeded without a video URL",
                ))
            }
        },
        "failed" => {
            let (code, reason) = error();
            let code = if is_moderation(&code) {
                FailureKind::ContentRejected
            } else {
                FailureKind::Provider
            };
            TaskStatus::Failed { code, reason }
        }
        "cancelled" => TaskStatus::Failed {
            code: FailureKind::Canceled,
            reason: "The task was cancelled at Seedance.".into(),
        },
        // Not run before its own expiry (`execution_expires_after`): not billed.
        "expired" => TaskStatus::Failed {
            code: FailureKind::Aborted,
            reason: "The task expired at Seedance before it ran.".into(),
        },
        other => unknown_status(NAME, other),
    })
}

impl VideoProvider for SeedanceProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let mut body = json!({
                "model": self.api.model,
                "content": [{"type": "text", "text": request.prompt}],
                "ratio": request.aspect_ratio,
                "duration": request.duration_seconds,
            });
            if let Some(url) = &request.callback_url {
                body["callback_url"] = json!(url);
            }
            let url = format!("{}/api/v3/contents/generations/tasks", self.api.base_url);
            let task: Value = http::send_json(
                self.authorized(self.api.client.post(url)).json(&body),
                classify,
            )
            .await?;
            task["id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| ProviderError::transient("submit answered without a task id"))
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let builder = self.authorized(self.api.client.get(self.task_url(task_id)));
            interpret(&http::send_json::<Value>(builder, classify).await?)
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            let reply =
                http::send(self.authorized(self.api.client.delete(self.task_url(task_id)))).await?;
            if reply.nothing_left_to_stop() {
                return Ok(());
            }
            if http::is_transient(reply.status) {
                return Err(reply.error());
            }
            // Only a queued task can be cancelled; a running one goes on.
            tracing::debug!(task_id, detail = %reply.detail(), "Seedance kept the task running");
            Ok(())
        })
    }
}
