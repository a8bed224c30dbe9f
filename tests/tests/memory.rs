//! A download into storage slower than the provider holds a few parts in
//! memory, not the video: a large video from a fast provider, copied into
//! moto's S3 behind a throttled link, while this process's resident memory
//! is sampled. A test binary of its own, so no other test shares the
//! process whose memory is measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use genq_providers::storage::VideoStore;
#[path = "harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use harness::{test_settings, Moto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The video's size, and how fast the link to storage carries it.
const VIDEO_BYTES: usize = 256 << 20;
const STORAGE_BYTES_PER_SEC: usize = 64 << 20;

/// This process's resident memory, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A provider serving one large MP4 as fast as loopback allows.
async fn fast_provider() -> String {
    use axum::body::Body;
    let app = axum::Router::new().route(
        "/big.mp4",
        axum::routing::get(|| async {
            let head = bytes::Bytes::from_static(b"\0\0\0\x18ftypisom\0\0\0\0\0\0\0\0");
            let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
            let rest = VIDEO_BYTES - head.len();
            let chunks = (0..rest / chunk.len())
                .map(move |_| Ok::<_, std::io::Error>(chunk.clone()))
                .chain(std::iter::once(Ok(bytes::Bytes::from(vec![
                    0u8;
                    rest % (1
                        << 20)
                ]))));
            let stream = futures::stream::iter(std::iter::once(Ok(head)).chain(chunks));
            axum::response::Response::builder()
                .header("content-length", VIDEO_BYTES)
                .header("content-type", "video/mp4")
                .body(Body::from_stream(stream))
                .unwrap()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A TCP relay to `target` that carries uploads at most `rate` bytes a second.
async fn throttled_link(target: String, rate: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upload = async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let pause = Duration::from_secs_f64(n as f64 / rate as f64);
                        tokio::time::sleep(pause).await;
                    }
                    let _ = server_write.shutdown().await;
                };
                let download = async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                };
                tokio::join!(upload, download);
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_into_slow_storage_holds_a_few_parts_in_memory() {
    let moto = Moto::start().await;
    moto.create_bucket("slow-videos").await;
    let link = throttled_link(
        moto.endpoint.trim_start_matches("http://").to_owned(),
        STORAGE_BYTES_PER_SEC,
    )
    .await;
    let provider = fast_provider().await;
    let mut settings = test_settings();
    settings.provider.base_url = provider.clone();
    settings.storage = moto.storage("slow-videos");
    settings.storage.endpoint = link;
    let videos = VideoStore::new(&settings).unwrap();

    let before = rss_bytes();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss_bytes(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let archived = videos
        .archive(&format!("{provider}/big.mp4"), "videos/big.mp4")
        .await;
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let archived = archived.expect("the video is stored");
    assert_eq!(archived.bytes, VIDEO_BYTES as u64);

    let grew = peak.load(Ordering::SeqCst).saturating_sub(before);
    println!(
        "{} MiB copied in {:?}; resident memory grew by {} MiB at most",
        VIDEO_BYTES >> 20,
        archived.took,
        grew >> 20
    );
    // A few 8 MiB parts in flight, not the video.
    assert!(
        grew < 96 << 20,
        "resident memory grew by {} MiB while copying a {} MiB video",
        grew >> 20,
        VIDEO_BYTES >> 20
    );
}
