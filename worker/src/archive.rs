//! The last step of a succeeded task: copy the provider's video into genq's
//! storage, then mark the job succeeded (and spend its credits). Nothing is
//! charged until the copy is stored; a copy that can never be made fails
//! the job with a refund.

use genq_core::domain::{EventKind, JobStatus};
use genq_core::messages::PollMessage;
use genq_providers::provider::ProviderError;
use genq_providers::storage::{ArchiveError, VideoStore};
use genq_store::store::{Job, Note, Transition};

use crate::handler::{Handler, ProviderCall, Step};

impl Handler {
    /// Archives the video of a running `job` the provider finished, then
    /// settles it. A transient failure polls again later (the provider says
    /// succeeded again, and the copy is retried, overwriting any half of it);
    /// `errors` counts towards the job's retry limit.
    #[tracing::instrument(name = "archive", skip_all, fields(job_id = %job.id, user_id = %job.user_id))]
    pub async fn archive_and_finish(&self, job: &Job, video_url: &str, errors: u32) -> Step {
        let key = VideoStore::key(job.id, job.reservation);
        match self.videos.archive(video_url, &key).await {
            Ok(archived) => {
                metrics::counter!("genq_videos_archived_total").increment(1);
                metrics::counter!("genq_video_bytes_archived_total").increment(archived.bytes);
                metrics::histogram!("genq_archive_seconds").record(archived.took.as_secs_f64());
                metrics::histogram!("genq_archive_bytes").record(archived.bytes as f64);
                let mut done = Transition::new(
                    job.id,
                    &[JobStatus::Running],
                    JobStatus::Succeeded,
                    format!("The video is ready; {} credits spent.", job.cost),
                );
                done.provider_result_url = Some(video_url);
                done.video = Some((&key, archived.bytes as i64));
                // One statement: the copy's event, the status and the commit.
                done.note = Some(Note {
                    kind: EventKind::Archived,
                    message: format!(
                        "The video was copied to genq's storage ({} bytes in {} ms).",
                        archived.bytes,
                        archived.took.as_millis()
                    ),
                    data: Some(serde_json::json!({
                        "bytes": archived.bytes,
                        "duration_ms": archived.took.as_millis() as u64,
                    })),
                });
                if self.settler.apply(&done).await?.is_some() {
                    tracing::info!(bytes = archived.bytes, "job succeeded");
                }
                Ok(())
            }
            Err(ArchiveError::Permanent { code, message }) => {
                metrics::counter!("genq_archive_failures_total", "code" => code).increment(1);
                self.finish_failed(job.id, &[JobStatus::Running], code, &message)
                    .await
            }
            Err(ArchiveError::Transient(message)) => {
                metrics::counter!("genq_archive_failures_total", "code" => "transient")
                    .increment(1);
                let next = PollMessage::Poll {
                    job_id: job.id,
                    seq: job.poll_seq,
                    errors: errors + 1,
                };
                let error = ProviderError::Transient {
                    message: format!("copying the video: {message}"),
                    retry_after: None,
                };
                self.provider_error(ProviderCall::Poll, job, errors + 1, error, &next)
                    .await
            }
        }
    }
}
