//! The output videos the simulator serves itself: a tiny MP4 at
//! `/files/{id}/output.mp4` while the URL is valid, then 403 or 404 like the
//! provider's storage.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::{Dialect, Phase, Sim};

/// A tiny MP4: an `ftyp` box, then an empty `mdat`.
pub const SAMPLE_MP4: &[u8] = &[
    0, 0, 0, 0x18, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0, 0, 2, 0, b'i', b's', b'o',
    b'm', b'i', b's', b'o', b'2', 0, 0, 0, 8, b'm', b'd', b'a', b't',
];

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
    if sim.config.download.is_zero() {
        return ([(header::CONTENT_TYPE, "video/mp4")], SAMPLE_MP4).into_response();
    }
    // Slowly, in four pieces: a downloader can die half-way through.
    let pause = sim.config.download / 4;
    let pieces = SAMPLE_MP4.chunks(SAMPLE_MP4.len().div_ceil(4)).enumerate();
    let body = futures::stream::iter(pieces).then(move |(i, piece)| async move {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(piece))
    });
    (
        [(header::CONTENT_TYPE, "video/mp4")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}
