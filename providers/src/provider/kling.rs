//! The Kling adapter: `POST /v1/videos/text2video` (with genq's idempotency
//! key as `external_task_id`), `GET /v1/videos/text2video/{task_id or
//! external_task_id}` (submitted, processing, succeed, failed +
//! `task_status_msg`); every request signed with a short-lived HS256 JWT made
//! from the access key and secret key. Kling has no cancel endpoint.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::http::{self, Reply};
use super::{
    clip, failed_with_text, segment, unknown_status, ProviderError, ProviderResult, TaskRequest,
    TaskStatus, VideoProvider,
};
use genq_core::config::ProviderSettings;

const NAME: &str = "kling";

/// Kling's service code for a prompt refused by its content security policy.
const CODE_CONTENT_SECURITY: i64 = 1301;

pub struct KlingProvider {
    client: reqwest::Client,
    base_url: String,
    access_key: String,
    secret_key: SecretString,
    model: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    exp: u64,
    nbf: u64,
}

#[derive(Deserialize)]
struct Envelope {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Value,
}

impl KlingProvider {
    pub fn new(settings: &ProviderSettings) -> anyhow::Result<Self> {
        let key = settings.api_key.expose_secret();
        let (ak, sk) = key.split_once(':').unwrap_or((key, ""));
        Ok(Self {
            client: http::client(settings)?,
            base_url: settings.effective_base_url(),
            access_key: ak.to_owned(),
            secret_key: SecretString::from(sk.to_owned()),
            model: settings.effective_model(),
        })
    }

    /// A token valid for 30 minutes (from 5 s ago, for clock skew).
    fn token(&self) -> ProviderResult<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            iss: &self.access_key,
            exp: now + 1800,
            nbf: now.saturating_sub(5),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.secret_key.expose_secret().as_bytes()),
        )
        .map_err(|e| {
            ProviderError::permanent("provider_auth", format!("signing the Kling token: {e}"))
        })
    }

    fn task_url(&self, id: &str) -> String {
        format!("{}/v1/videos/text2video/{}", self.base_url, segment(id))
    }

    /// Sends a signed request and unwraps Kling's `{code, message, data}`.
    async fn call(&self, builder: reqwest::RequestBuilder) -> ProviderResult<Value> {
        let reply = http::send(builder.bearer_auth(self.token()?)).await?;
        if !reply.is_success() {
            return Err(classify(&reply).unwrap_or_else(|| reply.error()));
        }
        let envelope: Envelope = reply.parse()?;
        if envelope.code != 0 {
            // An error with a 200: classify by the service code alone.
            return Err(
                by_code(envelope.code, &envelope.message).unwrap_or_else(|| {
                    ProviderError::permanent(envelope.code.to_string(), clip(&envelope.message))
                }),
            );
        }
        Ok(envelope.data)
    }
}

/// Kling's service codes where the HTTP status alone would mislead.
fn by_code(code: i64, message: &str) -> Option<ProviderError> {
    match code {
        1300 | CODE_CONTENT_SECURITY => Some(ProviderError::content_rejected(clip(&format!(
            "The prompt was refused by Kling's content security policy: {message}"
        )))),
        // Account problems (arrears, depleted resource pack) come as 429 but
        // no retry will fix them.
        1100..=1199 => Some(ProviderError::permanent(
            "provider_account",
            clip(&format!("Kling account problem ({code}): {message}")),
        )),
        1302 | 1303 | 5000..=5099 => Some(ProviderError::transient(clip(&format!(
            "Kling busy ({code}): {message}"
        )))),
        _ => None,
    }
}

fn classify(reply: &Reply) -> Option<ProviderError> {
    let code = reply.json.as_ref()?["code"].as_i64()?;
    let mut e = by_code(code, &reply.detail())?;
    if let ProviderError::Transient { retry_after, .. } = &mut e {
        *retry_after = reply.retry_after;
    }
    Some(e)
}

fn interpret(data: &Value) -> ProviderResult<TaskStatus> {
    let status = data["task_status"].as_str().unwrap_or_default();
    Ok(match status {
        "submitted" => TaskStatus::Queued { position: None },
        "processing" => TaskStatus::Running,
        "succeed" => match data["task_result"]["videos"][0]["url"].as_str() {
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
            let reason = clip(
                data["task_status_msg"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .unwrap_or("the task failed without a message"),
            );
            failed_with_text(reason)
        }
        other => unknown_status(NAME, other),
    })
}

impl VideoProvider for KlingProvider {
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move {
            let mut body = json!({
                "model_name": self.model,
                "prompt": request.prompt,
                "mode": "std",
                "aspect_ratio": request.aspect_ratio,
                "duration": request.duration_seconds.to_string(),
                "external_task_id": request.idempotency_key,
            });
            if let Some(callback) = &request.callback_url {
                body["callback_url"] = json!(callback);
            }
            let url = format!("{}/v1/videos/text2video", self.base_url);
            match self.call(self.client.post(url).json(&body)).await {
                Ok(data) => data["task_id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ProviderError::transient("submit answered without a task_id")),
                // external_task_id is unique per account: a refused duplicate
                // means the task exists; find it by that ID.
                Err(ProviderError::Permanent { code, message })
                    if code != super::CONTENT_REJECTED && code != "provider_account" =>
                {
                    match self
                        .call(self.client.get(self.task_url(&request.idempotency_key)))
                        .await
                    {
                        Ok(data) if data["task_id"].is_string() => {
                            tracing::info!(key = %request.idempotency_key, "Kling already had this task");
                            Ok(data["task_id"].as_str().unwrap_or_default().to_owned())
                        }
                        _ => Err(ProviderError::Permanent { code, message }),
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>> {
        Box::pin(async move {
            let data = self.call(self.client.get(self.task_url(task_id))).await?;
            interpret(&data)
        })
    }

    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>> {
        super::no_cancel(NAME, task_id)
    }
}
