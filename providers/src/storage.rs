//! genq's own copy of every finished video: the storage back end (a local
//! directory by default, an S3-compatible bucket in production), copying a
//! provider's output into it (from the addresses it may be fetched from),
//! and reading it back by byte range.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, WriteMultipart};
use secrecy::ExposeSecret;
use tracing::Instrument;
use uuid::Uuid;

pub use genq_core::config::StorageSettings;

/// Why a video could not be copied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArchiveError {
    /// Worth trying again: a network error, a 5xx or 429, our storage failing.
    #[error("{0}")]
    Transient(String),
    /// Trying again can't help (an expired link, not a video, too large):
    /// the job fails and is refunded, with this reason for people.
    #[error("{message}")]
    Permanent { code: &'static str, message: String },
}

/// What was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archived {
    pub bytes: u64,
    pub took: Duration,
}

/// A byte range read from a stored video.
pub struct VideoRead {
    /// The video's whole size.
    pub size: u64,
    /// The bytes served (all of them when no range was asked for).
    pub range: Range<u64>,
    pub body: BoxStream<'static, Result<Bytes, object_store::Error>>,
}

/// The store of genq's videos.
#[derive(Clone)]
pub struct VideoStore {
    inner: Arc<dyn ObjectStore>,
    /// The directory of the `fs` back end, whose writes genq makes durable
    /// itself: object_store 0.12's local store renames a staged file into
    /// place but never syncs it, so a power cut after the job was recorded
    /// as succeeded could leave an empty file where the video was. With
    /// it, the syncs of its videos' directory, shared by the videos renamed
    /// into it meanwhile.
    local_dir: Option<(std::path::PathBuf, Arc<DirSync>)>,
    downloads: Downloads,
    max_bytes: u64,
    /// The `s3` back end, to presign links to videos, and their life
    /// (`storage.presign_secs`; `None` for `fs` or 0).
    signer: Option<(Arc<object_store::aws::AmazonS3>, Duration)>,
}

/// How a provider's output is fetched. A provider (or whoever sits between
/// genq and a plain-http one) chooses the URL, so the URL is hostile: only
/// the configured providers' own origins are trusted as they are (the
/// configuration already trusts them); any other must be `https` to public
/// addresses (checked on every address its name resolves to, connecting
/// only to those) unless `provider.allow_private`. Redirects are followed
/// by hand, each hop checked the same way; no proxy from the environment
/// (`genq_core::outbound::client_builder`).
#[derive(Clone)]
struct Downloads {
    /// For the trusted origins: the system resolver.
    trusted: reqwest::Client,
    /// For everything else: public addresses only (unless allow_private).
    public: reqwest::Client,
    trusted_origins: Vec<url::Origin>,
    /// Headers a provider's own output URLs need (Veo's API key), each
    /// sent only to that provider's origin, never across a redirect away.
    credentials: Vec<(url::Origin, &'static str, secrecy::SecretString)>,
    allow_private: bool,
}

/// Redirects followed from a provider's output URL.
const MAX_REDIRECTS: usize = 3;

/// The directory under the store's root that holds the videos (see [`VideoStore::key`]).
const VIDEOS_DIR: &str = "videos";

/// Parts are uploaded in chunks of this size (S3's minimum part is 5 MiB).
const PART_BYTES: usize = 8 << 20;
/// Parts of one video uploaded at once; the download waits for the others.
const UPLOADS_IN_FLIGHT: usize = 2;

impl VideoStore {
    /// The store `settings.storage` describes, downloading from the
    /// configured providers' origins and (see [`Downloads`]) public ones.
    pub fn new(all: &genq_core::config::Settings) -> anyhow::Result<Self> {
        let settings = &all.storage;
        let mut local_dir = None;
        let mut signer = None;
        let inner: Arc<dyn ObjectStore> = match settings.kind.as_str() {
            "s3" => {
                let mut s3 = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&settings.bucket)
                    .with_region(&settings.region)
                    .with_allow_http(settings.allow_http);
                if !settings.endpoint.is_empty() {
                    s3 = s3.with_endpoint(&settings.endpoint);
                }
                if !settings.access_key_id.is_empty() {
                    s3 = s3
                        .with_access_key_id(&settings.access_key_id)
                        .with_secret_access_key(settings.secret_access_key.expose_secret());
                }
                let s3 = Arc::new(s3.build()?);
                if settings.presign_secs > 0 {
                    signer = Some((s3.clone(), Duration::from_secs(settings.presign_secs)));
                }
                s3
            }
            _ => {
                // Made here, and its entry synced once, so that each video
                // needs only its own file and this directory synced.
                let videos = std::path::Path::new(&settings.path).join(VIDEOS_DIR);
                std::fs::create_dir_all(&videos)
                    .and_then(|()| sync_path(std::path::Path::new(&settings.path)))
                    .map_err(|e| {
                        anyhow::anyhow!("storage.path {:?} can't be created: {e}", settings.path)
                    })?;
                local_dir = Some((
                    std::path::PathBuf::from(&settings.path),
                    Arc::new(DirSync::new(videos)),
                ));
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
                    &settings.path,
                )?)
            }
        };
        Ok(Self {
            inner,
            local_dir,
            downloads: Downloads::new(all)?,
            max_bytes: settings.max_bytes,
            signer,
        })
    }

    /// A link to the video at `key` that anyone holding it may read until
    /// it expires (`storage.presign_secs`), with its expiry; `None` when the
    /// store can't make one (`fs`, or presigning off). Signed locally: no
    /// request to the store.
    pub async fn presigned(
        &self,
        key: &str,
    ) -> Result<Option<(url::Url, chrono::DateTime<chrono::Utc>)>, object_store::Error> {
        use object_store::signer::Signer;
        let Some((s3, life)) = &self.signer else {
            return Ok(None);
        };
        let url = s3
            .signed_url(reqwest::Method::GET, &Path::from(key), *life)
            .await?;
        let expires = chrono::Utc::now() + *life;
        Ok(Some((url, expires)))
    }

    /// The key of one reservation's video: a replayed job gets a new one.
    pub fn key(job_id: Uuid, reservation: i32) -> String {
        format!("{VIDEOS_DIR}/{job_id}-r{reservation}.mp4")
    }

    /// Copies the video at `url` to `key`. The upload becomes visible only
    /// once complete (a rename on disk, a completed multipart upload on S3),
    /// so a crash or a failure mid-way leaves nothing under `key`; copying
    /// again overwrites, so a repeat is harmless.
    pub async fn archive(&self, url: &str, key: &str) -> Result<Archived, ArchiveError> {
        let started = std::time::Instant::now();
        let response = self.downloads.get(url).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(classify_status(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(self.too_large());
        }
        let path = Path::from(key);
        let upload = self
            .inner
            .put_multipart(&path)
            .await
            .map_err(|e| ArchiveError::Transient(format!("storage refused the upload: {e}")))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut body = response.bytes_stream();
        let mut head: Vec<u8> = Vec::with_capacity(16);
        let mut written = 0u64;
        let failure = loop {
            // Backpressure: with storage slower than the provider, at most
            // this many parts are in flight, so a download holds a few
            // parts' worth of memory, never the whole video.
            if let Err(e) = writer.wait_for_capacity(UPLOADS_IN_FLIGHT).await {
                break Some(ArchiveError::Transient(format!(
                    "storing the video failed: {e}"
                )));
            }
            let chunk = match body.next().await {
                None => break None,
                Some(Err(e)) => {
                    break Some(ArchiveError::Transient(format!(
                        "the download broke off: {}",
                        e.without_url()
                    )))
                }
                Some(Ok(chunk)) => chunk,
            };
            written += chunk.len() as u64;
            if written > self.max_bytes {
                break Some(self.too_large());
            }
            if head.len() < 16 {
                let take = (16 - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
            }
            writer.write(&chunk);
        };
        let failure = failure.or_else(|| (!looks_like_video(&head)).then(not_a_video));
        if let Some(e) = failure {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| ArchiveError::Transient(format!("storing the video failed: {e}")))?;
        if let Some((root, dir_sync)) = &self.local_dir {
            // Durable before the caller records it: the file's bytes, then
            // the directory entry its rename made (a sync shared with the
            // files renamed in meanwhile).
            let file = root.join(key);
            let synced = tokio::task::spawn_blocking(move || sync_path(&file))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let synced = match synced {
                Ok(()) => dir_sync.sync().await,
                Err(e) => Err(e),
            };
            synced.map_err(|e| {
                ArchiveError::Transient(format!("syncing the video to disk failed: {e}"))
            })?;
        }
        Ok(Archived {
            bytes: written,
            took: started.elapsed(),
        })
    }

    fn too_large(&self) -> ArchiveError {
        ArchiveError::Permanent {
            code: "video_too_large",
            message: format!(
                "The video is larger than the {} MiB genq keeps.",
                self.max_bytes >> 20
            ),
        }
    }

    /// Reads `key`, or the byte range `range` of it (its end clamped to the
    /// size; the caller resolves ranges that start past the end).
    /// `None` when nothing is stored there.
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<VideoRead>, object_store::Error> {
        // One request: the answer carries the object's size and the range served.
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let got = match self.inner.get_opts(&Path::from(key), options).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(VideoRead {
            size: got.meta.size,
            range: got.range.clone(),
            body: got.into_stream().boxed(),
        }))
    }
}

impl Downloads {
    fn new(settings: &genq_core::config::Settings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.storage.download_timeout_ms);
        let client = |allow_private| {
            genq_core::outbound::client_builder(allow_private)
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(10))
                .build()
        };
        let allow_private = settings.provider.allow_private;
        let providers = settings.configured_providers();
        let origin_of = |p: &genq_core::config::ProviderSettings| {
            url::Url::parse(&p.effective_base_url())
                .ok()
                .map(|u| u.origin())
                .filter(url::Origin::is_tuple)
        };
        let trusted_origins = providers.iter().filter_map(origin_of).collect();
        let credentials = providers
            .iter()
            .filter_map(|p| {
                let (header, secret) = crate::provider::download_credential(p)?;
                Some((origin_of(p)?, header, secret))
            })
            .collect();
        Ok(Self {
            // The configured providers' own origins may be private.
            trusted: client(true)?,
            public: client(allow_private)?,
            trusted_origins,
            credentials,
            allow_private,
        })
    }

    /// Fetches `url`, following at most [`MAX_REDIRECTS`] redirects, each
    /// target checked before any connection is made to it.
    async fn get(&self, url: &str) -> Result<reqwest::Response, ArchiveError> {
        let mut url = url::Url::parse(url).map_err(|_| refused_url())?;
        for hop in 0..=MAX_REDIRECTS {
            let client = self.client_for(&url)?;
            let mut request = client.get(url.clone());
            for (origin, header, secret) in &self.credentials {
                if *origin == url.origin() {
                    request = request.header(*header, secret.expose_secret());
                }
            }
            let span = genq_core::trace::http_client_span("GET", &url, "download");
            let response = request.send().instrument(span.clone()).await.map_err(|e| {
                genq_core::trace::record_http_failure(&span, "connect");
                if refused_by_resolver(&e) {
                    refused_url()
                } else {
                    ArchiveError::Transient(format!(
                        "downloading the video failed: {}",
                        e.without_url()
                    ))
                }
            })?;
            genq_core::trace::record_http_status(&span, response.status().as_u16());
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let next = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok());
            match next {
                Some(next) if hop < MAX_REDIRECTS => url = next,
                _ => {
                    return Err(ArchiveError::Permanent {
                        code: "video_unavailable",
                        message: format!(
                            "The provider's link to the video redirects more than {MAX_REDIRECTS} times, or nowhere."
                        ),
                    })
                }
            }
        }
        unreachable!("the loop returns by its last hop")
    }

    /// The client that may fetch `url`, or the refusal.
    fn client_for(&self, url: &url::Url) -> Result<&reqwest::Client, ArchiveError> {
        if self.trusted_origins.contains(&url.origin()) {
            return Ok(&self.trusted);
        }
        if !matches!(url.scheme(), "https" | "http") {
            return Err(refused_url());
        }
        if self.allow_private {
            return Ok(&self.public);
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(refused_url()),
        };
        // A name is checked by the resolver; an address skips it.
        if url.scheme() != "https" || literal.is_some_and(|ip| !genq_core::outbound::is_public(ip))
        {
            return Err(refused_url());
        }
        Ok(&self.public)
    }
}

/// Whether a request failed because [`genq_core::outbound::PublicOnly`] refused its host.
fn refused_by_resolver(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<genq_core::outbound::Refused>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A URL genq will not fetch. It says nothing of what is there (no status,
/// no address): the job's error is shown to its user.
fn refused_url() -> ArchiveError {
    ArchiveError::Permanent {
        code: "video_url_refused",
        message: "The provider's link to the video points somewhere genq does not download from (only https to public addresses, or the provider's own address).".into(),
    }
}

/// Group commit of one directory's `fsync`: a caller whose rename is done
/// waits for a sync that began after it asked. Whoever finds no sync
/// running starts one for everyone who asked before it began; those who ask
/// while it runs share the next. So files archived together share their
/// directory's sync, and none is reported durable before its entry is.
pub struct DirSync {
    dir: std::path::PathBuf,
    /// Callers that have asked, ever (each takes the next number).
    asked: std::sync::atomic::AtomicU64,
    /// Every caller up to this number is covered by a finished sync.
    /// Held while syncing, so that the next sync starts after this one.
    synced: tokio::sync::Mutex<u64>,
    /// Syncs made (read by tests).
    syncs: std::sync::atomic::AtomicU64,
}

impl DirSync {
    pub fn new(dir: std::path::PathBuf) -> Self {
        Self {
            dir,
            asked: Default::default(),
            synced: Default::default(),
            syncs: Default::default(),
        }
    }

    /// Returns once a sync of the directory that began after this call has
    /// finished.
    pub async fn sync(&self) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let me = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().await;
        if *synced >= me {
            return Ok(());
        }
        // Everyone who has asked by now renamed before this sync begins.
        let upto = self.asked.load(Ordering::SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || sync_path(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("genq_video_dir_syncs_total").increment(1);
        *synced = upto;
        Ok(())
    }

    /// The syncs made so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// `fsync` of a file or a directory (opened read-only, which Linux allows for both).
fn sync_path(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// What an unsuccessful download answer means.
fn classify_status(status: u16) -> ArchiveError {
    match status {
        408 | 425 | 429 | 500..=599 => {
            ArchiveError::Transient(format!("the provider answered HTTP {status} to the download"))
        }
        401 | 403 | 404 | 410 => ArchiveError::Permanent {
            code: "video_expired",
            message: format!(
                "The provider's link to the video no longer works (HTTP {status}); it expired before genq could keep a copy."
            ),
        },
        _ => ArchiveError::Permanent {
            code: "video_unavailable",
            message: format!("The provider refused to hand over the video (HTTP {status})."),
        },
    }
}

fn not_a_video() -> ArchiveError {
    ArchiveError::Permanent {
        code: "not_a_video",
        message: "The provider's output is not a video file.".into(),
    }
}

/// Whether the first bytes are those of an MP4/MOV (`ftyp` box) or a
/// WebM/Matroska (EBML) file, the containers video providers deliver.
pub fn looks_like_video(head: &[u8]) -> bool {
    (head.len() >= 8 && &head[4..8] == b"ftyp") || head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn videos_renamed_together_share_their_directory_sync() {
        let dir = std::env::temp_dir().join(format!("genq-dirsync-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let sync = Arc::new(DirSync::new(dir.clone()));
        // A sync is running (its lock held) while all 64 ask.
        let running = sync.synced.lock().await;
        let callers: Vec<_> = (0..64)
            .map(|_| {
                let sync = sync.clone();
                tokio::spawn(async move { sync.sync().await })
            })
            .collect();
        while sync.asked.load(std::sync::atomic::Ordering::SeqCst) < 64 {
            tokio::task::yield_now().await;
        }
        drop(running);
        for c in callers {
            c.await.unwrap().unwrap();
        }
        // The first to get the lock syncs for everyone who asked before.
        let syncs = sync.syncs();
        assert_eq!(syncs, 1, "the 64 callers did not share one sync");
        // A caller after them all gets a sync of its own.
        sync.sync().await.unwrap();
        assert_eq!(sync.syncs(), syncs + 1);
        // A directory that is gone is an error, not a silent success.
        std::fs::remove_dir(&dir).unwrap();
        assert!(sync.sync().await.is_err());
    }

    #[test]
    fn only_video_containers_pass_the_sniff() {
        assert!(looks_like_video(b"\0\0\0\x18ftypisom\0\0\0\0"));
        assert!(looks_like_video(&[0x1A, 0x45, 0xDF, 0xA3, 1, 2]));
        assert!(!looks_like_video(b"<html><body>expired"));
        assert!(!looks_like_video(b""));
    }

    #[test]
    fn expired_links_are_permanent_and_outages_transient() {
        assert!(matches!(
            classify_status(403),
            ArchiveError::Permanent {
                code: "video_expired",
                ..
            }
        ));
        assert!(matches!(classify_status(503), ArchiveError::Transient(_)));
        assert!(matches!(classify_status(429), ArchiveError::Transient(_)));
    }

    #[test]
    fn settings_name_the_bad_key() {
        let mut s = StorageSettings::default();
        assert!(s.check().is_ok());
        s.kind = "ftp".into();
        assert_eq!(s.check().unwrap_err().0, "storage.kind");
        s.kind = "s3".into();
        assert_eq!(s.check().unwrap_err().0, "storage.bucket");
    }
}
