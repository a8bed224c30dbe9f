//! The holes a hostile client finds on the public port, each closed: metric
//! labels it can't grow, connections it can't hold, secrets it can read in
//! the repository, dev tokens and stream tokens that outlive their grant,
//! URLs a provider hands over that point inwards, and inputs the document
//! refuses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{test_settings, TestEnv};
use genq_api::Application;
use genq_core::config::{Settings, EXAMPLE_SECRETS};
use genq_providers::storage::{ArchiveError, VideoStore};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn made_up_methods_add_no_metric_series() {
    let env = TestEnv::new().await;
    env.call(Method::GET, "/healthz", None, None, &[]).await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("genq_http_responses_total{"))
            .count()
    };
    let before = series(&env.api_metrics().await);
    for i in 0..40 {
        let method = Method::from_bytes(format!("X{i}{}", "Y".repeat(1000)).as_bytes()).unwrap();
        let (s, _) = env
            .call(method, &format!("/v1/made-up/{i}"), None, None, &[])
            .await;
        assert!(s.is_client_error(), "{s}");
    }
    let after = env.api_metrics().await;
    assert!(!after.contains("YYYY"), "a made-up method became a label");
    assert!(!after.contains("/v1/made-up/"), "a raw path became a label");
    // At most the one `other` series per status the made-up calls got.
    assert!(series(&after) <= before + 2, "{after}");
    assert!(after.contains("method=\"other\""), "{after}");
    env.cleanup().await;
}

/// Opens a connection, sends `head` and waits (bounded) for the server to
/// close it; the time it took, or None if it was still open at `patience`.
async fn held_for(port: u16, head: &[u8], patience: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(head).await.unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(patience, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // a 408, say; the close follows
            }
        }
    })
    .await;
    closed.ok().map(|()| started.elapsed())
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let mut settings = test_settings();
    settings.api.header_read_timeout_ms = 500;
    let env = TestEnv::with_settings(settings).await;
    let port: u16 = env.base.rsplit(':').next().unwrap().parse().unwrap();
    for head in [
        &b"GET /healthz HTTP/1.1\r\nHost: genq\r\nX-Slow: "[..],
        &b""[..],
    ] {
        let took = held_for(port, head, Duration::from_secs(10)).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(5)),
            "a half-sent head held the connection for {took:?}"
        );
    }
    // A whole request on a connection is answered as always.
    let (s, _) = env.call(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    env.cleanup().await;
}

#[tokio::test]
async fn a_stream_token_never_outlives_the_token_it_came_from() {
    let env = TestEnv::new().await;
    let short = env.token_with("brief", None, None, 30);
    let (s, body) = env.post("/v1/stream-tokens", &short, &json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    let parent_exp = chrono::Utc::now() + chrono::Duration::seconds(31);
    assert!(expires <= parent_exp, "stream token until {expires}");
    // The token itself says so too.
    let payload = body["token"].as_str().unwrap().split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert!(claims["exp"].as_i64().unwrap() <= parent_exp.timestamp());
    env.cleanup().await;
}

#[tokio::test]
async fn dev_sign_in_stays_on_loopback_and_its_tokens_end_with_it() {
    let mut open = test_settings();
    open.web.dev_sign_in = true;
    open.api.addr = "0.0.0.0:0".into();
    let refused = Application::build(open).await.err().expect("refused");
    assert!(refused.to_string().contains("web.dev_sign_in"), "{refused}");

    let mut on = test_settings();
    on.web.dev_sign_in = true;
    let env = TestEnv::with_settings(on.clone()).await;
    let (s, body) = env
        .call(
            Method::POST,
            "/v1/dev/sign-in",
            None,
            Some(&json!({"name": "ada"})),
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let dev = body["token"].as_str().unwrap().to_owned();
    assert_eq!(env.get("/v1/credits", &dev).await.0, StatusCode::OK);

    // The same secret, the flag off: the dev token opens nothing.
    let mut off = test_settings();
    off.auth.jwt_secret = on.auth.jwt_secret.clone();
    let env_off = TestEnv::with_settings(off).await;
    let (s, body) = env_off.get("/v1/credits", &dev).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.to_string().contains("web.dev_sign_in"), "{body}");
    env.cleanup().await;
    env_off.cleanup().await;
}

/// Every secret-looking value given to `JWT_SECRET` in the repository's
/// docs, scripts and compose file.
fn secrets_written_in_the_repository() -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("docker-compose.yml"), root.join("README.md")];
    for dir in ["scripts", "docs", "deploy"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    let mut found = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let Some(at) = line.find("JWT_SECRET") else {
                continue;
            };
            let rest = &line[at + "JWT_SECRET".len()..];
            let value: String = rest
                .trim_start_matches(|c: char| "}=:-\"' ".contains(c))
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
                .collect();
            if value.len() >= 8 {
                found.push(value);
            }
        }
    }
    found
}

#[tokio::test]
async fn the_api_refuses_short_secrets_and_every_one_written_in_the_repository() {
    let written = secrets_written_in_the_repository();
    for secret in EXAMPLE_SECRETS
        .iter()
        .map(|s| s.to_string())
        .chain(written)
        .chain(["x".repeat(31)])
    {
        let mut s = test_settings();
        s.auth.jwt_secret = secrecy::SecretString::from(secret.clone());
        let e = s.validate_api().err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.to_string().contains("auth.jwt_secret")),
            "{secret:?} was accepted"
        );
        // The same at start.
        assert!(Application::build(s).await.is_err(), "{secret:?}");
    }
    let mut s = test_settings();
    s.auth.leeway_secs = 301;
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("auth.leeway_secs"));
}

#[tokio::test]
async fn a_token_not_valid_yet_is_refused() {
    let env = TestEnv::new().await;
    let now = chrono::Utc::now().timestamp();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "early", "exp": now + 600, "nbf": now + 300}),
        &jsonwebtoken::EncodingKey::from_secret(crate::harness::jwt_secret().as_bytes()),
    )
    .unwrap();
    let (s, body) = env.get("/v1/credits", &token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.to_string().contains("not valid yet"), "{body}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_unverified_email_never_names_a_user_to_an_operator() {
    let env = TestEnv::new().await;
    let claimed = genq_api::auth::Claims::new("mallory", 600)
        .email(Some("ceo@example.com"))
        .mint(crate::harness::jwt_secret().as_bytes())
        .unwrap();
    assert_eq!(env.get("/v1/credits", &claimed).await.0, StatusCode::OK);
    let admin = env.admin_token("ops");
    let grant = json!({"email": "ceo@example.com", "amount": 50, "reason": "r", "kind": "grant"});
    let (s, body) = env.post("/v1/admin/credits", &admin, &grant).await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("name the user by ID"), "{body}");
    let by_id = json!({"user_id": "mallory", "amount": 50, "reason": "r", "kind": "grant"});
    assert_eq!(
        env.post("/v1/admin/credits", &admin, &by_id).await.0,
        StatusCode::OK
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_users_timeline_does_not_name_the_operator_who_canceled() {
    let mut settings = test_settings();
    settings.credits.initial = 10;
    let env = TestEnv::with_settings(settings).await;
    let user = env.new_user("canceled-user", "cu@example.com").await;
    let (s, job) = env.submit(&user, "a quiet harbour").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    let admin = env.admin_token("olga-the-operator");
    let (s, body) = env
        .post(&format!("/v1/admin/jobs/{id}/cancel"), &admin, &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, seen) = env.get(&format!("/v1/generations/{id}"), &user).await;
    let (_, events) = env.get(&format!("/v1/admin/jobs/{id}"), &admin).await;
    let text = format!("{seen}{events}");
    assert!(text.contains("Canceled by an operator"), "{text}");
    assert!(!text.contains("olga-the-operator"), "{text}");
    // The audit log keeps who it was.
    let actor: String = sqlx::query_scalar(
        "SELECT actor FROM audit_log WHERE action = 'job.cancel' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(actor, "admin:olga-the-operator");
    env.cleanup().await;
}

#[tokio::test]
async fn dead_letter_filters_refuse_every_control_character() {
    let env = TestEnv::new().await;
    let admin = env.admin_token("ops");
    for query in [
        "source_queue=%C2%85",
        "user=%0B",
        "user=abc%0B",
        "reason=%C2%85x",
        "q=%0B",
    ] {
        let (s, body) = env.get(&format!("/v1/admin/dlq?{query}"), &admin).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (s, _) = env.get("/v1/admin/dlq?user=%20nobody%20", &admin).await;
    assert_eq!(s, StatusCode::OK);
    env.cleanup().await;
}

/// An HTTP server for the download rules: `/video.mp4` (counted),
/// `/to?u=URL` redirecting there, `/loop` redirecting to itself.
async fn video_server() -> (String, Arc<AtomicUsize>) {
    use axum::extract::Query;
    use axum::response::{IntoResponse, Redirect};
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new()
        .route(
            "/video.mp4",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { b"\0\0\0\x18ftypisom\0\0\0\0 a tiny video".to_vec() }
            }),
        )
        .route(
            "/to",
            axum::routing::get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    Redirect::temporary(&q["u"]).into_response()
                },
            ),
        )
        .route(
            "/loop",
            axum::routing::get(|| async { Redirect::temporary("/loop").into_response() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

fn store(provider_base: &str, allow_private: bool) -> (VideoStore, Settings) {
    let mut settings = test_settings();
    settings.provider.base_url = provider_base.into();
    settings.provider.allow_private = allow_private;
    (VideoStore::new(&settings).unwrap(), settings)
}

fn refused(result: Result<genq_providers::storage::Archived, ArchiveError>) -> String {
    match result {
        Err(ArchiveError::Permanent { code, message }) => {
            assert_eq!(code, "video_url_refused", "{message}");
            assert!(!message.contains("HTTP"), "{message}");
            message
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn the_archiver_downloads_only_from_the_provider_and_public_https() {
    let (provider, provider_hits) = video_server().await;
    let (inside, inside_hits) = video_server().await;
    let (videos, settings) = store(&provider, false);
    let key = |n: u32| format!("videos/ssrf-{n}.mp4");

    // The provider's own origin is trusted, as configuration says.
    let ok = videos
        .archive(&format!("{provider}/video.mp4"), &key(1))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(provider_hits.load(Ordering::SeqCst), 1);

    // Anything else inside is refused before a connection is made.
    let port = inside.rsplit(':').next().unwrap();
    for url in [
        format!("{inside}/video.mp4"),
        format!("https://127.0.0.1:{port}/video.mp4"),
        format!("https://localhost:{port}/video.mp4"),
        format!("https://[::ffff:127.0.0.1]:{port}/video.mp4"),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "http://8.8.8.8/video.mp4".to_owned(),
        "file:///etc/passwd".to_owned(),
        // The provider redirecting inwards.
        format!("{provider}/to?u={inside}/video.mp4"),
        format!("{provider}/to?u=https://localhost:{port}/video.mp4"),
    ] {
        refused(videos.archive(&url, &key(2)).await);
    }
    assert_eq!(
        inside_hits.load(Ordering::SeqCst),
        0,
        "a refused URL was fetched"
    );

    // Redirects are bounded.
    let looped = videos.archive(&format!("{provider}/loop"), &key(3)).await;
    assert!(
        matches!(looped, Err(ArchiveError::Permanent { ref message, .. }) if message.contains("redirects")),
        "{looped:?}"
    );

    // A deployment whose outputs live on another private host says so.
    let (open, _) = store(&provider, true);
    let ok = open.archive(&format!("{inside}/video.mp4"), &key(4)).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(inside_hits.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_dir_all(&settings.storage.path);
}
