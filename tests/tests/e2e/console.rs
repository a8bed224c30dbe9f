//! What the operator console relies on: the read-only `viewer` role (every
//! admin read, no admin action; a plain user gets neither) and the dead-letter
//! list's filters.

use genq_store::store::dead_letters::{self as dlq, NewDeadLetter};
use std::time::Duration;

use crate::harness::TestEnv;
use reqwest::StatusCode;
use serde_json::{json, Value};

const READS: &[&str] = &[
    "/v1/admin/users/viewer@example.com/diagnosis",
    "/v1/admin/jobs",
    "/v1/admin/dlq",
    "/v1/admin/dlq?all=true&reason=boom&q=x",
    "/v1/admin/ledger/verify",
    "/v1/admin/webhooks",
    "/v1/admin/webhook-deliveries",
    "/v1/admin/system",
];

async fn letter(env: &TestEnv, reason: &str, queue: &str, job_id: Option<uuid::Uuid>) -> i64 {
    dlq::archive(
        &env.pool,
        &NewDeadLetter {
            reason: reason.into(),
            source_queue: queue.into(),
            job_id,
            body: format!("{{\"job_id\":\"{}\"}}", job_id.unwrap_or_default()).into_bytes(),
            headers: json!({}),
        },
    )
    .await
    .unwrap()
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_viewer_reads_everything_and_changes_nothing() {
    let env = TestEnv::new().await;
    env.new_user("user-1", "viewer@example.com").await;
    let id = letter(&env, "boom", "genq.work", None).await;
    let viewer = env.token_with("ops-viewer", None, Some("viewer"), 3600);
    for path in READS {
        let (s, body) = env.get(path, &viewer).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }
    let (s, _) = env.get(&format!("/v1/admin/dlq/{id}"), &viewer).await;
    assert_eq!(s, StatusCode::OK);

    let grant = json!({"email": "viewer@example.com", "amount": 5, "reason": "r", "kind": "grant"});
    let actions = [
        ("/v1/admin/credits".to_owned(), grant),
        (format!("/v1/admin/dlq/{id}/replay"), json!({})),
        (format!("/v1/admin/dlq/{id}/discard"), json!({})),
        // Running a verification scans the whole ledger and records a row.
        ("/v1/admin/ledger/verify".to_owned(), json!({})),
    ];
    for (path, body) in &actions {
        let (s, refused) = env.post(path, &viewer, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {refused}");
        assert_eq!(refused["error"]["code"], "forbidden");
        assert!(message(&refused).contains("viewer role"), "{refused}");
    }
    // Nothing changed: the letter is still open, the user still has 8.
    let admin = env.admin_token("ops-admin");
    let (_, open) = env.get(&format!("/v1/admin/dlq/{id}"), &admin).await;
    assert_eq!(open["state"], "open");
    let (_, d) = env
        .get("/v1/admin/users/viewer@example.com/diagnosis", &admin)
        .await;
    assert!(d.to_string().contains("\"available\":8"), "{d}");

    // A plain user gets neither, and an unknown role is a plain user.
    for token in [
        env.token("user-1", Some("viewer@example.com")),
        env.token_with("odd", None, Some("superuser"), 3600),
    ] {
        for path in READS {
            let (s, body) = env.get(path, &token).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {body}");
            assert!(
                message(&body).contains("admin or the viewer role"),
                "{body}"
            );
        }
        for (path, body) in &actions {
            let (s, _) = env.post(path, &token, body).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{path}");
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn dead_letters_are_filtered_by_state_reason_queue_user_age_and_search_and_paged() {
    let env = TestEnv::new().await;
    let t = env.new_user("user-2", "poor@example.com").await;
    // Refused for want of credits, the submission is still recorded as a job.
    let (s, refused) = env.submit(&t, "a video").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{refused}");
    let job: uuid::Uuid = refused["error"]["job_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let a = letter(&env, "gave up after 3 attempts", "genq.work", Some(job)).await;
    let b = letter(&env, "Malformed message", "genq.poll", None).await;
    let c = letter(&env, "gave up after 6 attempts", "genq.poll", None).await;
    let admin = env.admin_token("ops-admin");
    let (s, _) = env
        .post(&format!("/v1/admin/dlq/{c}/discard"), &admin, &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);

    let ids = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_i64().unwrap())
            .collect()
    };
    for (query, want) in [
        ("", vec![a, b]),
        ("all=true", vec![a, b, c]),
        ("state=discarded", vec![c]),
        ("all=true&reason=GAVE%20UP", vec![a, c]),
        ("source_queue=genq.poll", vec![b]),
        ("user=poor%40example.com", vec![a]),
        ("user=user-2", vec![a]),
        (&format!("q={}", &job.to_string()[..8]), vec![a]),
        ("q=malformed", vec![b]),
        ("q=USER-2", vec![a]),
        ("all=true&limit=1", vec![a]),
        (&format!("all=true&limit=1&after_id={a}"), vec![b]),
        (&format!("all=true&after_id={b}"), vec![c]),
        ("older_than_secs=3600", vec![]),
        ("older_than_secs=0&q=%20%20", vec![a, b]),
    ]
    .map(|(q, w)| (q.to_owned(), w))
    {
        let (s, body) = env.get(&format!("/v1/admin/dlq?{query}"), &admin).await;
        assert_eq!(s, StatusCode::OK, "{query}: {body}");
        assert_eq!(ids(&body), want, "{query}");
    }
    for (query, field) in [
        ("state=closed", "state"),
        ("older_than_secs=999999999999", "older_than_secs"),
        ("q=a%01b", "q"),
        ("after_id=-1", "after_id"),
        ("reason=", "reason"),
    ] {
        let (s, body) = env.get(&format!("/v1/admin/dlq?{query}"), &admin).await;
        if query == "reason=" {
            // An empty filter is no filter.
            assert_eq!(s, StatusCode::OK, "{body}");
            continue;
        }
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_admin_cancels_any_users_job_with_its_refund_and_reads_its_ledger() {
    let env = TestEnv::new().await;
    let t = env.new_user("user-3", "rich@example.com").await;
    env.grant("rich@example.com", 2).await;
    // No worker: the job stays queued.
    let (s, job) = env.submit(&t, "a video").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let id = job["id"].as_str().unwrap();
    let viewer = env.token_with("ops-viewer", None, Some("viewer"), 3600);
    let cancel = format!("/v1/admin/jobs/{id}/cancel");
    let (s, body) = env.post(&cancel, &viewer, &json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let (s, body) = env.post(&cancel, &t, &json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");

    let admin = env.admin_token("ops-admin");
    let (s, canceled) = env.post(&cancel, &admin, &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled");
    let (s, again) = env.post(&cancel, &admin, &json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{again}");

    let (s, ledger) = env
        .get(&format!("/v1/admin/jobs/{id}/ledger"), &viewer)
        .await;
    assert_eq!(s, StatusCode::OK, "{ledger}");
    let kinds: Vec<&str> = ledger
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reserve", "refund"]);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["available"], 10);
    let (s, system) = env.get("/v1/admin/system", &viewer).await;
    assert_eq!(s, StatusCode::OK, "{system}");
    assert_eq!(system["jobs_by_status"]["canceled"], 1, "{system}");
    assert_eq!(system["finished_per_hour"][0]["count"], 1, "{system}");
    assert_eq!(system["dead_letters_open"], 0, "{system}");
    let (_, d) = env
        .get("/v1/admin/users/rich@example.com/diagnosis", &admin)
        .await;
    assert!(
        d["audit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "job.cancel" && a["actor"] == "admin:ops-admin"),
        "{d}"
    );
    let (s, _) = env
        .get(
            "/v1/admin/jobs/00000000-0000-0000-0000-000000000000/ledger",
            &admin,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    env.cleanup().await;
}

async fn system(env: &TestEnv, token: &str) -> Value {
    let (s, body) = env.get("/v1/admin/system", token).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    body
}

/// The System page's queue depths come from RabbitMQ's management API
/// (`scripts/services.sh` enables it), and its "last verification" from the
/// worker's periodic check and the console's button.
#[tokio::test]
async fn the_system_summary_shows_the_queues_and_the_last_ledger_verification() {
    let mut settings = crate::harness::test_settings();
    settings.worker.sweep_interval_ms = 100;
    settings.amqp.management_url = Some("http://127.0.0.1:15672".into());
    let env = TestEnv::with_settings(settings).await;
    let viewer = env.token_with("ops-viewer", None, Some("viewer"), 3600);
    assert!(system(&env, &viewer).await["last_verification"].is_null());

    let worker = env.spawn_worker().await;
    // The worker's first sweep verifies the ledger, and the check is recorded.
    let checked = crate::harness::eventually(Duration::from_secs(30), || async {
        let v = system(&env, &viewer).await["last_verification"].clone();
        (v["checked_by"] == "worker").then_some(v)
    })
    .await
    .expect("the worker's verification is recorded");
    assert_eq!(checked["violations"], 0, "{checked}");
    assert_eq!(checked["sample"], json!([]), "{checked}");

    // This deployment's queues, with the worker consuming from them.
    let start = format!("{}.start", env.settings.queue.prefix);
    let queues = crate::harness::eventually(Duration::from_secs(30), || async {
        let q = system(&env, &viewer).await["queues"].clone();
        let consumed = q["queues"].as_array()?.iter().any(|row| {
            row["name"] == start.as_str() && row["consumers"].as_i64().unwrap_or(0) >= 1
        });
        consumed.then_some(q)
    })
    .await
    .expect("the management API lists the worker's queues");
    assert_eq!(queues["available"], true, "{queues}");
    let own = format!("{}.", env.settings.queue.prefix);
    for row in queues["queues"].as_array().unwrap() {
        assert!(row["name"].as_str().unwrap().starts_with(&own), "{row}");
        assert_eq!(row["type"], "quorum", "{row}");
    }
    worker.stop().await;

    // The console's button is recorded with the admin who pressed it.
    let admin = env.admin_token("ops-admin");
    let (s, body) = env
        .post("/v1/admin/ledger/verify", &admin, &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let last = system(&env, &viewer).await["last_verification"].clone();
    assert_eq!(last["checked_by"], "admin:ops-admin", "{last}");
    // The viewer reads that record; reading runs and records nothing.
    let recorded = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ledger_verifications")
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    let before = recorded().await;
    for _ in 0..3 {
        let (s, body) = env.get("/v1/admin/ledger/verify", &viewer).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(
            body["last_verification"]["checked_by"], "admin:ops-admin",
            "{body}"
        );
    }
    assert_eq!(recorded().await, before);
    env.cleanup().await;
}

/// Without the management API the page says so plainly, and still answers.
#[tokio::test]
async fn without_the_management_api_the_system_summary_says_why() {
    let env = TestEnv::new().await;
    let admin = env.admin_token("ops-admin");
    let q = system(&env, &admin).await["queues"].clone();
    assert_eq!(q["available"], false, "{q}");
    assert!(
        q["note"].as_str().unwrap().contains("amqp.management_url"),
        "{q}"
    );
    env.cleanup().await;

    let mut settings = crate::harness::test_settings();
    // Nothing listens on port 9 here: refused at once.
    settings.amqp.management_url = Some("http://admin:s3cret@127.0.0.1:9".into());
    let env = TestEnv::with_settings(settings).await;
    let q = system(&env, &env.admin_token("ops-admin")).await["queues"].clone();
    assert_eq!(q["available"], false, "{q}");
    let note = q["note"].as_str().unwrap();
    assert!(note.contains("did not answer"), "{q}");
    assert!(!note.contains("s3cret"), "the password never shows: {q}");
    env.cleanup().await;
}
