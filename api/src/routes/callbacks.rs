//! `POST /v1/providers/{provider}/callback`: a provider saying a task
//! changed. Verified (the per-job token in the URL, compared in constant
//! time, and Replicate's signature when its secret is set), then it only
//! wakes the job's next poll: the body is never trusted for the outcome, so
//! a forged or replayed callback can at most cause an early poll.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use genq_core::callbacks::{self, CallbackKeys};
use genq_core::config::ProviderKind;
use genq_core::webhooks::{Secret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use genq_store::store::{self, CallbackWake};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Largest callback body read (a task's JSON is a few KiB).
const BODY_MAX: usize = 1024 * 1024;
/// Longest provider name in the path (configured names are shorter).
const NAME_MAX: usize = 64;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CallbackQuery {
    /// The job the callback is about (genq put it in the URL).
    pub job: Uuid,
    /// The job's callback token (genq put it in the URL).
    pub token: String,
}

/// What genq did with a callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackAnswer {
    pub received: bool,
    /// `polled` (the job's next poll was sent now), `already_polling`,
    /// `noted` (the submit is still being recorded; polled right after) or
    /// `ignored` (the job is no longer at the provider).
    pub outcome: String,
}

/// Where this API takes callbacks: the token key and, by name, the kind of
/// each configured provider that calls back. Built once, at start.
pub struct CallbackRoutes {
    keys: CallbackKeys,
    kinds: std::collections::HashMap<String, ProviderKind>,
}

impl CallbackRoutes {
    /// `None` when callbacks are off (`provider.callback_base_url` empty).
    pub fn from_settings(settings: &genq_core::config::Settings) -> Option<Self> {
        let keys = CallbackKeys::from_settings(settings)?;
        let kinds = settings
            .configured_providers()
            .into_iter()
            .map(|p| (p.kind(), p.name))
            .filter(|(kind, _)| callbacks::has_callbacks(*kind))
            .map(|(kind, name)| (name, kind))
            .collect();
        Some(Self { keys, kinds })
    }
}

fn forged() -> ApiError {
    ApiError::Unauthorized("The callback's token or signature is not valid.".into())
}

/// Receive a provider's callback about a task (genq hands the provider this
/// URL on submit when `provider.callback_base_url` is set).
#[utoipa::path(
    post, path = "/v1/providers/{provider}/callback", tag = "providers", operation_id = "provider_callback",
    params(("provider" = String, Path, description = "The configured provider's name"), CallbackQuery),
    request_body(content = Object, content_type = "application/json",
        description = "The provider's own callback body; read only to check a signature"),
    responses(
        (status = 200, description = "Verified: the job's next poll is sent (or already on its way)", body = CallbackAnswer),
        (status = 400, description = "The `job` or `token` query parameter is missing or malformed, or the body is over 1 MiB: nothing changed", body = ErrorBody),
        (status = 401, description = "The token or the provider's signature does not verify: nothing changed", body = ErrorBody),
        (status = 404, description = "No configured provider of that name calls back here", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(provider = tracing::field::Empty, job_id = tracing::field::Empty))]
pub async fn provider_callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CallbackAnswer>, ApiError> {
    let routes = state.callbacks.as_deref();
    let found = routes
        .filter(|_| provider.len() <= NAME_MAX)
        .and_then(|r| Some((&r.keys, *r.kinds.get(&provider)?)));
    let Some((keys, kind)) = found else {
        return Err(ApiError::NotFound("not found".into()));
    };
    let span = tracing::Span::current();
    span.record("provider", provider.as_str());
    let Query(q) = query.map_err(|_| {
        ApiError::invalid(
            "query",
            "The callback URL needs the `job` (a UUID) and `token` genq gave the provider.",
        )
    })?;
    span.record("job_id", tracing::field::display(q.job));
    let body = axum::body::to_bytes(body, BODY_MAX).await.map_err(|_| {
        ApiError::invalid(
            "body",
            format!("The body must be at most {BODY_MAX} bytes."),
        )
    })?;
    let count = |outcome: &'static str| {
        metrics::counter!("genq_provider_callbacks_total", "kind" => kind.as_str(), "outcome" => outcome)
            .increment(1);
    };
    if !keys.verify_token(&provider, q.job, &q.token)
        || !signed(&state, kind, &headers, &body).await
    {
        count("forged");
        tracing::warn!("a provider callback did not verify; nothing changed");
        return Err(forged());
    }
    let wake = store::wake_on_callback(&state.pool, q.job, &provider).await?;
    if wake == CallbackWake::Sent {
        state.outbox_bell.ring();
    }
    let outcome = match wake {
        CallbackWake::Sent => "polled",
        CallbackWake::AlreadyOnItsWay => "already_polling",
        CallbackWake::Noted => "noted",
        CallbackWake::Ignored => "ignored",
    };
    count(outcome);
    tracing::debug!(outcome, "provider callback");
    Ok(Json(CallbackAnswer {
        received: true,
        outcome: outcome.into(),
    }))
}

/// The provider's own signature, where it signs and genq has its key:
/// Replicate's Standard Webhooks signature with `provider.webhook_secret`,
/// fal's ED25519 signature with the keys at `provider.fal_jwks_url`.
async fn signed(state: &AppState, kind: ProviderKind, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let now = chrono::Utc::now().timestamp();
    match kind {
        ProviderKind::Replicate => {
            let secret = state.settings.provider.webhook_secret.expose_secret();
            if secret.is_empty() {
                return true;
            }
            let Ok(secret) = Secret::parse(secret) else {
                return false;
            };
            callbacks::verify_standard_webhook(
                &secret,
                header(HEADER_ID),
                header(HEADER_TIMESTAMP),
                header(HEADER_SIGNATURE),
                body,
                now,
            )
        }
        ProviderKind::Fal => {
            let Some(keys) = &state.fal_keys else {
                return true;
            };
            let message = callbacks::fal_message(
                header(callbacks::FAL_REQUEST_ID),
                header(callbacks::FAL_USER_ID),
                header(callbacks::FAL_TIMESTAMP),
                body,
                now,
            );
            let signature = hex::decode(header(callbacks::FAL_SIGNATURE))
                .ok()
                .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok());
            match (message, signature) {
                (Some(m), Some(s)) => keys.verify(&m, &s).await,
                _ => false,
            }
        }
        _ => true,
    }
}
