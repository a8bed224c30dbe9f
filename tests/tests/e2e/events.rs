//! Live job events over Server-Sent Events: a job's timeline live and
//! ending after its terminal status, resuming by Last-Event-ID, the caller's
//! whole stream, stream tokens, bounds and heartbeats — against the real API,
//! workers, Postgres, RabbitMQ and the provider simulator.

use std::time::Duration;

use crate::harness::{eventually, test_settings, TestEnv};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use genq_provider_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn fast_sim() -> SimConfig {
    SimConfig {
        generation: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

/// A client without the harness's overall timeout: streams outlive it.
fn stream_client() -> reqwest::Client {
    reqwest::Client::new()
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// Opens a stream and checks it is one; `token` as bearer unless `query` carries one.
async fn open(env: &TestEnv, path: &str, bearer: Option<&str>, headers: &[(&str, &str)]) -> Events {
    let mut req = stream_client().get(format!("{}{}", env.base, path));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("stream request");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .map(|e| e.expect("a well-formed event")),
    )
}

/// The next `job` event (skipping the `retry:` hint), or `None` when the stream ended.
async fn next_job_event(events: &mut Events) -> Option<(i64, Value)> {
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("an event or the end within the deadline")?;
        if event.event == "job" {
            let data: Value = serde_json::from_str(&event.data).expect("JSON data");
            let id: i64 = event.id.parse().expect("numeric id");
            assert_eq!(data["id"], id, "the id line and the data agree");
            return Some((id, data));
        }
    }
}

/// Every job event until the stream ends.
async fn until_end(events: &mut Events) -> Vec<(i64, Value)> {
    let mut all = Vec::new();
    while let Some(e) = next_job_event(events).await {
        all.push(e);
    }
    all
}

fn statuses(events: &[(i64, Value)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(_, e)| e["to_status"].as_str().map(str::to_owned))
        .collect()
}

fn assert_increasing(events: &[(i64, Value)]) {
    let ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

async fn stream_token(env: &TestEnv, token: &str) -> String {
    let (s, body) = env.post("/v1/stream-tokens", token, &json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(body["expires_at"].is_string());
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_jobs_stream_shows_its_timeline_live_and_ends_after_the_terminal_status() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let t = env.new_user("ann", "ann@example.com").await;
    env.grant("ann@example.com", 10).await;
    let (s, job) = env.submit(&t, "a lighthouse at dusk").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap();
    // Opened before any worker runs: the job is queued, and what follows arrives live.
    let mut events = open(&env, &format!("/v1/generations/{id}/events"), Some(&t), &[]).await;
    let (_, first) = next_job_event(&mut events).await.expect("the submit event");
    assert_eq!(first["to_status"], "queued");
    assert_eq!(first["job_id"], id);
    let worker = env.spawn_worker().await;
    let mut all = vec![(first["id"].as_i64().unwrap(), first)];
    all.extend(until_end(&mut events).await);
    assert_increasing(&all);
    let st = statuses(&all);
    assert_eq!(st.first().map(String::as_str), Some("queued"));
    assert_eq!(st.last().map(String::as_str), Some("succeeded"), "{st:?}");
    assert!(st.contains(&"running".to_owned()), "{st:?}");
    // The stream is exactly the job's timeline.
    let (_, full) = env.get(&format!("/v1/generations/{id}"), &t).await;
    assert_eq!(full["events"].as_array().unwrap().len(), all.len());
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn last_event_id_resumes_without_gaps_or_repeats() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("bo", "bo@example.com").await;
    env.grant("bo@example.com", 10).await;
    let (_, job) = env.submit(&t, "a fox in snow").await;
    let id = job["id"].as_str().unwrap();
    env.wait_for_status(&t, id, "succeeded", WAIT).await;
    let path = format!("/v1/generations/{id}/events");
    let all = until_end(&mut open(&env, &path, Some(&t), &[]).await).await;
    assert!(all.len() >= 3, "{all:?}");
    let after = all[1].0.to_string();
    // The header a reconnecting EventSource sends, and the query form.
    let by_header =
        until_end(&mut open(&env, &path, Some(&t), &[("Last-Event-ID", &after)]).await).await;
    let by_query = until_end(
        &mut open(
            &env,
            &format!("{path}?last_event_id={after}"),
            Some(&t),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(by_header, all[2..].to_vec());
    assert_eq!(by_query, all[2..].to_vec());
    // Resuming after the terminal event ends at once instead of hanging.
    let last = all.last().unwrap().0.to_string();
    let rest = until_end(&mut open(&env, &path, Some(&t), &[("Last-Event-ID", &last)]).await).await;
    assert!(rest.is_empty());
    // A bad id is a 400 naming it.
    let (s, body) = env
        .call(
            reqwest::Method::GET,
            &path,
            Some(&t),
            None,
            &[("Last-Event-ID", "x")],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "Last-Event-ID");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_callers_stream_carries_each_of_their_jobs_and_no_one_elses() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("cy", "cy@example.com").await;
    let other = env.new_user("di", "di@example.com").await;
    env.grant("cy@example.com", 20).await;
    env.grant("di@example.com", 10).await;
    let st = stream_token(&env, &t).await;
    let mut events = open(&env, &format!("/v1/events?access_token={st}"), None, &[]).await;
    let (_, a) = env.submit(&t, "first").await;
    let (_, b) = env.submit(&t, "second").await;
    let (_, c) = env.submit(&other, "not yours").await;
    let mine = [a["id"].as_str().unwrap(), b["id"].as_str().unwrap()];
    let mut seen = Vec::new();
    let mut done = std::collections::HashSet::new();
    while done.len() < 2 {
        let e = next_job_event(&mut events)
            .await
            .expect("the stream stays open");
        let job = e.1["job_id"].as_str().unwrap().to_owned();
        assert!(
            mine.contains(&job.as_str()),
            "only the caller's jobs: {e:?}, not {}",
            c["id"]
        );
        if e.1["to_status"] == "succeeded" {
            done.insert(job);
        }
        seen.push(e);
    }
    assert_increasing(&seen);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn another_api_process_streams_what_this_one_accepted() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let mut settings = env.settings.clone();
    settings.api.addr = "127.0.0.1:0".into();
    let second = genq_api::Application::build(settings)
        .await
        .expect("second api");
    let second_base = format!("http://127.0.0.1:{}", second.port());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(second.run_until_stopped(stop.clone()));
    let t = env.new_user("ed", "ed@example.com").await;
    env.grant("ed@example.com", 10).await;
    let resp = stream_client()
        .get(format!("{second_base}/v1/events"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut events: Events = Box::pin(resp.bytes_stream().eventsource().map(|e| e.unwrap()));
    let worker = env.spawn_worker().await;
    let (_, job) = env.submit(&t, "made elsewhere").await;
    let id = job["id"].as_str().unwrap();
    loop {
        let (_, e) = next_job_event(&mut events).await.expect("open");
        assert_eq!(e["job_id"], id);
        if e["to_status"] == "succeeded" {
            break;
        }
    }
    // Shutting the process down ends its streams, so it can stop.
    stop.cancel();
    assert!(next_job_event(&mut events).await.is_none());
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("the API stops")
        .unwrap()
        .unwrap();
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_stream_token_opens_streams_and_nothing_else() {
    let env = TestEnv::new().await;
    let t = env.new_user("fay", "fay@example.com").await;
    let stranger = env.new_user("gus", "gus@example.com").await;
    let (_, job) = env.submit(&t, "a rejected attempt").await; // 8 credits: refused, but a job
    let id = job["error"]["job_id"].as_str().expect("402 names the job");
    let st = stream_token(&env, &t).await;
    // It opens the caller's job stream; a rejected job's stream is its one event.
    let events = until_end(
        &mut open(
            &env,
            &format!("/v1/generations/{id}/events?access_token={st}"),
            None,
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(statuses(&events), ["rejected"]);
    // It is refused as an API token, and can't mint another.
    let (s, _) = env.get("/v1/credits", &st).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = env.post("/v1/stream-tokens", &st, &json!({})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // An API token is not a stream token, and a stream needs some token.
    let (s, _) = env
        .call(
            reqwest::Method::GET,
            &format!("/v1/events?access_token={t}"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) = env
        .call(reqwest::Method::GET, "/v1/events", None, None, &[])
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    // Another user's job is not found, whatever the token.
    let sst = stream_token(&env, &stranger).await;
    let (s, _) = env
        .call(
            reqwest::Method::GET,
            &format!("/v1/generations/{id}/events?access_token={sst}"),
            None,
            None,
            &[],
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.cleanup().await;
}

#[tokio::test]
async fn streams_are_bounded_per_user_and_an_idle_one_gets_heartbeats() {
    let mut settings = test_settings();
    settings.events.max_streams_per_user = 2;
    settings.events.heartbeat_secs = 1;
    let env = TestEnv::with_settings(settings).await;
    let t = env.new_user("hal", "hal@example.com").await;
    let first = stream_client()
        .get(format!("{}/v1/events", env.base))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let _second = open(&env, "/v1/events", Some(&t), &[]).await;
    let (s, body) = env.get("/v1/events", &t).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_streams");
    // Another user is not affected.
    let u = env.new_user("ida", "ida@example.com").await;
    drop(open(&env, "/v1/events", Some(&u), &[]).await);
    // An idle stream carries heartbeat comments.
    let mut raw = first.bytes_stream();
    let mut text = String::new();
    while !text
        .lines()
        .any(|l| l.starts_with(':') && l.contains("heartbeat"))
    {
        let chunk = tokio::time::timeout(WAIT, raw.next())
            .await
            .expect("a heartbeat within the deadline")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        assert!(text.len() < 10_000, "no heartbeat: {text}");
    }
    assert!(text.starts_with("retry:"), "{text}");
    // Closing a stream gives its slot back.
    drop(raw);
    let reopened = eventually(WAIT, || async {
        let r = stream_client()
            .get(format!("{}/v1/events", env.base))
            .bearer_auth(&t)
            .send()
            .await
            .ok()?;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    assert!(reopened.is_some(), "a closed stream's slot is given back");
    env.cleanup().await;
}
