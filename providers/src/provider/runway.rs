//! The Runway tasks adapter: `POST /v1/text_to_video` → `{"id"}`,
//! `GET /v1/tasks/{id}` (PENDING, THROTTLED, RUNNING, SUCCEEDED, FAILED,
//! CANCELLED), `DELETE /v1/tasks/{id}` to cancel; `Authorization: Bearer` and
//! `X-Runway-Version`. `SAFETY.*` failure codes are content refusals. Runway
//! offers no idempotency key.

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use super::http::{self, generic};
use super::{
    clip, segment, unknown_status, FailureKind, ProviderError, ProviderResult, TaskRequest,
    TaskStatus, VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "runway";

/// The API version genq speaks (required on every request).
pub const RUNWAY_VERSION: &str = "2024-11-06";

pub struct RunwayProvider {
    api: http::Endpoint,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Task {
    status: String,
    #[serde(default)]
    output: Vec<String>,
    failure: Option<String>,
    failure_code: Option<String>,
}

impl RunwayProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: http::Endpoint::new(settings)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder
            .bearer_auth(self.api.api_key.expose_secret())
            .header("X-Runway-Version", RUNWAY_VERSION)
    }

    fn task_url(&self, id: &str) -> String {
        format!("{}/v1/tasks/{}", self.api.base_url, segment(id))
    }
}

/// Runway wants output sizes, and text-to-video models take only landscape
/// `1280:720` or portrait `720:1280` in common.
fn ratio(aspect: &str) -> &'static str {
    match aspect {
        "9:16" | "3:4" | "9:21" | "2:3" => "720:1280",
        _ => "1280:720",
    }
}

/// The duration each text-to-video model accepts closest to the request:
/// `veo3` only 8 s, `veo3.1`/`veo3.1_fast` 4, 6 or 8 s, others (`gen4.5`) 2–10 s.
fn duration(model: &str, seconds: u32) -> u32 {
    match model {
        "veo3" => 8,
        "veo3.1" | "veo3.1_fast" => [4, 6, 8].into_iter().find(|d| *d >= seconds).unwrap_or(8),
        _ => seconds.clamp(2, 10),
    }
}

/// A `SAFETY.*` failure in words: Runway asks that the code itself be treated
/// as a diagnostic, not shown as the explanation.
fn safety_reason(code: &str) -> String {
    let what = if code.starts_with("SAFETY.OUTPUT") {
        "The generated video was refused by Runway's content moderation"
    } else {
        "The prompt or an input was refused by Runway's content moderation"
    };
    format!("{what}; please change the request and try again. ({code})")
}

fn interpret(t: Task) -> ProviderResult<TaskStatus> {
    Ok(match t.status.as_str() {
        "PENDING" => TaskStatus::Queued { position: None },
        // Accepted and queued behind the account's concurrency: not an error.
        "THROTTLED" => TaskStatus::Throttled,
        "RUNNING" => TaskStatus::Running,
        "SUCCEEDED" => match t.output.into_iter().find(|u| !u.is_empty()) {
            Some(video_url) => TaskStatus::Succeeded { video_url },
            None => {
                return Err(ProviderError::transient(
                    "task succeeded without an output URL",
                ))
            }
        },
        "FAILED" => {
            let code = t.failure_code.unwrap_or_default();
            if code.starts_with("SAFETY.") {
                TaskStatus::Failed {
                    code: FailureKind::ContentRejected,
                    reason: safety_reason(&code),
                }
            } else {
                let failure = t.failure.unwrap_or_else(|| "the task failed".into());
                let reason = if code.is_empty() {
                    failure
                } else {
                    format!("{failure} ({code})")
                };
                TaskStatus::Failed {
                    code: FailureKind::Provider,
                    reason: clip(&reason),
                }
            }
        }
        "CANCELLED" => TaskStatus::Failed {
            code: FailureKind::Canceled,
            reason: "the task was canceled".into(),
        },
        other => unknown_status(NAME, other),
    })
}

impl VideoProvider for RunwayProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let body = json!({
                "model": self.api.model,
                "promptText": request.prompt,
                "ratio": ratio(&request.aspect_ratio),
                "duration": duration(&self.api.model, request.duration_seconds),
            });
            let url = format!("{}/v1/text_to_video", self.api.base_url);
            let builder = self.authorized(self.api.client.post(url)).json(&body);
            let r: Created = http::send_json(builder, generic).await?;
            Ok(r.id)
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
            let reply =
                http::send(self.authorized(self.api.client.delete(self.task_url(task_id)))).await?;
            // 204 canceled (or deleted, when already finished); 404 nothing to stop.
            if reply.nothing_left_to_stop() {
                Ok(())
            } else {
                Err(reply.error())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_each_model_takes() {
        assert_eq!(ratio("16:9"), "1280:720");
        assert_eq!(ratio("9:16"), "720:1280");
        assert_eq!(duration("gen4.5", 5), 5);
        assert_eq!(duration("gen4.5", 30), 10);
        assert_eq!(duration("veo3", 5), 8);
        assert_eq!(duration("veo3.1_fast", 5), 6);
    }

    #[test]
    fn safety_codes_are_content_refusals_in_words() {
        let t = Task {
            status: "FAILED".into(),
            output: vec![],
            failure: Some("x".into()),
            failure_code: Some("SAFETY.INPUT.TEXT".into()),
        };
        match interpret(t).unwrap() {
            TaskStatus::Failed { code, reason } => {
                assert_eq!(code, FailureKind::ContentRejected);
                assert!(
                    reason.starts_with("The prompt or an input was refused"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
