//! The HTTP API against a real Postgres: auth, the ledger, submission, 402s,
//! idempotency and its races, queries, cancel, admin grants, OpenAPI.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::{env_of, ledger_balances, test_settings, user_id, TestEnv};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn assert_error_shape(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_are_checked() {
    let env = TestEnv::new().await;
    let (s, b) = env.call(Method::GET, "/v1/credits", None, None, &[]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error_shape(&b, "unauthorized");

    for bad in ["garbage", "a.b.c", ""] {
        let (s, b) = env.get("/v1/credits", bad).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "token {bad:?}");
        assert_error_shape(&b, "unauthorized");
    }
    // Expired (beyond the leeway).
    let expired = env.token_with("u1", None, None, -120);
    assert_eq!(
        env.get("/v1/credits", &expired).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Signed with another secret.
    let mut other = test_settings();
    other.auth.jwt_secret = secrecy::SecretString::from("another-secret-0123456789");
    let forged = {
        genq_api::auth::Claims::new("u1", 600)
            .role(Some("admin"))
            .mint(b"another-secret-0123456789")
            .unwrap()
    };
    assert_eq!(
        env.get("/v1/credits", &forged).await.0,
        StatusCode::UNAUTHORIZED
    );
    // alg: none, with a valid-looking payload and no signature.
    use base64_like::encode;
    let header = encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = encode(format!(r#"{{"sub":"u1","exp":{},"role":"admin"}}"#, u32::MAX).as_bytes());
    let none = format!("{header}.{payload}.");
    assert_eq!(
        env.get("/v1/credits", &none).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A token without exp.
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "u1"}),
        &jsonwebtoken::EncodingKey::from_secret(crate::harness::jwt_secret().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        env.get("/v1/credits", &no_exp).await.0,
        StatusCode::UNAUTHORIZED
    );

    // A non-admin on an admin endpoint.
    let user = env.token("u1", Some("u1@example.com"));
    let (s, b) = env
        .post(
            "/v1/admin/credits",
            &user,
            &json!({"email": "u1@example.com", "amount": 5, "reason": "x", "kind": "grant"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_error_shape(&b, "forbidden");
    env.cleanup().await;
}

/// Minimal base64url without padding, for hand-made tokens.
mod base64_like {
    pub fn encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test]
async fn a_new_user_gets_the_initial_grant_and_claims_stay_current() {
    let env = TestEnv::new().await;
    let t = env.token("alice", Some("alice@example.com"));
    let (s, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        credits,
        json!({"available": 8, "reserved": 0, "spent": 0, "video_cost": 10, "can_generate": false})
    );
    let (_, ledger) = env.get("/v1/credits/ledger", &t).await;
    let items = ledger["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["kind"], "grant");
    assert_eq!(items[0]["amount"], 8);
    // A second call neither grants again nor creates a second user.
    let t2 = env.token("alice", Some("alice@new.example.com"));
    env.get("/v1/credits", &t2).await;
    let (_, ledger) = env.get("/v1/credits/ledger", &t2).await;
    assert_eq!(ledger["items"].as_array().unwrap().len(), 1);
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE external_id = 'alice'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(email, "alice@new.example.com");
    // Back to the first email within the API's known-user cache: written too.
    env.get("/v1/credits", &t).await;
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE external_id = 'alice'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(email, "alice@example.com");
    env.cleanup().await;
}

#[tokio::test]
async fn first_calls_racing_create_one_user_and_one_grant() {
    let env = TestEnv::new().await;
    let t = env.token("racer", None);
    let calls = (0..20).map(|_| env.get("/v1/credits", &t));
    for (s, _) in futures::future::join_all(calls).await {
        assert_eq!(s, StatusCode::OK);
    }
    let (users, grants): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users WHERE external_id = 'racer'),
                (SELECT count(*) FROM credit_ledger l JOIN users u ON u.id = l.user_id WHERE u.external_id = 'racer')")
        .fetch_one(&env.pool).await.unwrap();
    assert_eq!((users, grants), (1, 1));
    env.cleanup().await;
}

#[tokio::test]
async fn a_shortfall_is_a_402_with_numbers_and_a_recorded_rejected_job() {
    let env = TestEnv::new().await;
    let t = env.token("bob", Some("bob@example.com"));
    let (s, b) = env.submit(&t, "a red fox in the snow").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);
    assert_error_shape(&b, "insufficient_credits");
    assert_eq!(b["error"]["required"], 10);
    assert_eq!(b["error"]["available"], 8);
    assert_eq!(
        b["error"]["message"],
        "A video needs 10 credits; you have 8."
    );
    let job_id = b["error"]["job_id"].as_str().unwrap().to_owned();

    // The refused attempt is in the history, with its reason and timeline.
    let (_, list) = env.get("/v1/generations", &t).await;
    assert_eq!(list["items"][0]["id"], job_id.as_str());
    assert_eq!(list["items"][0]["status"], "rejected");
    let (s, job) = env.get(&format!("/v1/generations/{job_id}"), &t).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(job["error"]["code"], "insufficient_credits");
    assert_eq!(job["events"][0]["to_status"], "rejected");
    assert_eq!(
        job["events"][0]["data"],
        json!({"required": 10, "available": 8})
    );
    // Nothing was reserved.
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["available"], 8);
    assert_eq!(credits["reserved"], 0);

    // After a grant the same request is accepted.
    env.grant("bob@example.com", 10).await;
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["can_generate"], true);
    let (s, job) = env.submit(&t, "a red fox in the snow").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(job["cost"], 10);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["reserved"].as_i64()),
        (Some(8), Some(10))
    );
    // The job and its outbox row were written together.
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE job_id = $1::uuid")
        .bind(job["id"].as_str().unwrap())
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(outbox, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field() {
    let env = TestEnv::new().await;
    let t = env.token("carol", None);
    let cases = [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "x".repeat(2_001)}), "prompt"),
        (json!({"prompt": 42}), "prompt"),
        (json!({}), "prompt"),
        (
            json!({"prompt": "ok", "aspect_ratio": "4:3"}),
            "aspect_ratio",
        ),
        (
            json!({"prompt": "ok", "duration_seconds": 0}),
            "duration_seconds",
        ),
        (
            json!({"prompt": "ok", "duration_seconds": 9_999_999_999_i64}),
            "duration_seconds",
        ),
        (
            json!({"prompt": "ok", "duration_seconds": 2.5}),
            "duration_seconds",
        ),
        (json!({"prompt": "ok", "model": "v2"}), "model"),
        (
            json!({"prompt": "'; DROP TABLE jobs; --", "aspect_ratio": "1:1' OR '1'='1"}),
            "aspect_ratio",
        ),
    ];
    for (body, field) in cases {
        let (s, b) = env.post("/v1/generations", &t, &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_error_shape(&b, "invalid_request");
        assert_eq!(b["error"]["field"], field, "{body} → {b}");
    }
    // Over the size limit, not JSON, invalid UTF-8, deep nesting.
    let huge = json!({"prompt": "x".repeat(70_000)});
    let (s, b) = env.post("/v1/generations", &t, &huge).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"]["field"], "body");
    for raw in [
        b"not json".to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
        "[".repeat(5_000).into_bytes(),
    ] {
        let r = env
            .client
            .post(format!("{}/v1/generations", env.base))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_error_shape(&r.json::<Value>().await.unwrap(), "invalid_request");
    }
    let r = env
        .client
        .post(format!("{}/v1/generations", env.base))
        .bearer_auth(&t)
        .header("content-type", "text/plain")
        .body("{\"prompt\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing was recorded for invalid requests.
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_same_job_and_reserves_once() {
    let env = TestEnv::new().await;
    let t = env.new_user("dave", "dave@example.com").await;
    env.grant("dave@example.com", 100).await;
    let body = json!({"prompt": "a boat", "aspect_ratio": "9:16"});
    let key = [("Idempotency-Key", "order-1")];
    let (s1, j1) = env
        .call(Method::POST, "/v1/generations", Some(&t), Some(&body), &key)
        .await;
    let (s2, j2) = env
        .call(Method::POST, "/v1/generations", Some(&t), Some(&body), &key)
        .await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(j1["id"], j2["id"]);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["reserved"], 10);
    // Same key, different body.
    let other = json!({"prompt": "a different boat"});
    let (s, b) = env
        .call(
            Method::POST,
            "/v1/generations",
            Some(&t),
            Some(&other),
            &key,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error_shape(&b, "idempotency_conflict");
    // Another user may use the same key.
    let t2 = env.new_user("erin", "erin@example.com").await;
    env.grant("erin@example.com", 10).await;
    let (s, j3) = env
        .call(
            Method::POST,
            "/v1/generations",
            Some(&t2),
            Some(&body),
            &key,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_ne!(j3["id"], j1["id"]);
    env.cleanup().await;
}

#[tokio::test]
async fn an_idempotency_key_outside_the_documented_rule_is_a_400_naming_the_header() {
    let env = TestEnv::new().await;
    let t = env.new_user("hana", "hana@example.com").await;
    env.grant("hana@example.com", 100).await;
    let body = json!({"prompt": "a kite"});
    // Printable ASCII, 1 to 200 characters, no space first or last.
    let too_long = "k".repeat(201);
    for bad in ["", "a\tb", too_long.as_str()] {
        let (s, b) = env
            .call(
                Method::POST,
                "/v1/generations",
                Some(&t),
                Some(&body),
                &[("Idempotency-Key", bad)],
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "key {bad:?} → {b}");
        assert_error_shape(&b, "invalid_request");
        assert_eq!(b["error"]["field"], "Idempotency-Key", "{b}");
    }
    let r = env
        .client
        .post(format!("{}/v1/generations", env.base))
        .bearer_auth(&t)
        .header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["field"], "Idempotency-Key", "{b}");
    // Nothing was recorded for them; keys at the edges of the rule are accepted.
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    let longest = "k".repeat(200);
    for good in ["~", "a b", longest.as_str()] {
        let (s, b) = env
            .call(
                Method::POST,
                "/v1/generations",
                Some(&t),
                Some(&body),
                &[("Idempotency-Key", good)],
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "key {good:?} → {b}");
    }
    env.cleanup().await;
}

/// Sends 20 identical requests with one Idempotency-Key at once; each must
/// be a 202. Returns the distinct job IDs they answered with.
async fn race_one_key(
    env: &TestEnv,
    token: &str,
    body: &Value,
    key: &[(&str, &str)],
) -> HashSet<String> {
    let calls = (0..20).map(|_| {
        env.call(
            Method::POST,
            "/v1/generations",
            Some(token),
            Some(body),
            key,
        )
    });
    futures::future::join_all(calls)
        .await
        .iter()
        .map(|(s, j)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{j}");
            j["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn racing_requests_with_one_idempotency_key_make_one_job() {
    let env = TestEnv::new().await;
    let t = env.new_user("frank", "frank@example.com").await;
    env.grant("frank@example.com", 100).await;
    let body = json!({"prompt": "a race"});
    let key = [("Idempotency-Key", "same-key")];
    assert_eq!(race_one_key(&env, &t, &body, &key).await.len(), 1);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["reserved"].as_i64()),
        (Some(98), Some(10))
    );
    env.cleanup().await;
}

/// Found by the chaos run: when the first request of a key spent the last
/// credits, a concurrent repeat of it got a 402 (and a rejected job)
/// instead of the same job.
#[tokio::test]
async fn racing_repeats_of_a_key_get_the_job_even_when_it_took_the_last_credits() {
    let env = TestEnv::new().await;
    let t = env.new_user("last", "last@example.com").await;
    env.grant("last@example.com", 2).await; // exactly one video
    let body = json!({"prompt": "the only one"});
    let key = [("Idempotency-Key", "only-once")];
    assert_eq!(race_one_key(&env, &t, &body, &key).await.len(), 1);
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'rejected'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(rejected, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn fifty_concurrent_submissions_by_a_user_who_can_afford_three() {
    let env = TestEnv::new().await;
    let t = env.new_user("gina", "gina@example.com").await;
    env.grant("gina@example.com", 22).await; // 8 + 22 = 30 = 3 videos
    let calls = (0..50).map(|i| env.submit(&t, Box::leak(format!("video {i}").into_boxed_str())));
    let results = futures::future::join_all(calls).await;
    let accepted = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    let refused = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::PAYMENT_REQUIRED)
        .count();
    assert_eq!((accepted, refused), (3, 47));
    for (s, b) in &results {
        if *s == StatusCode::PAYMENT_REQUIRED {
            assert!(b["error"]["available"].as_i64().unwrap() < 10, "{b}");
        }
    }
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["reserved"].as_i64()),
        (Some(0), Some(30))
    );
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM jobs GROUP BY status ORDER BY status")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(counts, vec![("queued".into(), 3), ("rejected".into(), 47)]);
    let uid = user_id(&env.pool, "gina").await;
    assert_eq!(ledger_balances(&env.pool, uid).await, (0, 30, 0));
    env.cleanup().await;
}

#[tokio::test]
async fn jobs_are_private_listed_newest_first_and_paginated() {
    let env = TestEnv::new().await;
    let t = env.new_user("hank", "hank@example.com").await;
    env.grant("hank@example.com", 32).await; // 40: four videos
    let mut ids = vec![];
    for i in 0..5 {
        let (_, b) = env.submit(&t, &format!("clip {i}")).await;
        ids.push(
            b["id"]
                .as_str()
                .or(b["error"]["job_id"].as_str())
                .unwrap()
                .to_owned(),
        );
    }
    // Pages of 2, newest first, 5 items in all (one rejected).
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/generations?limit=2&cursor={c}"),
            None => "/v1/generations?limit=2".into(),
        };
        let (s, page) = env.get(&path, &t).await;
        assert_eq!(s, StatusCode::OK);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let (_, rejected) = env.get("/v1/generations?status=rejected", &t).await;
    assert_eq!(rejected["items"].as_array().unwrap().len(), 1);
    for bad in [
        "limit=0",
        "limit=101",
        "limit=99999999999999999999",
        "limit=-1",
        "status=bogus",
        "cursor=zzz",
        "extra=1",
    ] {
        let (s, b) = env.get(&format!("/v1/generations?{bad}"), &t).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_error_shape(&b, "invalid_request");
    }
    // Another user sees none of them, and can neither read nor cancel them.
    let other = env.token("ivy", None);
    let (_, page) = env.get("/v1/generations", &other).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let (s, b) = env
        .get(&format!("/v1/generations/{}", ids[1]), &other)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error_shape(&b, "not_found");
    let (s, _) = env
        .post(
            &format!("/v1/generations/{}/cancel", ids[1]),
            &other,
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = env.get("/v1/generations/not-a-uuid", &t).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.cleanup().await;
}

#[tokio::test]
async fn canceling_a_queued_job_refunds_it_once() {
    let env = TestEnv::new().await;
    let t = env.new_user("jack", "jack@example.com").await;
    env.grant("jack@example.com", 2).await;
    let (_, job) = env.submit(&t, "to be canceled").await;
    let id = job["id"].as_str().unwrap();
    let (s, canceled) = env
        .post(&format!("/v1/generations/{id}/cancel"), &t, &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(canceled["status"], "canceled");
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    let (s, b) = env
        .post(&format!("/v1/generations/{id}/cancel"), &t, &json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error_shape(&b, "invalid_state");
    let refunds: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM credit_ledger WHERE kind = 'refund' AND job_id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(refunds, 1);
    let (_, job) = env.get(&format!("/v1/generations/{id}"), &t).await;
    let statuses: Vec<&str> = job["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_status"].as_str())
        .collect();
    assert_eq!(statuses, ["queued", "canceled"]);
    env.cleanup().await;
}

#[tokio::test]
async fn admin_grants_and_purchases_are_audited_and_references_apply_once() {
    let env = TestEnv::new().await;
    let user = env.token("kim", Some("kim@example.com"));
    env.get("/v1/credits", &user).await;
    let admin = env.admin_token("op-1");
    let purchase = json!({"email": "KIM@example.com", "amount": 50, "reason": "paid", "kind": "purchase", "reference": "pay_123"});
    let (s, first) = env.post("/v1/admin/credits", &admin, &purchase).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["applied"], true);
    assert_eq!(first["credits"]["available"], 58);
    let (s, again) = env.post("/v1/admin/credits", &admin, &purchase).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["applied"], false);
    assert_eq!(again["credits"]["available"], 58);
    // Concurrent repeats of one purchase still apply once.
    let racing = json!({"user_id": "kim", "amount": 5, "reason": "paid", "kind": "purchase", "reference": "pay_456"});
    let calls = (0..10).map(|_| env.post("/v1/admin/credits", &admin, &racing));
    let applied = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|(_, b)| b["applied"] == true)
        .count();
    assert_eq!(applied, 1);
    let (_, credits) = env.get("/v1/credits", &user).await;
    assert_eq!(credits["available"], 63);
    // Audit entries carry the actor.
    let audits: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, action FROM audit_log ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        audits,
        vec![
            ("admin:op-1".into(), "credits.purchase".into()),
            ("admin:op-1".into(), "credits.purchase".into())
        ]
    );
    // Invalid amounts and unknown users.
    for (body, status) in [
        (
            json!({"email": "kim@example.com", "amount": -5, "reason": "x", "kind": "grant"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "kim@example.com", "amount": 0, "reason": "x", "kind": "grant"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "kim@example.com", "amount": 9_000_000_000_000_000_000_u64, "reason": "x", "kind": "grant"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "kim@example.com", "amount": 5, "reason": "", "kind": "grant"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "kim@example.com", "amount": 5, "reason": "x", "kind": "gift"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"amount": 5, "reason": "x", "kind": "grant"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "kim@example.com", "user_id": "kim", "amount": 5, "reason": "x", "kind": "grant"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "nobody@example.com", "amount": 5, "reason": "x", "kind": "grant"}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, b) = env.post("/v1/admin/credits", &admin, &body).await;
        assert_eq!(s, status, "{body} → {b}");
        assert!(b["error"]["code"].is_string());
    }
    let uid = user_id(&env.pool, "kim").await;
    assert_eq!(ledger_balances(&env.pool, uid).await, (63, 0, 0));
    env.cleanup().await;
}

#[tokio::test]
async fn health_readiness_and_the_openapi_document() {
    let env = TestEnv::new().await;
    let (s, _) = env.call(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = env.call(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, doc) = env
        .call(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for (path, method) in [
        ("/v1/generations", "post"),
        ("/v1/generations", "get"),
        ("/v1/generations/{id}", "get"),
        ("/v1/generations/{id}/cancel", "post"),
        ("/v1/credits", "get"),
        ("/v1/credits/ledger", "get"),
        ("/v1/admin/credits", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
    let (s, b) = env
        .call(Method::GET, "/v1/nothing-here", None, None, &[])
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error_shape(&b, "not_found");
    let (s, b) = env
        .call(Method::DELETE, "/v1/credits", None, None, &[])
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&b, "method_not_allowed");
    // Metrics are served on their own listener, not on the public port.
    let (s, _) = env.call(Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let metrics = env.api_metrics().await;
    assert!(metrics.contains("genq_http_responses_total"), "{metrics}");
    env.cleanup().await;
}

#[tokio::test]
async fn readiness_fails_when_the_database_is_unreachable() {
    let mut settings = test_settings();
    let env = TestEnv::with_settings(settings.clone()).await;
    // A second API whose database is unreachable: it must start, be live, and not be ready.
    settings.database.url = secrecy::SecretString::from("postgres://postgres@127.0.0.1:1/genq");
    settings.database.acquire_timeout_ms = 500;
    let port = crate::harness::serve_without_migrating(settings.clone()).await;
    let r = env
        .client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert_error_shape(&body, "unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1:1"),
        "internals leaked: {body}"
    );
    let r = env
        .client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // An authenticated call answers 503 in the error shape, not a hang or a 500.
    let t = env.token("x", None);
    let r = env
        .client
        .get(format!("http://127.0.0.1:{port}/v1/credits"))
        .bearer_auth(t)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    env.cleanup().await;
}

#[test]
fn invalid_configuration_names_the_key() {
    // Settings::validate is what load() runs after reading the layers.
    let mut s = test_settings();
    s.credits.video_cost = 0;
    let e = s.validate().unwrap_err().to_string();
    assert!(
        e.contains("credits.video_cost") && e.contains("GENQ__CREDITS__VIDEO_COST"),
        "{e}"
    );
    let mut s = test_settings();
    s.auth.jwt_secret = secrecy::SecretString::from("");
    assert!(s
        .validate_api()
        .unwrap_err()
        .to_string()
        .contains("auth.jwt_secret"));
    let mut s = test_settings();
    s.api.addr = "nowhere".into();
    assert!(s.validate().unwrap_err().to_string().contains("api.addr"));
}

#[test]
fn the_environment_layer_is_read_and_bad_values_name_their_key() {
    use genq_core::config::Settings;
    let s = Settings::load_from(
        None,
        env_of(&[
            ("GENQ__CREDITS__INITIAL", "3"),
            (
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/from_env",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(s.credits.initial, 3);
    assert!(secrecy::ExposeSecret::expose_secret(&s.database.url).ends_with("/from_env"));
    let e = Settings::load_from(None, env_of(&[("GENQ__CREDITS__INITIAL", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("credits.initial"), "{e}");
    let e = Settings::load_from(None, env_of(&[("GENQ__CREDITS__BONUS", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bonus"), "{e}");
}

#[tokio::test]
async fn a_stuck_database_answers_503_instead_of_hanging() {
    // A "database" that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let db_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut settings = test_settings();
    settings.database.url =
        secrecy::SecretString::from(format!("postgres://postgres@127.0.0.1:{db_port}/genq"));
    settings.database.acquire_timeout_ms = 60_000;
    settings.api.request_timeout_ms = 300;
    let port = crate::harness::serve_without_migrating(settings).await;
    let token = genq_api::auth::Claims::new("stuck", 60)
        .mint(crate::harness::jwt_secret().as_bytes())
        .unwrap();
    let started = std::time::Instant::now();
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/credits"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(10));
    let body: Value = r.json().await.unwrap();
    assert_error_shape(&body, "unavailable");
}
