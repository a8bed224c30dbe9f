//! The Luma Dream Machine adapter: `POST /dream-machine/v1/generations` →
//! a Generation, `GET /dream-machine/v1/generations/{id}` (state queued,
//! dreaming, completed, failed, with a reason), `DELETE …/{id}` as the only
//! way to stop one; `Authorization: Bearer`. Luma offers no idempotency key.

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::{self, Reply};
use super::{
    clip, failed_with_text, reads_as_content_refusal, segment, unknown_status, ProviderError,
    ProviderResult, TaskRequest, TaskStatus, VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "luma";

pub struct LumaProvider {
    api: http::Endpoint,
}

#[derive(Deserialize)]
struct Generation {
    id: String,
    state: String,
    /// The reason of a failed state: `failure_reason` in the current API and
    /// SDK, `state_reason` in the published OpenAPI document; either is read.
    failure_reason: Option<String>,
    state_reason: Option<String>,
    #[serde(default)]
    assets: Value,
}

impl LumaProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        Ok(Self {
            api: http::Endpoint::new(settings)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth(self.api.api_key.expose_secret())
    }

    fn generation_url(&self, id: &str) -> String {
        format!(
            "{}/dream-machine/v1/generations/{}",
            self.api.base_url,
            segment(id)
        )
    }
}

/// A prompt refused at creation (400 with a moderation `detail`).
fn classify(reply: &Reply) -> Option<ProviderError> {
    let detail = reply.detail();
    (reply.status.as_u16() == 400 && reads_as_content_refusal(&detail))
        .then(|| ProviderError::content_rejected(detail))
}

fn interpret(g: Generation) -> ProviderResult<TaskStatus> {
    Ok(match g.state.as_str() {
        "queued" => TaskStatus::Queued { position: None },
        "dreaming" => TaskStatus::Running,
        "completed" => match g.assets["video"].as_str().filter(|u| !u.is_empty()) {
            Some(url) => TaskStatus::Succeeded {
                video_url: url.to_owned(),
            },
            None => {
                return Err(ProviderError::transient(
                    "generation completed without a video asset",
                ))
            }
        },
        "failed" => {
            let reason = clip(
                g.failure_reason
                    .or(g.state_reason)
                    .as_deref()
                    .unwrap_or("the generation failed without a reason"),
            );
            failed_with_text(reason)
        }
        other => unknown_status(NAME, other),
    })
}

impl VideoProvider for LumaProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let mut body = json!({
                "prompt": request.prompt,
                "model": self.api.model,
                "aspect_ratio": request.aspect_ratio,
                // Luma's ray models take 5 s or 9 s.
                "duration": if request.duration_seconds <= 5 { "5s" } else { "9s" },
            });
            if let Some(callback) = &request.callback_url {
                body["callback_url"] = json!(callback);
            }
            let url = format!("{}/dream-machine/v1/generations", self.api.base_url);
            let builder = self.authorized(self.api.client.post(url)).json(&body);
            let g: Generation = http::send_json(builder, classify).await?;
            Ok(g.id)
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let builder = self.authorized(self.api.client.get(self.generation_url(task_id)));
            interpret(http::send_json(builder, classify).await?)
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        Box::pin(async move {
            // Luma has no cancel: deleting the generation is the only way to let it go.
            let reply =
                http::send(self.authorized(self.api.client.delete(self.generation_url(task_id))))
                    .await?;
            if reply.nothing_left_to_stop() {
                Ok(())
            } else {
                Err(reply.error())
            }
        })
    }
}
