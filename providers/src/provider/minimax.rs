//! The MiniMax Hailuo adapter: `POST /v1/video_generation` → `task_id`,
//! `GET /v1/query/video_generation?task_id=` (Preparing, Queueing,
//! Processing, Success with a `file_id`, Fail), then
//! `GET /v1/files/retrieve?file_id=` for the download URL;
//! `Authorization: Bearer`. Every answer carries `base_resp {status_code,
//! status_msg}`, which is where MiniMax reports errors, often with HTTP 200.
//! No cancel, no idempotency key.

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::http;
use super::{
    clip, unknown_status, FailureKind, ProviderError, ProviderResult, TaskRequest, TaskStatus,
    VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "minimax";

/// Longest task or file ID accepted from the provider (they are digits).
const MAX_ID_CHARS: usize = 64;

pub struct MiniMaxProvider {
    api: http::Endpoint,
}

impl MiniMaxProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: http::Endpoint::new(settings)?,
        })
    }

    /// Sends a request and checks `base_resp`: an answer is good only with
    /// HTTP success and status code 0, or (`task_answer`) when it tells a
    /// task's status, whose `base_resp` then says why a task failed.
    async fn call(
        &self,
        builder: reqwest::RequestBuilder,
        task_answer: bool,
    ) -> ProviderResult<Value> {
        let reply = http::send(builder.bearer_auth(self.api.api_key.expose_secret())).await?;
        let code = reply
            .json
            .as_ref()
            .and_then(|j| j["base_resp"]["status_code"].as_i64());
        if !reply.is_success() {
            let e = code.and_then(|c| by_code(c, &base_msg(reply.json.as_ref())));
            return Err(e.unwrap_or_else(|| reply.error()));
        }
        let body: Value = reply.parse()?;
        match code {
            Some(0) => Ok(body),
            Some(_) if task_answer && body["status"].is_string() => Ok(body),
            Some(c) => Err(by_code(c, &base_msg(Some(&body))).unwrap_or_else(|| {
                ProviderError::permanent(c.to_string(), clip(&base_msg(Some(&body))))
            })),
            None => Err(ProviderError::transient("answer without base_resp")),
        }
    }
}

fn base_msg(body: Option<&Value>) -> String {
    body.and_then(|b| b["base_resp"]["status_msg"].as_str())
        .unwrap_or("no message")
        .to_owned()
}

/// MiniMax's status codes (platform.minimax.io error codes).
fn by_code(code: i64, message: &str) -> Option<ProviderError> {
    match code {
        1026 | 1027 => Some(ProviderError::content_rejected(clip(&format!(
            "MiniMax refused the content as sensitive ({code}): {message}"
        )))),
        // Rate limits (1002, 1039), unknown error, timeout, internal error.
        1000 | 1001 | 1002 | 1013 | 1039 => Some(ProviderError::transient(clip(&format!(
            "MiniMax busy ({code}): {message}"
        )))),
        1004 | 2049 => Some(ProviderError::permanent(
            "provider_auth",
            clip(&format!("MiniMax refused the key ({code}): {message}")),
        )),
        1008 => Some(ProviderError::permanent(
            "provider_account",
            clip(&format!(
                "MiniMax account balance is too low ({code}): {message}"
            )),
        )),
        _ => None,
    }
}

/// An ID from the provider as text: MiniMax sends them as strings or
/// numbers; anything but a short run of letters and digits is refused.
fn id_of(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!s.is_empty()
        && s.len() <= MAX_ID_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then_some(s)
}

impl VideoProvider for MiniMaxProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            // Hailuo 02 makes 6 s or 10 s clips.
            let duration = if request.duration_seconds <= 6 { 6 } else { 10 };
            let body = json!({
                "model": self.api.model,
                "prompt": request.prompt,
                "duration": duration,
                "resolution": "768P",
            });
            let url = format!("{}/v1/video_generation", self.api.base_url);
            let body = self
                .call(self.api.client.post(url).json(&body), false)
                .await?;
            id_of(&body["task_id"])
                .ok_or_else(|| ProviderError::transient("submit answered without a task_id"))
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let url = format!("{}/v1/query/video_generation", self.api.base_url);
            let task = self
                .call(
                    self.api.client.get(url).query(&[("task_id", task_id)]),
                    true,
                )
                .await?;
            Ok(match task["status"].as_str().unwrap_or_default() {
                "Preparing" | "Queueing" => TaskStatus::Queued { position: None },
                "Processing" => TaskStatus::Running,
                "Success" => {
                    let file_id = id_of(&task["file_id"]).ok_or_else(|| {
                        ProviderError::transient("task succeeded without a file_id")
                    })?;
                    let url = format!("{}/v1/files/retrieve", self.api.base_url);
                    let file = self
                        .call(
                            self.api.client.get(url).query(&[("file_id", &file_id)]),
                            false,
                        )
                        .await?;
                    match file["file"]["download_url"].as_str() {
                        Some(u) if !u.is_empty() => TaskStatus::Succeeded {
                            video_url: u.to_owned(),
                        },
                        _ => {
                            return Err(ProviderError::transient(
                                "the file answered without a download_url",
                            ))
                        }
                    }
                }
                "Fail" => {
                    let why = base_msg(Some(&task));
                    match task["base_resp"]["status_code"].as_i64() {
                        // The output (1027) or the prompt (1026) was sensitive.
                        Some(c @ (1026 | 1027)) => TaskStatus::Failed {
                            code: FailureKind::ContentRejected,
                            reason: clip(&format!(
                                "MiniMax refused the content as sensitive ({c}): {why}"
                            )),
                        },
                        _ => TaskStatus::Failed {
                            code: FailureKind::Provider,
                            reason: clip(&format!("MiniMax failed the task: {why}")),
                        },
                    }
                }
                other => unknown_status(NAME, other),
            })
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
    fn ids_are_short_and_plain() {
        assert_eq!(id_of(&json!(123456)).as_deref(), Some("123456"));
        assert_eq!(
            id_of(&json!("106916112212032")).as_deref(),
            Some("106916112212032")
        );
        assert!(id_of(&json!("../x")).is_none());
        assert!(id_of(&json!("a".repeat(65))).is_none());
        assert!(id_of(&json!(null)).is_none());
    }
}
