//! `[storage]`: where genq keeps its copies of finished videos.

use secrecy::SecretString;
use serde::Deserialize;

/// Where videos are kept (`storage.*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `fs` (a local directory, the default) or `s3` (an S3-compatible bucket).
    pub kind: String,
    /// The directory of `fs`; created if missing.
    pub path: String,
    /// The bucket of `s3`.
    pub bucket: String,
    /// An S3-compatible endpoint (MinIO, R2, moto…); empty for AWS itself.
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    /// Allow a plain-HTTP endpoint (local S3-compatible servers).
    pub allow_http: bool,
    /// Largest video copied; a larger one fails the job with a refund.
    pub max_bytes: u64,
    /// Bound on one download from the provider.
    pub download_timeout_ms: u64,
    /// With `s3`: how long the links to a video that genq hands out live
    /// (`GET /v1/generations/{id}/video` redirects to one, so the bytes
    /// never pass through the API). 0: never; the API streams the video.
    pub presign_secs: u64,
}

/// The longest life S3 allows a presigned link (7 days).
pub const PRESIGN_SECS_MAX: u64 = 604_800;

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            kind: "fs".into(),
            path: "data/videos".into(),
            bucket: String::new(),
            endpoint: String::new(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: SecretString::from(""),
            allow_http: false,
            max_bytes: 1 << 30,
            download_timeout_ms: 120_000,
            presign_secs: 300,
        }
    }
}

impl StorageSettings {
    /// What types alone can't check: `Err((key, why))`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        match self.kind.as_str() {
            "fs" if self.path.trim().is_empty() => Err(("storage.path", "must name a directory")),
            "fs" => Ok(()),
            "s3" if self.bucket.trim().is_empty() => {
                Err(("storage.bucket", "must be set when storage.kind is s3"))
            }
            "s3" => Ok(()),
            _ => Err(("storage.kind", "must be fs or s3")),
        }?;
        if self.max_bytes == 0 {
            return Err(("storage.max_bytes", "must be more than 0"));
        }
        if self.download_timeout_ms == 0 {
            return Err(("storage.download_timeout_ms", "must be more than 0"));
        }
        if self.presign_secs > PRESIGN_SECS_MAX {
            return Err((
                "storage.presign_secs",
                "must be at most 604800 (7 days, S3's limit; 0: never presign)",
            ));
        }
        Ok(())
    }
}
