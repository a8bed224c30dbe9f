//! The pipeline end to end: real RabbitMQ and Postgres, in-process workers,
//! the provider simulator over real HTTP.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::harness::{eventually, ledger_balances, test_settings, user_id, TestEnv};
use genq_broker::Publisher;
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

fn statuses(job: &Value) -> Vec<String> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_status"].as_str().map(str::to_owned))
        .collect()
}

async fn settlements(env: &TestEnv, job_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM credit_ledger WHERE job_id = $1::uuid AND kind IN ('commit','refund') ORDER BY id")
        .bind(job_id).fetch_all(&env.pool).await.unwrap()
}

/// The dead letters the workers archived: (reason, body).
async fn dead_letters(env: &TestEnv) -> Vec<(String, Value)> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT reason, body FROM dead_letters ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(r, b)| (r, serde_json::from_slice(&b).unwrap_or(Value::Null)))
        .collect()
}

async fn wait_for_dead_letters(env: &TestEnv, n: usize) -> Vec<(String, Value)> {
    eventually(WAIT, || async {
        let l = dead_letters(env).await;
        (l.len() >= n).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("expected {n} dead letters"))
}

async fn publish_raw(env: &TestEnv, exchange: &str, key: &str, body: &[u8]) {
    let conn = genq_broker::connect(&env.settings).await.unwrap();
    let publisher = Publisher::new(&conn).await.unwrap();
    env.topology().declare(publisher.channel()).await.unwrap();
    publisher
        .publish(exchange, key, body, Default::default())
        .await
        .unwrap();
    conn.close(200, "done".into()).await.ok();
}

#[tokio::test]
async fn a_job_succeeds_and_its_credits_are_committed() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("ann", "ann@example.com").await;
    env.grant("ann@example.com", 2).await;
    let (s, job) = env.submit(&t, "a lighthouse at dusk").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap();
    let done = env.wait_for_status(&t, id, "succeeded", WAIT).await;
    // genq's own copy, never the provider's expiring link.
    assert_eq!(done["result_url"], format!("/v1/generations/{id}/video"));
    assert!(done["provider_task_id"]
        .as_str()
        .unwrap()
        .starts_with("task_"));
    assert_eq!(
        statuses(&done),
        ["queued", "submitting", "running", "succeeded"]
    );
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        credits,
        json!({"available": 0, "reserved": 0, "spent": 10, "video_cost": 10, "can_generate": false})
    );
    assert_eq!(settlements(&env, id).await, ["commit"]);
    assert_eq!(env.sim().stats.snapshot().tasks_created, 1);
    let uid = user_id(&env.pool, "ann").await;
    assert_eq!(ledger_balances(&env.pool, uid).await, (0, 0, 10));
    // The outbox row was published and marked.
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
    // The worker's metrics show the outcome.
    let metrics = env
        .client
        .get(format!("http://127.0.0.1:{}/metrics", worker.metrics_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "genq_jobs_finished_total",
        "genq_provider_call_seconds",
        "genq_publish_confirms_total",
        "genq_credits_committed_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from worker metrics");
    }
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn provider_failures_refund_with_the_reason() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("ben", "ben@example.com").await;
    env.grant("ben@example.com", 12).await;
    let (_, failing) = env.submit(&t, "something [sim:fail]").await;
    let (_, refused) = env.submit(&t, "something else [sim:reject]").await;
    let failed = env
        .wait_for_status(&t, failing["id"].as_str().unwrap(), "failed", WAIT)
        .await;
    assert_eq!(failed["error"]["code"], "provider_failed");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("content policy"),
        "{failed}"
    );
    let rejected = env
        .wait_for_status(&t, refused["id"].as_str().unwrap(), "failed", WAIT)
        .await;
    assert_eq!(rejected["error"]["code"], "provider_rejected");
    for id in [&failed["id"], &rejected["id"]] {
        assert_eq!(settlements(&env, id.as_str().unwrap()).await, ["refund"]);
    }
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (
            credits["available"].as_i64(),
            credits["reserved"].as_i64(),
            credits["spent"].as_i64()
        ),
        (Some(20), Some(0), Some(0))
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn transient_errors_and_429s_are_retried_until_success() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("cat", "cat@example.com").await;
    env.grant("cat@example.com", 12).await;
    let (_, a) = env.submit(&t, "flaky [sim:5xx]").await;
    let (_, b) = env.submit(&t, "busy [sim:429]").await;
    for job in [a, b] {
        let done = env
            .wait_for_status(&t, job["id"].as_str().unwrap(), "succeeded", WAIT)
            .await;
        let retries = done["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "retry")
            .count();
        assert_eq!(retries, 2, "{done:#}");
        assert_eq!(
            settlements(&env, done["id"].as_str().unwrap()).await,
            ["commit"]
        );
    }
    let stats = env.sim().stats.snapshot();
    assert_eq!(
        (stats.injected_5xx, stats.injected_429, stats.tasks_created),
        (2, 2, 2)
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_hung_task_past_its_deadline_is_canceled_and_refunded() {
    let mut settings = test_settings();
    settings.worker.job_timeout_secs = 1;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("dan", "dan@example.com").await;
    env.grant("dan@example.com", 2).await;
    let (_, job) = env.submit(&t, "forever [sim:hang]").await;
    let failed = env
        .wait_for_status(&t, job["id"].as_str().unwrap(), "failed", WAIT)
        .await;
    assert_eq!(failed["error"]["code"], "deadline_exceeded");
    assert_eq!(
        settlements(&env, job["id"].as_str().unwrap()).await,
        ["refund"]
    );
    assert_eq!(env.sim().stats.snapshot().cancels, 1);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["reserved"].as_i64()),
        (Some(10), Some(0))
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn exhausted_retries_kill_the_job_refund_it_and_dead_letter_the_message() {
    let mut settings = test_settings();
    settings.worker.max_attempts = 3;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("eve", "eve@example.com").await;
    env.grant("eve@example.com", 2).await;
    let (_, job) = env.submit(&t, "never works [sim:5xx-always]").await;
    let id = job["id"].as_str().unwrap();
    let dead = env.wait_for_status(&t, id, "dead", WAIT).await;
    assert_eq!(dead["error"]["code"], "retries_exhausted");
    assert!(
        dead["error"]["message"].as_str().unwrap().contains("503"),
        "{dead}"
    );
    assert_eq!(settlements(&env, id).await, ["refund"]);
    assert_eq!(env.sim().stats.snapshot().submit_requests, 3);
    let letters = wait_for_dead_letters(&env, 1).await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].0.contains("gave up after 3 attempts"),
        "{letters:?}"
    );
    assert_eq!(letters[0].1["job_id"], id);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_duplicated_start_message_submits_once_and_commits_once() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let t = env.new_user("fay", "fay@example.com").await;
    env.grant("fay@example.com", 2).await;
    let (_, job) = env.submit(&t, "only once").await;
    let id = job["id"].as_str().unwrap();
    // Two extra copies of the start message, beside the outbox's own.
    let body = serde_json::to_vec(&json!({"type": "start", "job_id": id, "attempt": 1})).unwrap();
    for _ in 0..2 {
        publish_raw(&env, &env.topology().work_exchange(), "start", &body).await;
    }
    let worker = env.spawn_worker().await;
    env.wait_for_status(&t, id, "succeeded", WAIT).await;
    // Let the copies be consumed before counting.
    eventually(WAIT, || async {
        (worker.processed.load(Ordering::Relaxed) >= 3).then_some(())
    })
    .await
    .expect("copies consumed");
    assert_eq!(env.sim().stats.snapshot().tasks_created, 1);
    assert_eq!(settlements(&env, id).await, ["commit"]);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["spent"], 10);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_workers_share_two_hundred_jobs_each_done_once() {
    let mut settings = test_settings();
    settings.database.max_connections = 20;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let mut tokens = vec![];
    for u in 0..20 {
        let email = format!("u{u}@example.com");
        let t = env.new_user(&format!("u{u}"), &email).await;
        env.grant(&email, 92).await; // 100 credits: ten videos each
        tokens.push(t);
    }
    let a = env.spawn_worker().await;
    let b = env.spawn_worker().await;
    let mut ids = vec![];
    for (u, t) in tokens.iter().enumerate() {
        for i in 0..10 {
            let (s, job) = env.submit(t, &format!("user {u} video {i}")).await;
            assert_eq!(s, StatusCode::ACCEPTED, "{job}");
            ids.push(job["id"].as_str().unwrap().to_owned());
        }
    }
    let all_done = eventually(Duration::from_secs(120), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (n == 200).then_some(())
    })
    .await;
    assert!(all_done.is_some(), "not every job succeeded");
    let commits: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_id::text, count(*) FROM credit_ledger WHERE kind IN ('commit','refund') GROUP BY job_id")
        .fetch_all(&env.pool).await.unwrap();
    assert_eq!(commits.len(), 200);
    assert!(commits.iter().all(|(_, n)| *n == 1));
    let committed: HashSet<String> = commits.into_iter().map(|(id, _)| id).collect();
    assert_eq!(committed, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(env.sim().stats.snapshot().tasks_created, 200);
    let (pa, pb) = (
        a.processed.load(Ordering::Relaxed),
        b.processed.load(Ordering::Relaxed),
    );
    assert!(
        pa > 0 && pb > 0,
        "both workers should have worked: {pa} / {pb}"
    );
    let spent: i64 = sqlx::query_scalar("SELECT sum(spent)::bigint FROM credit_accounts")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(spent, 2_000);
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_worker_killed_mid_job_is_replaced_and_credits_move_once() {
    // Slow provider responses keep the job inside the submit call while we kill.
    let sim = SimConfig {
        latency: Duration::from_millis(1_500),
        ..fast_sim()
    };
    let env = TestEnv::with_sim(sim).await;
    let t = env.new_user("gus", "gus@example.com").await;
    env.grant("gus@example.com", 2).await;
    let first = env.spawn_worker().await;
    let (_, job) = env.submit(&t, "interrupted").await;
    let id = job["id"].as_str().unwrap();
    env.wait_for_status(&t, id, "submitting", WAIT).await;
    first.kill().await;
    let second = env.spawn_worker().await;
    env.wait_for_status(&t, id, "succeeded", Duration::from_secs(60))
        .await;
    assert_eq!(settlements(&env, id).await, ["commit"]);
    assert_eq!(env.sim().stats.snapshot().tasks_created, 1);
    let uid = user_id(&env.pool, "gus").await;
    assert_eq!(ledger_balances(&env.pool, uid).await, (0, 0, 10));
    second.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn canceling_a_running_job_cancels_at_the_provider_and_stays_refunded() {
    let sim = SimConfig {
        generation: Duration::from_millis(1_500),
        ..SimConfig::default()
    };
    let env = TestEnv::with_sim(sim).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("hal", "hal@example.com").await;
    env.grant("hal@example.com", 2).await;
    let (_, job) = env.submit(&t, "changed my mind").await;
    let id = job["id"].as_str().unwrap();
    env.wait_for_status(&t, id, "running", WAIT).await;
    let (s, canceled) = env
        .post(&format!("/v1/generations/{id}/cancel"), &t, &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{canceled}");
    eventually(WAIT, || async {
        (env.sim().stats.snapshot().cancels == 1).then_some(())
    })
    .await
    .expect("the provider task is canceled");
    // Past the generation time, the job is still canceled and refunded once.
    let polls_before = env.sim().stats.snapshot().status_requests;
    tokio::time::sleep(Duration::from_millis(1_600)).await; // let the provider's generation time pass
    let (_, after) = env.get(&format!("/v1/generations/{id}"), &t).await;
    assert_eq!(after["status"], "canceled");
    assert_eq!(settlements(&env, id).await, ["refund"]);
    assert!(
        env.sim().stats.snapshot().status_requests <= polls_before + 1,
        "polling continued after cancel"
    );
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["spent"].as_i64()),
        (Some(10), Some(0))
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_and_the_worker_carries_on() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let work = env.topology().work_exchange();
    publish_raw(&env, &work, "start", b"not json at all").await;
    publish_raw(&env, &work, "poll", br#"{"type":"poll","job_id":"nope"}"#).await;
    publish_raw(
        &env,
        &work,
        "start",
        br#"{"type":"start","job_id":"00000000-0000-0000-0000-000000000000","attempt":1}"#,
    )
    .await;
    let got = wait_for_dead_letters(&env, 3).await;
    let reasons: Vec<String> = got.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("malformed message"))
            .count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| *r == "no such job").count(),
        1,
        "{reasons:?}"
    );
    // The worker still works.
    let t = env.new_user("ida", "ida@example.com").await;
    env.grant("ida@example.com", 2).await;
    let (_, job) = env.submit(&t, "after the poison").await;
    env.wait_for_status(&t, job["id"].as_str().unwrap(), "succeeded", WAIT)
        .await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_stopped_worker_drains_and_a_new_one_finishes_everything() {
    let sim = SimConfig {
        latency: Duration::from_millis(200),
        ..fast_sim()
    };
    let env = TestEnv::with_sim(sim).await;
    let t = env.new_user("jo", "jo@example.com").await;
    env.grant("jo@example.com", 42).await; // five videos
    let worker = env.spawn_worker().await;
    let mut ids = vec![];
    for i in 0..5 {
        let (_, job) = env.submit(&t, &format!("drain {i}")).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    env.wait_for_job(&t, &ids[0], WAIT, |j| j["status"] != "queued")
        .await;
    worker.stop().await; // returns only once drained
    let next = env.spawn_worker().await;
    for id in &ids {
        env.wait_for_status(&t, id, "succeeded", WAIT).await;
        assert_eq!(settlements(&env, id).await, ["commit"]);
    }
    next.stop().await;
    env.cleanup().await;
}

/// Found by the chaos run: when Postgres restarted, the relay's error ended
/// the worker session and the worker panicked awaiting the finished relay
/// twice. Here the database refuses connections for a second and every
/// connection is cut, twice (a restart as this database sees it); the worker
/// carries on.
#[tokio::test]
async fn the_worker_survives_losing_every_database_connection() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("cut", "cut@example.com").await;
    env.grant("cut@example.com", 22).await; // three videos
    let db = genq_store::db::connect_options(&env.settings.database).unwrap();
    let db_name = db.get_database().unwrap().to_owned();
    let admin = sqlx::PgPool::connect_with(db.database("postgres"))
        .await
        .unwrap();
    for round in 0..3 {
        if round > 0 {
            let allow = |on: bool| format!("ALTER DATABASE \"{db_name}\" ALLOW_CONNECTIONS {on}");
            sqlx::query(&allow(false)).execute(&admin).await.unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            )
            .bind(&db_name)
            .execute(&admin)
            .await
            .unwrap();
            // Long enough for the relay's safety-net tick to hit the outage.
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            sqlx::query(&allow(true)).execute(&admin).await.unwrap();
        }
        // The API's pool may hand out a dead connection once: a 503, then fine.
        let job = eventually(WAIT, || async {
            let (s, job) = env.submit(&t, &format!("round {round}")).await;
            (s == StatusCode::ACCEPTED).then_some(job)
        })
        .await
        .expect("accepted");
        env.wait_for_status(&t, job["id"].as_str().unwrap(), "succeeded", WAIT)
            .await;
        assert!(!worker.join.is_finished(), "the worker stopped");
    }
    admin.close().await;
    worker.stop().await;
    env.cleanup().await;
}

/// Found by the chaos run: after a RabbitMQ restart a worker reconnected to
/// a broker that accepted TCP but never finished the handshake, and waited
/// forever (not consuming, deaf to SIGTERM). A silent "broker" here: the
/// connection attempt times out, and shutdown is heard meanwhile.
#[tokio::test]
async fn a_broker_that_never_answers_neither_hangs_a_worker_nor_its_shutdown() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = vec![];
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket); // accepted, never answered
        }
    });
    let mut settings = test_settings();
    settings.amqp.url =
        secrecy::SecretString::from(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    let started = std::time::Instant::now();
    let err = genq_broker::connect(&settings)
        .await
        .expect_err("no broker there");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < genq_broker::CONNECT_TIMEOUT + Duration::from_secs(5));

    let env = TestEnv::with_settings(settings).await;
    let worker = env.spawn_worker().await;
    tokio::time::sleep(Duration::from_millis(500)).await; // it is now connecting
    let stopping = std::time::Instant::now();
    worker.shutdown.cancel();
    let joined = tokio::time::timeout(Duration::from_secs(5), worker.join).await;
    assert!(joined.is_ok(), "the worker did not stop while connecting");
    assert!(stopping.elapsed() < Duration::from_secs(5));
    held.abort();
    env.cleanup().await;
}

#[tokio::test]
async fn a_dead_broker_node_in_the_list_is_skipped() {
    // Port 1 refuses at once: a node that is down. The real node follows.
    let mut settings = test_settings();
    let real = secrecy::ExposeSecret::expose_secret(&settings.amqp.url).to_owned();
    settings.amqp.url =
        secrecy::SecretString::from(format!("amqp://guest:guest@127.0.0.1:1/%2f, {real}"));
    settings.validate().expect("a list of nodes is valid");
    // Whichever node a call starts with, it ends connected to the live one.
    for _ in 0..2 {
        let conn = genq_broker::connect(&settings)
            .await
            .expect("the live node");
        conn.close(200, "done".into()).await.ok();
    }
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("nod", "nod@example.com").await;
    env.grant("nod@example.com", 2).await;
    let (s, job) = env.submit(&t, "a node is down").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    env.wait_for_status(&t, job["id"].as_str().unwrap(), "succeeded", WAIT)
        .await;
    worker.stop().await;
    env.cleanup().await;
}

#[test]
fn broker_urls_are_checked_at_load() {
    let mut settings = test_settings();
    settings.amqp.url = secrecy::SecretString::from("amqp://a/%2f,http://b/");
    let err = settings.validate().expect_err("http is not AMQP");
    assert!(err.to_string().contains("amqp.url"), "{err}");
    settings.amqp.url = secrecy::SecretString::from(" , ");
    assert!(settings.validate().is_err());
}

/// A provider polled first at once (`first_poll_ms = 0`): the start step
/// asks about the task itself. An instant video is done in that one
/// delivery; a slower one goes on to the ordinary polls.
#[tokio::test]
async fn a_first_poll_at_once_is_asked_in_the_submitting_step() {
    let mut settings = test_settings();
    settings.provider.first_poll_ms = Some(0);
    // Any poll through the queues would wait a minute, past WAIT.
    settings.worker.poll_initial_ms = 60_000;
    settings.worker.poll_max_ms = 60_000;
    let instant = SimConfig {
        generation: Duration::ZERO,
        ..SimConfig::default()
    };
    let env = TestEnv::with_sim_and_settings(instant, settings).await;
    let t = env.new_user("ida", "ida@example.com").await;
    env.grant("ida@example.com", 2).await;
    let worker = env.spawn_worker().await;
    let (_, job) = env.submit(&t, "done at once").await;
    let id = job["id"].as_str().unwrap();
    let done = env.wait_for_status(&t, id, "succeeded", WAIT).await;
    assert_eq!(
        statuses(&done),
        ["queued", "submitting", "running", "succeeded"]
    );
    let stats = env.sim().stats.snapshot();
    assert_eq!((stats.tasks_created, stats.status_requests), (1, 1));
    assert_eq!(settlements(&env, id).await, ["commit"]);
    worker.stop().await;
    env.cleanup().await;

    // A video that takes longer: the first answer is "still working", and
    // the ordinary polls take over until it is done.
    let mut settings = test_settings();
    settings.provider.first_poll_ms = Some(0);
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let t = env.new_user("ivo", "ivo@example.com").await;
    env.grant("ivo@example.com", 2).await;
    let worker = env.spawn_worker().await;
    let (_, job) = env.submit(&t, "takes a while").await;
    let id = job["id"].as_str().unwrap();
    env.wait_for_status(&t, id, "succeeded", WAIT).await;
    assert!(worker.processed.load(Ordering::Relaxed) >= 2);
    assert!(env.sim().stats.snapshot().status_requests >= 2);
    assert_eq!(settlements(&env, id).await, ["commit"]);
    worker.stop().await;
    env.cleanup().await;
}
