//! Every finished video is kept by genq: for each provider dialect, a job
//! succeeds only once its video is copied, and the copy stays downloadable
//! from genq after the provider's URL expired; expired links, non-videos and
//! oversized files fail with a refund; S3 and the filesystem both work.

use std::time::Duration;

use crate::harness::{eventually, test_settings, Moto, TestEnv};
use genq_core::config::ProviderKind;
use genq_provider_sim::{Dialect, SimConfig};
use reqwest::StatusCode;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(40);

/// An environment whose provider speaks `kind`, against the simulator's
/// dialect, with output URLs valid for `url_ttl`.
async fn env_for(kind: ProviderKind, dialect: Dialect, url_ttl: Duration) -> TestEnv {
    let mut settings = test_settings();
    settings.provider.kind = kind.as_str().into();
    settings.provider.api_key = secrecy::SecretString::from("test-access-key:test-secret-key");
    let sim = SimConfig {
        generation: Duration::from_millis(200),
        dialect,
        url_ttl: Some(url_ttl),
        ..SimConfig::default()
    };
    TestEnv::with_sim_and_settings(sim, settings).await
}

async fn provider_url(env: &TestEnv, job_id: &str) -> String {
    sqlx::query_scalar("SELECT provider_result_url FROM jobs WHERE id = $1::uuid")
        .bind(job_id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn get_video(
    env: &TestEnv,
    token: &str,
    job_id: &str,
    range: Option<&str>,
) -> reqwest::Response {
    let mut req = env
        .client
        .get(format!("{}/v1/generations/{job_id}/video", env.base))
        .bearer_auth(token);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    req.send().await.unwrap()
}

/// Submits one video, waits for it to succeed, waits for the provider's
/// URL to expire, then downloads genq's copy (whole and by range).
async fn kept_past_expiry(kind: ProviderKind, dialect: Dialect) {
    // Long enough for a loaded machine to copy it in time, short enough to wait out.
    let env = env_for(kind, dialect, Duration::from_millis(2_000)).await;
    let worker = env.spawn_worker().await;
    let token = env.new_user("keeper", "keeper@example.com").await;
    env.grant("keeper@example.com", 10).await;
    let (status, job) = env.submit(&token, "a lighthouse at dusk").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = env.wait_for_status(&token, &id, "succeeded", WAIT).await;
    assert_eq!(done["result_url"], format!("/v1/generations/{id}/video"));
    let events = done["events"].as_array().unwrap();
    let archived = events.iter().find(|e| e["kind"] == "archived");
    assert!(
        archived.is_some_and(|e| e["data"]["bytes"].as_u64() > Some(0)),
        "{done:#}"
    );
    // Written with the settlement, just before its status event.
    let last_two: Vec<(&str, &str)> = events[events.len() - 2..]
        .iter()
        .map(|e| {
            let to = e["to_status"].as_str().unwrap_or("");
            (e["kind"].as_str().unwrap(), to)
        })
        .collect();
    assert_eq!(
        last_two,
        [("archived", ""), ("status", "succeeded")],
        "{done:#}"
    );

    // The provider's link expires...
    let url = provider_url(&env, &id).await;
    assert!(url.starts_with(&env.sim().base_url()), "{url}");
    let expired = eventually(WAIT, || async {
        // With Veo's key, so the expiry is what refuses it.
        let r = env
            .client
            .get(&url)
            .header("x-goog-api-key", "test-access-key:test-secret-key")
            .send()
            .await
            .ok()?;
        (!r.status().is_success()).then_some(r.status())
    })
    .await;
    assert!(expired.is_some(), "the simulator's URL never expired");

    // ...and genq still has the video.
    let r = get_video(&env, &token, &id, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let whole = r.bytes().await.unwrap();
    assert_eq!(&whole[4..8], b"ftyp");

    let r = get_video(&env, &token, &id, Some("bytes=4-7")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 4-7/{}", whole.len()).as_str()
    );
    assert_eq!(&r.bytes().await.unwrap()[..], b"ftyp");
    let r = get_video(&env, &token, &id, Some(&format!("bytes={}-", whole.len()))).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Nobody else gets it.
    let other = env.new_user("other", "other@example.com").await;
    assert_eq!(
        get_video(&env, &other, &id, None).await.status(),
        StatusCode::NOT_FOUND
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn taskid_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::TaskId, Dialect::TaskId).await;
}

#[tokio::test]
async fn replicate_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Replicate, Dialect::Replicate).await;
}

#[tokio::test]
async fn fal_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Fal, Dialect::Fal).await;
}

#[tokio::test]
async fn runway_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Runway, Dialect::Runway).await;
}

#[tokio::test]
async fn luma_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Luma, Dialect::Luma).await;
}

#[tokio::test]
async fn kling_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Kling, Dialect::Kling).await;
}

#[tokio::test]
async fn veo_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Veo, Dialect::Veo).await;
}

#[tokio::test]
async fn seedance_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::Seedance, Dialect::Seedance).await;
}

#[tokio::test]
async fn minimax_video_is_kept_past_the_provider_url() {
    kept_past_expiry(ProviderKind::MiniMax, Dialect::MiniMax).await;
}

/// For each newer dialect, the worker end to end: a prompt the provider's
/// moderation refuses fails as `content_rejected` in the provider's words,
/// and its credits come back.
async fn refusal_is_refunded(kind: ProviderKind, dialect: Dialect) {
    let env = env_for(kind, dialect, Duration::from_secs(60)).await;
    let worker = env.spawn_worker().await;
    let token = env.new_user("refused", "refused@example.com").await;
    env.grant("refused@example.com", 10).await;
    let (_, before) = env.get("/v1/credits", &token).await;
    let (status, job) = env.submit(&token, "something [sim:moderation]").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let failed = env.wait_for_status(&token, &id, "failed", WAIT).await;
    assert_eq!(failed["error"]["code"], "content_rejected", "{failed:#}");
    let message = failed["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("simulated"), "{kind}: {message}");
    let (_, credits) = env.get("/v1/credits", &token).await;
    assert_eq!(credits["available"], before["available"], "{credits}");
    assert_eq!(credits["spent"], 0, "{credits}");
    assert_eq!(credits["reserved"], 0, "{credits}");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn veo_refusal_is_refunded() {
    refusal_is_refunded(ProviderKind::Veo, Dialect::Veo).await;
}

#[tokio::test]
async fn seedance_refusal_is_refunded() {
    refusal_is_refunded(ProviderKind::Seedance, Dialect::Seedance).await;
}

#[tokio::test]
async fn minimax_refusal_is_refunded() {
    refusal_is_refunded(ProviderKind::MiniMax, Dialect::MiniMax).await;
}

/// Submits `prompt` and returns the finished job and the user's credits.
async fn run_one(env: &TestEnv, prompt: &str) -> (Value, Value) {
    let worker = env.spawn_worker().await;
    let token = env.new_user("u", "u@example.com").await;
    env.grant("u@example.com", 10).await;
    let (status, job) = env.submit(&token, prompt).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = env
        .wait_for_job(&token, &id, WAIT, |j| {
            j["status"] == "failed" || j["status"] == "succeeded" || j["status"] == "dead"
        })
        .await;
    let (_, credits) = env.get("/v1/credits", &token).await;
    worker.stop().await;
    (done, credits)
}

fn assert_refunded(done: &Value, credits: &Value, code: &str) {
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["error"]["code"], code, "{done:#}");
    assert!(done["result_url"].is_null());
    assert_eq!(credits["available"], 18, "{credits}");
    assert_eq!(credits["reserved"], 0);
    assert_eq!(credits["spent"], 0);
}

#[tokio::test]
async fn a_link_that_expired_before_the_copy_fails_with_a_refund() {
    let env = env_for(
        ProviderKind::Runway,
        Dialect::Runway,
        Duration::from_millis(1),
    )
    .await;
    let (done, credits) = run_one(&env, "a river").await;
    assert_refunded(&done, &credits, "video_expired");
    let reason = done["error"]["message"].as_str().unwrap();
    assert!(reason.contains("expired"), "{reason}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_output_that_is_not_a_video_fails_with_a_refund() {
    let env = env_for(
        ProviderKind::TaskId,
        Dialect::TaskId,
        Duration::from_secs(60),
    )
    .await;
    let (done, credits) = run_one(&env, "[sim:not-video] a river").await;
    assert_refunded(&done, &credits, "not_a_video");
    env.cleanup().await;
}

#[tokio::test]
async fn a_video_over_the_size_limit_fails_with_a_refund() {
    let mut settings = test_settings();
    settings.storage.max_bytes = 16;
    let sim = SimConfig {
        generation: Duration::from_millis(200),
        url_ttl: Some(Duration::from_secs(60)),
        ..SimConfig::default()
    };
    let env = TestEnv::with_sim_and_settings(sim, settings).await;
    let (done, credits) = run_one(&env, "a long river").await;
    assert_refunded(&done, &credits, "video_too_large");
    // Nothing half-written is visible.
    let left = std::fs::read_dir(&env.settings.storage.path)
        .map(|d| d.count())
        .unwrap_or(0);
    let videos = std::path::Path::new(&env.settings.storage.path).join("videos");
    let kept = std::fs::read_dir(videos).map(|d| d.count()).unwrap_or(0);
    assert_eq!(kept, 0, "{left} entries in the storage directory");
    env.cleanup().await;
}

#[tokio::test]
async fn videos_are_kept_in_an_s3_compatible_bucket() {
    let moto = Moto::start().await;
    moto.create_bucket("genq-videos").await;
    let mut settings = test_settings();
    settings.storage = moto.storage("genq-videos");
    let sim = SimConfig {
        generation: Duration::from_millis(200),
        url_ttl: Some(Duration::from_secs(30)),
        ..SimConfig::default()
    };
    let env = TestEnv::with_sim_and_settings(sim, settings).await;
    let (done, credits) = run_one(&env, "a bucket of light").await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(credits["spent"], 10);
    let id = done["id"].as_str().unwrap();
    let token = env.token("u", Some("u@example.com"));
    // Streamed through the API when asked (stream=1), whole and by range.
    let streamed = env
        .client
        .get(format!("{}/v1/generations/{id}/video?stream=1", env.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert_eq!(streamed.headers()["content-type"], "video/mp4");
    let whole = streamed.bytes().await.unwrap();
    assert_eq!(&whole[4..8], b"ftyp");
    // Otherwise a redirect to a short-lived link into the bucket: the
    // bytes never pass through the API.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .get(format!("{}/v1/generations/{id}/video", env.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&moto.endpoint), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    assert!(location.contains("X-Amz-Expires=300"), "{location}");
    // The link alone (no token) is the video; a player follows it with its range.
    let direct = reqwest::get(&location).await.unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    assert_eq!(direct.bytes().await.unwrap(), whole);
    let r = get_video(&env, &token, id, Some("bytes=-4")).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &whole[whole.len() - 4..]);
    let r = env
        .client
        .get(format!("{}/v1/generations/{id}/video?stream=1", env.base))
        .bearer_auth(&token)
        .header("range", "bytes=-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.unwrap()[..], &whole[whole.len() - 4..]);
    // The job names a link too, for a page's player.
    let (_, job) = env.get(&format!("/v1/generations/{id}"), &token).await;
    let link = job["video_link"]["url"]
        .as_str()
        .expect("a link")
        .to_owned();
    assert_eq!(
        reqwest::get(&link).await.unwrap().bytes().await.unwrap(),
        whole
    );
    assert!(job["video_link"]["expires_at"].is_string(), "{job:#}");
    // The link names one object (moto does not check signatures, so the
    // refusal of an edited link is S3's own, not tested here).
    assert!(
        location.contains(&format!("/genq-videos/videos/{id}-r1.mp4?")),
        "{location}"
    );
    // The object really is in the bucket, under the job's key.
    let listing = reqwest::get(format!("{}/genq-videos?list-type=2", moto.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        listing.contains(&format!("videos/{id}-r1.mp4")),
        "{listing}"
    );
    env.cleanup().await;
}
