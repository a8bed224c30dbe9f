//! The generic TaskID API adapter (genq's original provider protocol and the
//! simulator's default dialect): `POST /v1/tasks` → `{"task_id"}`,
//! `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/cancel`, `Idempotency-Key` honoured.

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::http::{self, generic};
use super::{
    clip, segment, unknown_status, FailureKind, ProviderError, ProviderResult, TaskRequest,
    TaskStatus, VideoProvider, CONTENT_REJECTED,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "taskid";

pub struct TaskIdProvider {
    /// TaskID's API names no model.
    api: http::Endpoint,
}

#[derive(Serialize)]
struct SubmitBody<'a> {
    idempotency_key: &'a str,
    prompt: &'a str,
    duration_seconds: u32,
    aspect_ratio: &'a str,
}

#[derive(Deserialize)]
struct SubmitResponse {
    task_id: String,
}

#[derive(Deserialize)]
struct StatusResponse {
    status: String,
    video_url: Option<String>,
    error: Option<String>,
    /// `content_rejected` marks a moderation refusal.
    error_code: Option<String>,
    queue_position: Option<u32>,
}

impl TaskIdProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: http::Endpoint::new(settings)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let key = self.api.api_key.expose_secret();
        if key.is_empty() {
            builder
        } else {
            builder.bearer_auth(key)
        }
    }

    fn task_url(&self, task_id: &str) -> String {
        format!("{}/v1/tasks/{}", self.api.base_url, segment(task_id))
    }
}

/// The TaskID status words and what genq makes of them.
fn interpret(r: StatusResponse) -> ProviderResult<TaskStatus> {
    let reason = || clip(r.error.as_deref().unwrap_or("the provider gave no reason"));
    Ok(match r.status.as_str() {
        "pending" => TaskStatus::Pending,
        "queued" => TaskStatus::Queued {
            position: r.queue_position,
        },
        "throttled" => TaskStatus::Throttled,
        "running" | "processing" => TaskStatus::Running,
        "succeeded" | "completed" => match r.video_url {
            Some(video_url) if !video_url.is_empty() => TaskStatus::Succeeded { video_url },
            _ => {
                return Err(ProviderError::transient(
                    "task succeeded without a video URL",
                ))
            }
        },
        "failed" => TaskStatus::Failed {
            code: if r.error_code.as_deref() == Some(CONTENT_REJECTED) {
                FailureKind::ContentRejected
            } else {
                FailureKind::Provider
            },
            reason: reason(),
        },
        "aborted" => TaskStatus::Failed {
            code: FailureKind::Aborted,
            reason: reason(),
        },
        "canceled" | "cancelled" => TaskStatus::Failed {
            code: FailureKind::Canceled,
            reason: reason(),
        },
        other => unknown_status(NAME, other),
    })
}

impl VideoProvider for TaskIdProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let body = SubmitBody {
                idempotency_key: &request.idempotency_key,
                prompt: &request.prompt,
                duration_seconds: request.duration_seconds,
                aspect_ratio: &request.aspect_ratio,
            };
            let builder = self
                .api
                .client
                .post(format!("{}/v1/tasks", self.api.base_url))
                .header("Idempotency-Key", &request.idempotency_key)
                .json(&body);
            let r: SubmitResponse = http::send_json(self.authorized(builder), generic).await?;
            Ok(r.task_id)
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let builder = self.authorized(self.api.client.get(self.task_url(task_id)));
            interpret(http::send_json(builder, generic).await?)
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            let url = format!("{}/cancel", self.task_url(task_id));
            let _: serde_json::Value =
                http::send_json(self.authorized(self.api.client.post(url)), generic).await?;
            Ok(())
        })
    }
}
