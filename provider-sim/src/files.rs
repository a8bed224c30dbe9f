//! The output videos the simulator serves itself: a real, playable MP4 of
//! the configured size at `/files/{id}/output.mp4` while the URL is valid,
//! then 403 or 404 like the provider's storage.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::{Dialect, Phase, Sim};

/// A real MP4 every browser plays: 2 s of a 320x180 test pattern, H.264
/// baseline, its index (`moov`) first. Made once with
/// `ffmpeg -f lavfi -i testsrc2=size=320x180:rate=24:duration=2 -c:v libx264
/// -profile:v baseline -pix_fmt yuv420p -crf 35 -movflags +faststart -an`.
pub const SAMPLE_MP4: &[u8] = include_bytes!("../assets/sample.mp4");

/// Zeros to pad a video with, sent a slice at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The bytes of an output video of `size` bytes: [`SAMPLE_MP4`], then (when
/// `size` leaves room for one) a `free` box that players skip, filling it
/// to exactly `size`. Pieces of at most 64 KiB; nothing held but the sample.
pub fn video_pieces(size: u64) -> impl Iterator<Item = axum::body::Bytes> {
    use axum::body::Bytes;
    let sample = SAMPLE_MP4.len() as u64;
    // A box's 32-bit size covers up to 4 GiB; more would need `largesize`.
    let pad = size
        .saturating_sub(sample)
        .min(u32::MAX as u64)
        .checked_sub(8)
        .map(|zeros| zeros + 8);
    let header = pad.map(|p| {
        let mut h = (p as u32).to_be_bytes().to_vec();
        h.extend_from_slice(b"free");
        Bytes::from(h)
    });
    let mut zeros = pad.map(|p| p - 8).unwrap_or(0);
    let fill = std::iter::from_fn(move || {
        (zeros > 0).then(|| {
            let n = zeros.min(ZEROS.len() as u64) as usize;
            zeros -= n as u64;
            Bytes::from_static(&ZEROS[..n])
        })
    });
    // The sample in quarters, so even the smallest video comes in parts.
    let quarter = SAMPLE_MP4.len().div_ceil(4);
    SAMPLE_MP4
        .chunks(quarter)
        .map(Bytes::from_static)
        .chain(header)
        .chain(fill)
}

/// The size [`video_pieces`] gives for a requested `size`.
pub fn video_len(size: u64) -> u64 {
    video_pieces(size).map(|b| b.len() as u64).sum()
}

/// The output video while its URL is valid; afterwards what the provider's
/// storage answers (signed CDN URLs: 403; Replicate, fal and TaskID: 404).
pub(crate) async fn download(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    // Veo's files are read with the API key, like its API.
    if sim.config.dialect == Dialect::Veo && !crate::veo::has_key(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers.",
        )
            .into_response();
    }
    let (ready, exists, not_video) = {
        let tasks = sim.tasks.lock().expect("sim lock");
        match tasks.by_id.get(&id) {
            Some(t) if t.phase(Instant::now(), sim.config.generation) == Phase::Succeeded => (
                Some(t.ready_at(sim.config.generation)),
                true,
                t.prompt.contains("[sim:not-video]"),
            ),
            Some(_) => (None, true, false),
            None => (None, false, false),
        }
    };
    if ready.filter(|r| r.elapsed() <= sim.ttl()).is_none() {
        if exists {
            sim.stats.expired_downloads.fetch_add(1, Ordering::Relaxed);
        }
        return match sim.config.dialect {
            Dialect::Runway | Dialect::Luma | Dialect::Kling | Dialect::Seedance | Dialect::MiniMax => (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "application/xml")],
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
            )
                .into_response(),
            _ => (StatusCode::NOT_FOUND, "Not Found").into_response(),
        };
    }
    sim.stats.downloads.fetch_add(1, Ordering::Relaxed);
    if not_video {
        let page = "<!doctype html><title>Your video</title><p>Sign in to download.</p>";
        return ([(header::CONTENT_TYPE, "text/html")], page).into_response();
    }
    let size = sim.config.video_bytes;
    let length = video_len(size);
    // Slowly, in four parts when `download` is set: a downloader can die
    // half-way through.
    let pause = sim.config.download / 4;
    let (mut offset, mut quarter) = (0u64, 0u64);
    let body = futures::stream::iter(video_pieces(size)).then(move |piece| {
        let start = offset;
        offset += piece.len() as u64;
        let q = start * 4 / length.max(1);
        let new_quarter = q > quarter;
        quarter = q;
        async move {
            if new_quarter && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Ok::<_, std::convert::Infallible>(piece)
        }
    });
    (
        [
            (header::CONTENT_TYPE, "video/mp4".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn videos_are_the_sample_padded_to_the_size_asked() {
        let sample = SAMPLE_MP4.len() as u64;
        assert_eq!(&SAMPLE_MP4[4..8], b"ftyp");
        assert_eq!(video_len(0), sample);
        assert_eq!(video_len(sample + 7), sample, "no room for a box");
        for size in [sample + 8, 1 << 20, 50 << 20] {
            assert_eq!(video_len(size), size);
        }
        let bytes: Vec<u8> = video_pieces(sample + 100).flatten().collect();
        assert_eq!(&bytes[..SAMPLE_MP4.len()], SAMPLE_MP4);
        let free = &bytes[SAMPLE_MP4.len()..];
        assert_eq!(&free[..4], &100u32.to_be_bytes());
        assert_eq!(&free[4..8], b"free");
        assert!(video_pieces(50 << 20).all(|p| p.len() <= 64 * 1024));
    }
}
