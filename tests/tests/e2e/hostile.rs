//! Hostile input: rate limits, random and oversized bodies on every
//! endpoint, admin-only endpoints, secrets kept out of responses, and
//! unknown messages on every queue.

use std::time::Duration;

use crate::harness::{eventually, test_settings, TestEnv};
use genq_broker::Publisher;
use genq_provider_sim::SimConfig;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn assert_error_shape(body: &Value, context: &str) {
    assert!(body["error"]["code"].is_string(), "{context}: {body}");
    assert!(body["error"]["message"].is_string(), "{context}: {body}");
}

#[tokio::test]
async fn submissions_are_rate_limited_per_user_with_retry_after() {
    use genq_core::config::RateLimitStore;
    for store in [RateLimitStore::Postgres, RateLimitStore::Memory] {
        rate_limited_per_user(store).await;
    }
}

async fn rate_limited_per_user(store: genq_core::config::RateLimitStore) {
    let mut settings = test_settings();
    settings.api.rate_limit = store;
    settings.api.submit_burst = 3;
    settings.api.submit_per_minute = 1;
    let env = TestEnv::with_settings(settings).await;
    let t = env.new_user("rl", "rl@example.com").await;
    env.grant("rl@example.com", 100).await;
    for i in 0..3 {
        let (s, _) = env.submit(&t, &format!("ok {i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    let r = env
        .client
        .post(format!("{}/v1/generations", env.base))
        .bearer_auth(&t)
        .json(&json!({"prompt": "one too many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&wait), "{wait}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another user is not affected; nothing was reserved for the refused one.
    let other = env.new_user("rl2", "rl2@example.com").await;
    env.grant("rl2@example.com", 2).await;
    assert_eq!(env.submit(&other, "mine").await.0, StatusCode::ACCEPTED);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["reserved"], 30);
    let (_, jobs) = env.get("/v1/generations", &t).await;
    assert_eq!(
        jobs["items"].as_array().unwrap().len(),
        3,
        "{store:?}: {jobs}"
    );
    env.cleanup().await;
}

/// The allowance kept in Postgres is taken by the submitting statement:
/// a 402 spends one (it was a submission), a replay of an idempotency key
/// spends none (it is the same submission), a 429 records nothing.
#[tokio::test]
async fn a_refusal_for_credits_spends_the_allowance_and_a_replay_does_not() {
    let mut settings = test_settings();
    settings.api.submit_burst = 3;
    settings.api.submit_per_minute = 1;
    let env = TestEnv::with_settings(settings).await;
    let t = env.new_user("al", "al@example.com").await; // 8 credits: no video
    assert_eq!(
        env.submit(&t, "too dear").await.0,
        StatusCode::PAYMENT_REQUIRED
    );
    env.grant("al@example.com", 100).await;
    let body = json!({"prompt": "once"});
    let key = [("Idempotency-Key", "al-1")];
    for _ in 0..4 {
        let (s, _) = env
            .call(Method::POST, "/v1/generations", Some(&t), Some(&body), &key)
            .await;
        assert_eq!(s, StatusCode::ACCEPTED);
    }
    assert_eq!(env.submit(&t, "third").await.0, StatusCode::ACCEPTED);
    assert_eq!(
        env.submit(&t, "fourth").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status::text FROM jobs ORDER BY created_at")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(statuses, ["rejected", "queued", "queued"]);
    env.cleanup().await;
}

/// Two API processes over one database: the allowance is the user's, not
/// each process's (`api.rate_limit = "postgres"`, the default).
#[tokio::test]
async fn the_submission_limit_holds_across_api_processes() {
    let mut settings = test_settings();
    settings.api.submit_burst = 3;
    settings.api.submit_per_minute = 1;
    let env = TestEnv::with_settings(settings.clone()).await;
    settings.api.addr = "127.0.0.1:0".into();
    let second = genq_api::Application::build(settings)
        .await
        .expect("second api");
    let second_base = format!("http://127.0.0.1:{}", second.port());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(second.run_until_stopped(stop.clone()));
    let t = env.new_user("two", "two@example.com").await;
    env.grant("two@example.com", 100).await;
    let submit_at = |base: String, prompt: &'static str| {
        let (client, t) = (env.client.clone(), t.clone());
        async move {
            client
                .post(format!("{base}/v1/generations"))
                .bearer_auth(&t)
                .json(&json!({ "prompt": prompt }))
                .send()
                .await
                .unwrap()
        }
    };
    // The burst of three, spread over both processes.
    for (base, prompt) in [(&env.base, "a"), (&second_base, "b"), (&env.base, "c")] {
        assert_eq!(
            submit_at(base.clone(), prompt).await.status(),
            StatusCode::ACCEPTED
        );
    }
    // The fourth is refused by either process, each with its wait.
    for base in [&second_base, &env.base] {
        let r = submit_at(base.clone(), "d").await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "at {base}");
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=61).contains(&wait), "{wait}");
    }
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["reserved"], 30);
    stop.cancel();
    serving.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn random_bodies_and_queries_never_cause_a_5xx() {
    let env = TestEnv::new().await;
    let user = env.new_user("fz", "fz@example.com").await;
    let admin = env.admin_token("fz-admin");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let shapes = [
        json!(null),
        json!([]),
        json!(1e308),
        json!("x"),
        json!({"prompt": null}),
        json!({"prompt": ["a"]}),
        json!({"prompt": {"$gt": ""}}),
        json!({"prompt": "a", "duration_seconds": -1}),
        json!({"prompt": "\u{0000}"}),
        json!({"prompt": "a\u{202e}b"}),
        json!({"prompt": "🎬".repeat(2_001)}),
        json!({"email": "x", "amount": 1e20, "reason": "r", "kind": "grant"}),
        json!({"email": "' OR 1=1 --", "amount": 5, "reason": "r", "kind": "grant"}),
        json!({"user_id": "00000000-0000-0000-0000-000000000000", "amount": 5, "reason": "r", "kind": "purchase", "reference": "x".repeat(300)}),
    ];
    let posts = [
        "/v1/generations",
        "/v1/admin/credits",
        "/v1/generations/00000000-0000-0000-0000-000000000000/cancel",
        "/v1/admin/dlq/1/replay",
        "/v1/admin/dlq/abc/discard",
    ];
    for path in posts {
        for token in [&user, &admin] {
            for body in &shapes {
                let (s, b) = env
                    .call(Method::POST, path, Some(token), Some(body), &[])
                    .await;
                assert!(
                    s.is_client_error() || s.is_success(),
                    "{path} {body} → {s} {b}"
                );
                if !s.is_success() {
                    assert_error_shape(&b, path);
                }
            }
            for _ in 0..30 {
                let len = rng.random_range(0..512);
                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let r = env
                    .client
                    .post(format!("{}{path}", env.base))
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(bytes)
                    .send()
                    .await
                    .unwrap();
                let s = r.status();
                assert!(
                    s.is_client_error() || s.is_success(),
                    "{path} random body → {s}"
                );
            }
        }
    }
    let gets = [
        "/v1/generations?limit=",
        "/v1/generations?limit=1e9",
        "/v1/generations?cursor=%00",
        "/v1/generations?status=%27%3B",
        "/v1/credits/ledger?cursor=-1",
        "/v1/credits/ledger?limit=100000000000000000000",
        "/v1/admin/jobs?older_than_secs=-5",
        "/v1/admin/jobs?status=nope",
        "/v1/admin/users/%20/diagnosis",
        "/v1/admin/users/a@b/diagnosis?x=1",
        "/v1/admin/dlq?all=maybe",
        "/v1/admin/jobs/not-a-uuid",
        "/v1/generations/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ];
    for path in gets {
        let (s, b) = env.get(path, &admin).await;
        assert!(s.is_client_error() || s.is_success(), "{path} → {s} {b}");
        if !s.is_success() {
            assert_error_shape(&b, path);
        }
    }
    // Headers: a huge or binary Idempotency-Key, a garbage Authorization.
    let huge = "k".repeat(5_000);
    let (s, b) = env
        .call(
            Method::POST,
            "/v1/generations",
            Some(&user),
            Some(&json!({"prompt": "a"})),
            &[("Idempotency-Key", &huge)],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let r = env
        .client
        .get(format!("{}/v1/credits", env.base))
        .header("authorization", "Bearer \u{7f}\u{7f}")
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn every_admin_endpoint_needs_the_admin_role() {
    let env = TestEnv::new().await;
    let user = env.new_user("nu", "nu@example.com").await;
    let endpoints = [
        (Method::POST, "/v1/admin/credits"),
        (Method::GET, "/v1/admin/users/nu@example.com/diagnosis"),
        (Method::GET, "/v1/admin/jobs"),
        (
            Method::GET,
            "/v1/admin/jobs/00000000-0000-0000-0000-000000000000",
        ),
        (Method::GET, "/v1/admin/dlq"),
        (Method::GET, "/v1/admin/dlq/1"),
        (Method::POST, "/v1/admin/dlq/1/replay"),
        (Method::POST, "/v1/admin/dlq/1/discard"),
        (Method::GET, "/v1/admin/ledger/verify"),
        (Method::POST, "/v1/admin/ledger/verify"),
        (Method::GET, "/v1/admin/system"),
        (
            Method::GET,
            "/v1/admin/jobs/00000000-0000-0000-0000-000000000000/ledger",
        ),
        (
            Method::POST,
            "/v1/admin/jobs/00000000-0000-0000-0000-000000000000/cancel",
        ),
    ];
    for (method, path) in endpoints {
        let (s, b) = env
            .call(method.clone(), path, None, Some(&json!({})), &[])
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_error_shape(&b, path);
        let (s, b) = env
            .call(method.clone(), path, Some(&user), Some(&json!({})), &[])
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}");
        assert_error_shape(&b, path);
    }
    env.cleanup().await;
}

#[tokio::test]
async fn secrets_stay_out_of_error_bodies() {
    let mut settings = test_settings();
    settings.database.url =
        secrecy::SecretString::from("postgres://postgres:db-password-xyzzy@127.0.0.1:1/genq");
    settings.database.acquire_timeout_ms = 300;
    // Settings print their secrets redacted.
    let printed = format!("{settings:?}");
    assert!(
        !printed.contains("db-password-xyzzy") && !printed.contains(crate::harness::jwt_secret()),
        "{printed}"
    );
    let port = crate::harness::serve_without_migrating(settings).await;
    let env_token = {
        genq_api::auth::Claims::new("s", 60)
            .role(Some("admin"))
            .mint(crate::harness::jwt_secret().as_bytes())
            .unwrap()
    };
    let client = reqwest::Client::new();
    for path in ["/readyz", "/v1/credits", "/v1/admin/ledger/verify"] {
        let r = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(&env_token)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_server_error(), "{path}");
        let text = r.text().await.unwrap();
        for secret in [
            "db-password-xyzzy",
            crate::harness::jwt_secret(),
            "127.0.0.1:1",
            "postgres://",
        ] {
            assert!(!text.contains(secret), "{path} leaked {secret}: {text}");
        }
        assert_error_shape(&serde_json::from_str(&text).unwrap(), path);
    }
}

#[tokio::test]
async fn unknown_messages_on_every_queue_end_as_dead_letters() {
    let env = TestEnv::with_sim(SimConfig {
        generation: Duration::from_millis(200),
        ..SimConfig::default()
    })
    .await;
    let worker = env.spawn_worker().await;
    let topology = env.topology();
    let conn = genq_broker::connect(&env.settings).await.unwrap();
    let publisher = Publisher::new(&conn).await.unwrap();
    topology.declare(publisher.channel()).await.unwrap();
    let bodies: [&[u8]; 4] = [
        b"\xff\xfe\x00",
        br#"{"type":"explode"}"#,
        br#"{"type":"poll","job_id":"00000000-0000-0000-0000-000000000000","seq":"x","errors":0}"#,
        b"[]",
    ];
    // Straight to the work queues, through a wait queue, and into the dead-letter queue itself.
    for body in bodies {
        publisher
            .publish(&topology.work_exchange(), "start", body, Default::default())
            .await
            .unwrap();
        publisher
            .publish(&topology.work_exchange(), "poll", body, Default::default())
            .await
            .unwrap();
        publisher
            .publish(
                &topology.delay_exchange(100),
                "poll",
                body,
                Default::default(),
            )
            .await
            .unwrap();
        publisher
            .publish(
                &topology.dead_letter_exchange(),
                "anything",
                body,
                Default::default(),
            )
            .await
            .unwrap();
    }
    conn.close(200, "done".into()).await.ok();
    let archived = eventually(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (n >= 16).then_some(n)
    })
    .await;
    assert_eq!(archived, Some(16));
    // The worker is still alive and working.
    let t = env.new_user("alive", "alive@example.com").await;
    env.grant("alive@example.com", 2).await;
    let (_, job) = env.submit(&t, "still here").await;
    env.wait_for_status(
        &t,
        job["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(30),
    )
    .await;
    worker.stop().await;
    env.cleanup().await;
}

/// Each case here was found by `scripts/fuzz.sh` (schemathesis) and fixed.
#[tokio::test]
async fn regressions_found_by_the_fuzzer() {
    let env = TestEnv::new().await;
    let user = env.new_user("rg", "rg@example.com").await;
    let admin = env.admin_token("rg-admin");
    // A NUL byte in stored text was a 500 (Postgres refuses it): now a 400 naming the field.
    let (s, b) = env
        .post(
            "/v1/admin/credits",
            &admin,
            &json!({"user_id": "rg", "amount": 5, "reason": "a\u{0}b", "kind": "grant"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"]["field"], "reason");
    let (s, _) = env.post("/v1/admin/credits", &admin,
        &json!({"user_id": "rg", "amount": 5, "reason": "ok", "kind": "purchase", "reference": "x\u{2}"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // ...and in a token's claims, or an operator's lookup.
    let nul_sub = env.token("evil\u{0}sub", None);
    assert_eq!(
        env.get("/v1/credits", &nul_sub).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = env.get("/v1/admin/users/a%00b/diagnosis", &admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A path segment that isn't UTF-8 was an undocumented text/plain 400: a 404 now.
    for path in [
        "/v1/generations/%FF",
        "/v1/admin/jobs/%FF",
        "/v1/admin/dlq/%FF",
        "/v1/admin/users/%FF/diagnosis",
    ] {
        let (s, b) = env.get(path, &admin).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path} → {b}");
        assert_error_shape(&b, path);
    }
    // A huge age filter overflowed Postgres' interval: a 500, now a 400.
    let (s, b) = env
        .get("/v1/admin/jobs?older_than_secs=9223372036854775808", &admin)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = env
        .get("/v1/admin/jobs?older_than_secs=315360001", &admin)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // JSON Schema counts 35.0 as an integer; so does the API now.
    env.grant("rg@example.com", 2).await;
    let (s, b) = env
        .post(
            "/v1/generations",
            &user,
            &json!({"prompt": "float", "duration_seconds": 35.0}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["duration_seconds"], 35);
    let (s, _) = env
        .post(
            "/v1/generations",
            &user,
            &json!({"prompt": "float", "duration_seconds": 35.5}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The OpenAPI document put query parameters in the path.
    let (_, doc) = env
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    for (path, name) in [
        ("/v1/generations", "limit"),
        ("/v1/credits/ledger", "cursor"),
        ("/v1/admin/jobs", "older_than_secs"),
        ("/v1/admin/dlq", "all"),
    ] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        let p = params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} {name}"));
        assert_eq!(p["in"], "query", "{path} {name}");
    }
    // A bigger body limit lets the longest prompt of astral characters through.
    let (s, b) = env
        .post(
            "/v1/generations",
            &user,
            &json!({"prompt": "🎬".repeat(2_000)}),
        )
        .await;
    assert_ne!(s, StatusCode::BAD_REQUEST, "{b}");
    env.cleanup().await;
}

/// A worker started while Postgres is not answering (a restart under way)
/// waits for it instead of exiting; the chaos run once caught a worker
/// restarted a moment before Postgres went down exit with status 1.
#[tokio::test]
async fn a_worker_started_before_postgres_answers_waits_for_it() {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let mut settings = test_settings();
    let real = genq_store::db::connect_options(&settings.database).unwrap();
    let upstream = format!("{}:{}", real.get_host(), real.get_port());
    // A stand-in for Postgres: it hangs up on every connection until `up`,
    // then forwards to the real server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU32::new(0));
    let proxy = {
        let (up, refused) = (up.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(Ordering::SeqCst) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        })
    };
    let name = real.get_database().unwrap().to_owned();
    let original = settings.clone();
    settings.database.url = secrecy::SecretString::from(format!(
        "postgres://{}@127.0.0.1:{port}/{name}",
        real.get_username()
    ));
    let building = tokio::spawn(genq_worker::Worker::build(settings.clone(), None));
    assert!(
        eventually(Duration::from_secs(20), || async {
            (refused.load(Ordering::SeqCst) >= 2).then_some(())
        })
        .await
        .is_some(),
        "the worker did not try Postgres twice"
    );
    assert!(
        !building.is_finished(),
        "the worker gave up while Postgres was down"
    );
    up.store(true, Ordering::SeqCst);
    let worker = tokio::time::timeout(Duration::from_secs(30), building)
        .await
        .expect("the worker did not start once Postgres answered")
        .unwrap()
        .expect("the worker failed to start");
    drop(worker);
    // It migrated the database it waited for.
    let pool = sqlx::PgPool::connect_with(real).await.unwrap();
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    pool.close().await;
    proxy.abort();
    crate::harness::drop_database(&original).await;
}

/// Waiting is for an unreachable server only: a refused login (a role that
/// does not exist) stops the start at once, naming the cause.
#[tokio::test]
async fn a_refused_database_login_fails_the_start_at_once() {
    let mut settings = test_settings();
    let real = genq_store::db::connect_options(&settings.database).unwrap();
    settings.database.url = secrecy::SecretString::from(format!(
        "postgres://no_such_role_xyzzy@{}:{}/genq_never",
        real.get_host(),
        real.get_port()
    ));
    let started = tokio::time::timeout(
        Duration::from_secs(10),
        genq_worker::Worker::build(settings, None),
    )
    .await
    .expect("a refused login was waited on");
    let error = format!("{:#}", started.err().expect("the start succeeded"));
    assert!(error.contains("no_such_role_xyzzy"), "{error}");
}
