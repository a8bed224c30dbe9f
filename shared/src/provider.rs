//! The video provider: a `VideoProvider` trait (submit, status, cancel) and
//! its HTTP implementation for a TaskID-style API.

use std::time::Duration;

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::ProviderSettings;

/// What the worker sends to start a video; the job ID is the idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRequest {
    pub idempotency_key: String,
    pub prompt: String,
    pub duration_seconds: u32,
    pub aspect_ratio: String,
}

/// A task's state at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    Pending,
    Running,
    Succeeded { video_url: String },
    Failed { reason: String },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: connection, timeout, 5xx, 429 (with its `Retry-After`).
    #[error("transient provider error: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying won't help: a 4xx such as a content policy refusal.
    #[error("provider refused: {message}")]
    Permanent { code: String, message: String },
}

impl ProviderError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
        }
    }
}

pub type ProviderResult<T> = Result<T, ProviderError>;

pub trait VideoProvider: Send + Sync {
    /// Starts a task, or returns the existing one for the same idempotency key.
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>>;
    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>>;
    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>>;
}

/// The HTTP client of a TaskID-style provider:
/// `POST /v1/tasks` → `{"task_id"}`, `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/cancel`.
pub struct HttpProvider {
    client: reqwest::Client,
    base_url: String,
    api_key: SecretString,
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
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Longest provider error text kept on a job.
const MAX_REASON_CHARS: usize = 500;

impl HttpProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms.min(5_000)))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let key = self.api_key.expose_secret();
        if key.is_empty() {
            builder
        } else {
            builder.bearer_auth(key)
        }
    }

    async fn send<T: for<'de> Deserialize<'de>>(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> ProviderResult<T> {
        let response = self.authorized(builder).send().await.map_err(|e| {
            ProviderError::Transient {
                // Without the URL: it is ours, and the error is enough.
                message: format!("request failed: {}", e.without_url()),
                retry_after: None,
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<T>()
                .await
                .map_err(|e| ProviderError::Transient {
                    message: format!("unreadable response: {}", e.without_url()),
                    retry_after: None,
                });
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        let body: Option<ErrorBody> = serde_json::from_str(&text).ok();
        let detail = body
            .as_ref()
            .and_then(|b| b.message.clone().or_else(|| b.error.clone()))
            .unwrap_or_else(|| text.chars().take(MAX_REASON_CHARS).collect());
        let message: String = format!("HTTP {}: {detail}", status.as_u16())
            .chars()
            .take(MAX_REASON_CHARS)
            .collect();
        if status.as_u16() == 429 || status.as_u16() == 408 || status.is_server_error() {
            Err(ProviderError::Transient {
                message,
                retry_after,
            })
        } else {
            Err(ProviderError::Permanent {
                code: body
                    .and_then(|b| b.code)
                    .unwrap_or_else(|| format!("provider_http_{}", status.as_u16())),
                message,
            })
        }
    }
}

fn task_url(base: &str, task_id: &str) -> String {
    // Task IDs come from the provider: keep them to one path segment.
    let encoded: String = url::form_urlencoded::byte_serialize(task_id.as_bytes()).collect();
    format!("{base}/v1/tasks/{encoded}")
}

impl VideoProvider for HttpProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let builder = self
                .client
                .post(format!("{}/v1/tasks", self.base_url))
                .header("Idempotency-Key", &request.idempotency_key)
                .json(request);
            let r: SubmitResponse = self.send(builder).await?;
            Ok(r.task_id)
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let r: StatusResponse = self
                .send(self.client.get(task_url(&self.base_url, task_id)))
                .await?;
            match r.status.as_str() {
                "pending" | "queued" => Ok(TaskStatus::Pending),
                "running" | "processing" => Ok(TaskStatus::Running),
                "succeeded" | "completed" => match r.video_url {
                    Some(video_url) => Ok(TaskStatus::Succeeded { video_url }),
                    None => Err(ProviderError::Transient {
                        message: "task succeeded without a video URL".into(),
                        retry_after: None,
                    }),
                },
                "failed" | "canceled" | "cancelled" => Ok(TaskStatus::Failed {
                    reason: r
                        .error
                        .unwrap_or_else(|| "the provider gave no reason".into())
                        .chars()
                        .take(MAX_REASON_CHARS)
                        .collect(),
                }),
                other => Err(ProviderError::Transient {
                    message: format!("unknown task status {other:?}"),
                    retry_after: None,
                }),
            }
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            let url = format!("{}/cancel", task_url(&self.base_url, task_id));
            let _: serde_json::Value = self.send(self.client.post(url)).await?;
            Ok(())
        })
    }
}

/// The provider's idempotency key for one reservation of a job: stable across
/// retries and duplicates, new when an operator replays a refunded job.
pub fn idempotency_key(job_id: Uuid, reservation: i32) -> String {
    if reservation <= 1 {
        job_id.to_string()
    } else {
        format!("{job_id}-r{reservation}")
    }
}
