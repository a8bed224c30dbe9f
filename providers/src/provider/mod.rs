//! The video provider: the `VideoProvider` trait (submit, status, cancel), the
//! task and error types every adapter speaks, and `build`, which picks the
//! adapter a deployment's `provider.kind` names. One file per provider API.

mod fal;
pub mod http;
mod kling;
mod luma;
mod minimax;
pub mod registry;
mod replicate;
mod runway;
mod seedance;
mod taskid;
mod veo;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use genq_core::config::{ProviderKind, ProviderSettings};

pub use fal::FalProvider;
pub use kling::KlingProvider;
pub use luma::LumaProvider;
pub use minimax::MiniMaxProvider;
pub use registry::{ConfiguredProvider, Providers};
pub use replicate::ReplicateProvider;
pub use runway::RunwayProvider;
pub use seedance::SeedanceProvider;
pub use taskid::TaskIdProvider;
pub use veo::VeoProvider;

/// `ProviderError::Permanent.code` of a content or moderation refusal: the
/// worker fails the job with error code `content_rejected` and the message.
pub const CONTENT_REJECTED: &str = "content_rejected";

/// What the worker sends to start a video; the job ID is the idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRequest {
    pub idempotency_key: String,
    pub prompt: String,
    pub duration_seconds: u32,
    pub aspect_ratio: String,
    /// How long the provider may work on the task before it gives up by
    /// itself (Replicate's `Cancel-After`); the job's own deadline.
    #[serde(skip)]
    pub cancel_after: Option<Duration>,
    /// Where the provider should call back when the task ends (dialects
    /// with callbacks, when `provider.callback_base_url` is set).
    #[serde(skip)]
    pub callback_url: Option<String>,
}

/// Why a task ended without a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A moderation or content refusal: never retried; the user is told why.
    ContentRejected,
    /// The provider failed the task (its own error).
    Provider,
    /// The deadline passed before the task ran (Replicate `aborted`; not billed).
    Aborted,
    /// The task was canceled (by genq, or by the provider at the deadline).
    Canceled,
}

impl FailureKind {
    /// The job's `error_code` for this failure.
    pub fn error_code(self) -> &'static str {
        match self {
            Self::ContentRejected => CONTENT_REJECTED,
            Self::Provider => "provider_failed",
            Self::Aborted => "provider_aborted",
            Self::Canceled => "provider_canceled",
        }
    }
}

/// A task's state at the provider, in words the worker can tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    /// Accepted; the provider says nothing more specific.
    Pending,
    /// Waiting for a runner, with its place in the queue when the provider says.
    Queued {
        position: Option<u32>,
    },
    /// Accepted but held back by the provider's rate or concurrency limits.
    Throttled,
    Running,
    Succeeded {
        video_url: String,
    },
    Failed {
        code: FailureKind,
        reason: String,
    },
    /// A status word the adapter does not know: never a success. Logged and
    /// counted (`genq_provider_unknown_status_total`); the job's deadline ends it.
    Unknown {
        status: String,
    },
}

impl TaskStatus {
    /// For a task still working: a short key of its state (a change of key
    /// is a new timeline event) and a sentence for people.
    pub fn describe(&self) -> Option<(String, String)> {
        Some(match self {
            Self::Pending => ("pending".into(), "The provider accepted the task; it has not started yet.".into()),
            Self::Queued { position: Some(p) } => (
                format!("queued:{p}"),
                format!("Queued at the provider, position {p}."),
            ),
            Self::Queued { position: None } => ("queued".into(), "Queued at the provider.".into()),
            Self::Throttled => (
                "throttled".into(),
                "The provider is holding the task back (its rate or concurrency limit); it will start later.".into(),
            ),
            Self::Running => ("running".into(), "The provider is generating the video.".into()),
            Self::Unknown { status } => (
                format!("unknown:{status}"),
                format!("The provider reports a status genq does not know ({status:?}); waiting, at most until the deadline."),
            ),
            Self::Succeeded { .. } | Self::Failed { .. } => return None,
        })
    }

    /// Still worth polling.
    pub fn is_working(&self) -> bool {
        matches!(
            self,
            Self::Pending
                | Self::Queued { .. }
                | Self::Throttled
                | Self::Running
                | Self::Unknown { .. }
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: connection, timeout, 5xx, 429 (with its `Retry-After`).
    #[error("transient provider error: {message}")]
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Retrying won't help: a 4xx, or a content refusal (`code` = `content_rejected`).
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

    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Permanent {
            code: code.into(),
            message: message.into(),
        }
    }

    /// A content refusal with a message a person can read.
    pub fn content_rejected(message: impl Into<String>) -> Self {
        Self::permanent(CONTENT_REJECTED, message)
    }
}

pub type ProviderResult<T> = Result<T, ProviderError>;

pub trait VideoProvider: Send + Sync {
    /// Starts a task, or returns the existing one for the same idempotency
    /// key where the provider supports it (see docs/providers.md).
    fn submit<'a>(&'a self, request: &'a TaskRequest) -> BoxFuture<'a, ProviderResult<String>>;
    fn status<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<TaskStatus>>;
    /// Asks the provider to stop the task; Ok when there is nothing left to stop.
    fn cancel<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, ProviderResult<()>>;
}

/// The adapter `settings.kind` names, pointed at `settings`' base URL and model.
pub fn build(settings: &ProviderSettings) -> anyhow::Result<Arc<dyn VideoProvider>> {
    Ok(match settings.kind() {
        ProviderKind::TaskId => Arc::new(TaskIdProvider::new(settings)?),
        ProviderKind::Replicate => Arc::new(ReplicateProvider::new(settings)?),
        ProviderKind::Fal => Arc::new(FalProvider::new(settings)?),
        ProviderKind::Runway => Arc::new(RunwayProvider::new(settings)?),
        ProviderKind::Luma => Arc::new(LumaProvider::new(settings)?),
        ProviderKind::Kling => Arc::new(KlingProvider::new(settings)?),
        ProviderKind::Veo => Arc::new(VeoProvider::new(settings)?),
        ProviderKind::Seedance => Arc::new(SeedanceProvider::new(settings)?),
        ProviderKind::MiniMax => Arc::new(MiniMaxProvider::new(settings)?),
    })
}

/// The header a provider's own output URLs need (Veo's files are read with
/// the API key), sent only to that provider's origin.
pub fn download_credential(
    settings: &ProviderSettings,
) -> Option<(&'static str, secrecy::SecretString)> {
    (settings.kind() == ProviderKind::Veo).then(|| (veo::API_KEY_HEADER, settings.api_key.clone()))
}

/// A status word `provider` answered that its adapter does not know: logged,
/// counted, and reported as `Unknown` (never a success).
pub(crate) fn unknown_status(provider: &'static str, status: &str) -> TaskStatus {
    // Bounded text: a provider could send anything.
    let label: String = status
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c))
        .take(40)
        .collect();
    tracing::warn!(provider, status = %label, "the provider reported an unknown task status");
    metrics::counter!("genq_provider_unknown_status_total", "provider" => provider, "status" => status_label(&label))
        .increment(1);
    TaskStatus::Unknown { status: label }
}

/// Distinct unknown status words that get a metric series of their own;
/// the rest are counted as `other`, so a provider sending a new word each
/// time can't grow the metrics without bound.
const UNKNOWN_STATUS_LABELS: usize = 32;

/// The metric label of an unknown status word: itself while few have been
/// seen, else `other`.
fn status_label(word: &str) -> String {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.iter().any(|w| w == word) {
        return word.to_owned();
    }
    if seen.len() < UNKNOWN_STATUS_LABELS {
        seen.push(word.to_owned());
        return word.to_owned();
    }
    "other".into()
}

/// Longest provider text kept on a job.
pub(crate) const MAX_REASON_CHARS: usize = 500;

pub(crate) fn clip(text: &str) -> String {
    text.chars().take(MAX_REASON_CHARS).collect()
}

/// A failure told only in free text: a content refusal when it reads as
/// one ([`reads_as_content_refusal`]), else the provider's failure.
pub(crate) fn failed_with_text(reason: String) -> TaskStatus {
    let code = if reads_as_content_refusal(&reason) {
        FailureKind::ContentRejected
    } else {
        FailureKind::Provider
    };
    TaskStatus::Failed { code, reason }
}

/// Whether a provider's free-text failure reads as a moderation or content
/// refusal, for providers without a structured code for it (Replicate, Luma,
/// Kling's `task_status_msg`).
pub(crate) fn reads_as_content_refusal(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "nsfw",
        "sensitive",
        "safety",
        "moderation",
        "content policy",
        "content_policy",
        "content security",
        "risk control",
        "not allowed",
        "flagged",
    ]
    .iter()
    .any(|w| t.contains(w))
}

/// The cancel of a provider with no way to stop a task: nothing to do, the
/// task runs to its end (the job is refunded in genq all the same).
pub(crate) fn no_cancel<'a>(
    provider: &'static str,
    task_id: &'a str,
) -> BoxFuture<'a, ProviderResult<()>> {
    Box::pin(async move {
        tracing::debug!(
            provider,
            task_id,
            "no cancel at this provider; the task runs to its end"
        );
        Ok(())
    })
}

/// One path segment: task IDs come from the provider.
pub(crate) fn segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_words_share_a_bounded_set_of_labels() {
        let labels: std::collections::HashSet<String> = (0..200)
            .map(|i| status_label(&format!("made-up-{i}")))
            .collect();
        assert!(labels.len() <= UNKNOWN_STATUS_LABELS + 1, "{labels:?}");
        assert!(labels.contains("other"));
    }
}
