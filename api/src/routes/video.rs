//! `GET /v1/generations/{id}/video`: genq's copy of a finished video for
//! its owner: a redirect to a short-lived link into the bucket (S3), so the
//! bytes never pass through the API, or streamed, with single byte ranges
//! for seeking players.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use genq_store::store;

use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::AuthUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiPath, ApiQuery};
use crate::routes::generations::parse_job_id;
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VideoParams {
    /// `1` (or `true`): stream the video through the API even when the
    /// storage can hand out a link to it.
    #[param(pattern = "^(1|0|true|false)$")]
    pub stream: Option<String>,
}

impl VideoParams {
    fn stream(&self) -> Result<bool, ApiError> {
        match self.stream.as_deref() {
            None | Some("0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(_) => Err(ApiError::invalid(
                "stream",
                "stream must be 1, 0, true or false.",
            )),
        }
    }
}

/// The video of one of the caller's succeeded jobs.
#[utoipa::path(
    get, path = "/v1/generations/{id}/video", tag = "generations", operation_id = "get_generation_video",
    params(
        ("id" = Uuid, Path, description = "The job's ID"),
        VideoParams,
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
    ),
    responses(
        (status = 302, description = "With S3 storage (and `storage.presign_secs` > 0) and without `stream=1`: a link into the bucket, valid for `storage.presign_secs`; send the same request (and its Range) there",
            headers(("Location" = String, description = "The presigned link"))),
        (status = 200, description = "The whole video", content_type = "video/mp4", body = Vec<u8>),
        (status = 206, description = "The requested byte range", content_type = "video/mp4", body = Vec<u8>),
        (status = 400, description = "An unreadable query (`stream` other than 1, 0, true or false, or given twice)", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "No such job of the caller's, or no video (yet)", body = ErrorBody),
        (status = 416, description = "The range is outside the video", body = ErrorBody),
        (status = 503, description = "Storage unavailable; try again", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, job_id = %id))]
pub async fn video(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<VideoParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    let stream = params.stream()?;
    let no_video = || ApiError::NotFound("No video for this job.".into());
    let job = store::get_job(&state.pool, id)
        .await?
        .filter(|j| j.user_id == user.id)
        .ok_or_else(|| ApiError::NotFound("No such job.".into()))?;
    let key = job.video_key.ok_or_else(no_video)?;
    if !stream {
        let link = state
            .videos
            .presigned(&key)
            .await
            .map_err(|e| ApiError::Unavailable(e.into()))?;
        if let Some((url, _)) = link {
            let mut response = StatusCode::FOUND.into_response();
            let h = response.headers_mut();
            let location = HeaderValue::from_str(url.as_str())
                .map_err(|e| ApiError::internal(anyhow::anyhow!("presigned link: {e}")))?;
            h.insert(header::LOCATION, location);
            // The link expires: never reused from a cache.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(response);
        }
    }
    let wanted = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse);
    let size = job.video_bytes.unwrap_or(0).max(0) as u64;
    let range = match wanted.map(|r| r.resolve(size)) {
        Some(None) => {
            let mut response = ApiError::RangeNotSatisfiable.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
        Some(Some(r)) => Some(r),
        None => None,
    };
    let read = state
        .videos
        .read(&key, range.clone())
        .await
        .map_err(|e| ApiError::Unavailable(e.into()))?
        .ok_or_else(no_video)?;
    let mut response = Response::new(Body::from_stream(read.body));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    h.insert(
        header::CONTENT_LENGTH,
        read.range.end.saturating_sub(read.range.start).into(),
    );
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!(
            "bytes {}-{}/{}",
            read.range.start,
            read.range.end.saturating_sub(1),
            read.size
        );
        if let Ok(v) = HeaderValue::from_str(&content_range) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

/// One range of a `Range: bytes=…` header (several ranges are served whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `bytes=a-b` or `bytes=a-`.
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Last(u64),
}

impl ByteRange {
    fn parse(raw: &str) -> Option<Self> {
        let spec = raw.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return Some(Self::Last(b.parse().ok()?));
        }
        let start = a.parse().ok()?;
        let end = if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        };
        if end.is_some_and(|e| e < start) {
            return None;
        }
        Some(Self::From { start, end })
    }

    /// The half-open range within `size`, or `None` when unsatisfiable.
    fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        match self {
            Self::From { start, .. } if start >= size => None,
            Self::From { start, end } => Some(start..end.map_or(size, |e| (e + 1).min(size))),
            Self::Last(0) => None,
            Self::Last(n) => Some(size.saturating_sub(n)..size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve() {
        let r = |s| ByteRange::parse(s).and_then(|r| r.resolve(100));
        assert_eq!(r("bytes=0-9"), Some(0..10));
        assert_eq!(r("bytes=90-"), Some(90..100));
        assert_eq!(r("bytes=-10"), Some(90..100));
        assert_eq!(r("bytes=95-200"), Some(95..100));
        assert_eq!(r("bytes=100-"), None);
        assert_eq!(ByteRange::parse("bytes=5-1"), None);
        assert_eq!(ByteRange::parse("bytes=0-1,5-6"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
    }
}
