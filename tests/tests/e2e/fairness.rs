//! Fair shares under caps: one user's many jobs don't starve another's one
//! (round-robin between users' lines at a capped provider), a user's own
//! limit keeps their jobs apart while others run beside them, high priority
//! needs the right and goes first, and a waiting job shows its place —
//! read from the jobs' timelines, as a user would.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use genq_provider_sim::{Dialect, SimConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::harness::{eventually, test_settings, TestEnv};

const WAIT: Duration = Duration::from_secs(120);

fn sim(generation_ms: u64) -> SimConfig {
    SimConfig {
        generation: Duration::from_millis(generation_ms),
        dialect: Dialect::TaskId,
        ..SimConfig::default()
    }
}

async fn submit(env: &TestEnv, token: &str, body: Value) -> Uuid {
    let (status, job) = env.post("/v1/generations", token, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    job["id"].as_str().unwrap().parse().unwrap()
}

/// Each job's time at the provider, from its timeline: when it moved to
/// `submitting` and when it ended.
#[derive(Debug, Clone, Copy)]
struct Span {
    created: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

async fn spans(env: &TestEnv) -> HashMap<Uuid, Span> {
    type Row = (
        Uuid,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> =
        sqlx::query_as(
            "SELECT j.id, j.created_at,
                    min(e.at) FILTER (WHERE e.to_status = 'submitting'),
                    max(e.at) FILTER (WHERE e.to_status IN ('succeeded', 'failed', 'canceled', 'dead'))
               FROM jobs j JOIN job_events e ON e.job_id = j.id
              GROUP BY j.id, j.created_at",
        )
        .fetch_all(&env.pool)
        .await
        .unwrap();
    rows.into_iter()
        .map(|(id, created, start, end)| {
            let span = Span {
                created,
                start: start.unwrap_or_else(|| panic!("job {id} never started")),
                end: end.unwrap_or_else(|| panic!("job {id} never ended")),
            };
            (id, span)
        })
        .collect()
}

fn overlap(a: &Span, b: &Span) -> bool {
    a.start < b.end && b.start < a.end
}

/// The most spans open at once.
fn most_at_once<'a>(spans: impl Iterator<Item = &'a Span>) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = vec![];
    for s in spans {
        edges.push((s.start, 1));
        edges.push((s.end, -1));
    }
    // An end before a start at the same instant: a slot handed over.
    edges.sort_by_key(|&(at, d)| (at, d));
    let (mut now, mut most) = (0, 0);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

async fn all_succeeded(env: &TestEnv, n: i64) {
    let done = eventually(WAIT, || async {
        let (ok, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                    count(*) FILTER (WHERE status IN ('queued', 'submitting', 'running'))
               FROM jobs",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
        (ok == n && open == 0).then_some(())
    })
    .await;
    assert!(done.is_some(), "the {n} jobs did not all succeed in time");
    let violations = genq_store::ops::verify_ledger(&env.pool).await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
}

async fn waiting_messages(env: &TestEnv, token: &str, id: Uuid) -> Vec<String> {
    let (_, job) = env.get(&format!("/v1/generations/{id}"), token).await;
    crate::models::waiting_events(&job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_users_thirty_jobs_do_not_starve_anothers_one() {
    let mut settings = test_settings();
    settings.provider.max_concurrent = 2;
    let env = TestEnv::with_sim_and_settings(sim(1_500), settings).await;
    let workers = [env.spawn_worker().await, env.spawn_worker().await];
    let a = env.new_user("many", "many@example.com").await;
    let b = env.new_user("one", "one@example.com").await;
    env.grant("many@example.com", 300).await;
    env.grant("one@example.com", 10).await;
    let mut a_jobs = vec![];
    for i in 0..30 {
        a_jobs.push(submit(&env, &a, json!({"prompt": format!("scene {i}")})).await);
    }
    let b_job = submit(&env, &b, json!({"prompt": "the only one"})).await;

    // While they wait: B's place, and the console's view of the lines.
    let admin = env.admin_token("olga");
    let seen = eventually(WAIT, || async {
        let (_, system) = env.get("/v1/admin/system", &admin).await;
        let line = system["lines"]
            .as_array()?
            .iter()
            .find(|l| l["max_concurrent"] == 2)?
            .clone();
        (line["waiting_users"].as_i64()? >= 1).then_some(line)
    })
    .await
    .expect("the System page shows the capped provider's lines");
    assert!(seen["in_flight"].as_i64().unwrap() <= 2, "{seen:#}");
    assert_eq!(seen["longest_lines"][0]["email"], "many@example.com");

    all_succeeded(&env, 31).await;
    let spans = spans(&env).await;
    assert!(
        most_at_once(spans.values()) <= 2,
        "the cap of 2 was exceeded"
    );
    let b_span = spans[&b_job];
    // A's jobs that started after B submitted and before B started.
    let jumped = a_jobs
        .iter()
        .filter(|id| {
            let s = spans[id];
            s.start > b_span.created && s.start < b_span.start
        })
        .count();
    assert!(
        jumped <= 2,
        "{jumped} of A's jobs started while B's one waited"
    );
    // Nobody waited with an attempt spent, nor twice told the same.
    let attempts: Vec<i32> = sqlx::query_scalar("SELECT attempts FROM jobs")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(attempts.iter().all(|&n| n == 1), "{attempts:?}");
    let told = waiting_messages(&env, &a, a_jobs[29]).await;
    assert_eq!(told.len(), 1, "{told:?}");
    assert!(
        told[0].starts_with("Waiting for a free slot at ") && told[0].contains("(2 at once)"),
        "{told:?}"
    );
    for w in workers {
        w.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_of_one_keeps_a_users_jobs_apart_while_anothers_run_beside() {
    let mut settings = test_settings();
    settings.limits.max_active_per_user = 1;
    let env = TestEnv::with_sim_and_settings(sim(500), settings).await;
    let worker = env.spawn_worker().await;
    let u = env.new_user("solo", "solo@example.com").await;
    let v = env.new_user("other", "other@example.com").await;
    env.grant("solo@example.com", 30).await;
    env.grant("other@example.com", 30).await;
    let mut u_jobs = vec![];
    let mut v_jobs = vec![];
    for i in 0..3 {
        u_jobs.push(submit(&env, &u, json!({"prompt": format!("u {i}")})).await);
        v_jobs.push(submit(&env, &v, json!({"prompt": format!("v {i}")})).await);
    }
    // The last of each waits, with its place in the user's line.
    let waiting = eventually(WAIT, || async {
        let (_, job) = env.get(&format!("/v1/generations/{}", u_jobs[2]), &u).await;
        job["queue_position"].as_i64()
    })
    .await
    .expect("the third job waited with a place in line");
    assert!((1..=2).contains(&waiting), "place {waiting}");
    all_succeeded(&env, 6).await;
    let spans = spans(&env).await;
    for jobs in [&u_jobs, &v_jobs] {
        assert_eq!(
            most_at_once(jobs.iter().map(|id| &spans[id])),
            1,
            "one user's jobs overlapped at the provider"
        );
    }
    let beside = u_jobs
        .iter()
        .any(|a| v_jobs.iter().any(|b| overlap(&spans[a], &spans[b])));
    assert!(beside, "the other user's jobs never ran beside");
    let told = waiting_messages(&env, &u, u_jobs[2]).await;
    assert_eq!(
        told,
        ["Waiting: you have 1 video in progress, the most at once on your plan."]
    );
    // Done: no place in line.
    let (_, job) = env.get(&format!("/v1/generations/{}", u_jobs[2]), &u).await;
    assert!(job.get("queue_position").is_none(), "{job:#}");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_priority_needs_the_right_and_goes_first() {
    let mut settings = test_settings();
    settings.provider.max_concurrent = 1;
    let env = TestEnv::with_sim_and_settings(sim(600_000), settings).await;
    let user = env.new_user("vip", "vip@example.com").await;
    env.grant("vip@example.com", 50).await;
    let high = json!({"prompt": "first, please", "priority": "high"});

    // Without the right: a 403 naming priority, and nothing recorded.
    let (status, refused) = env.post("/v1/generations", &user, &high).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["error"]["field"], "priority");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);

    // An operator gives it (audited); a viewer may read, not set.
    let admin = env.admin_token("olga");
    let path = "/v1/admin/users/vip@example.com/limits";
    let (status, limits) = env
        .call(
            Method::PUT,
            path,
            Some(&admin),
            Some(&json!({"priority": true, "reason": "pro plan"})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{limits}");
    assert_eq!(limits["priority"], true);
    assert_eq!(limits["max_active"], Value::Null);
    let (status, bad) = env
        .call(
            Method::PUT,
            path,
            Some(&admin),
            Some(&json!({"max_active": 10_001})),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"]["field"], "max_active");
    let audited: Vec<Value> = sqlx::query_scalar(
        "SELECT details FROM audit_log WHERE action = 'user.limits' AND actor = 'admin:olga'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["after"]["priority"], true);
    assert_eq!(audited[0]["reason"], "pro plan");

    // Three normal jobs (the first holds the only slot: its generation
    // outlasts the test), then a high one: it is next in line, and gets the
    // slot the first one's cancel frees before the two that waited.
    let worker = env.spawn_worker().await;
    let mut submitted = vec![];
    for i in 0..3 {
        submitted.push(submit(&env, &user, json!({"prompt": format!("normal {i}")})).await);
    }
    let normal = submitted;
    let place = |id: Uuid| {
        let (env, user) = (&env, &user);
        async move {
            let (_, job) = env.get(&format!("/v1/generations/{id}"), user).await;
            (
                job["status"].as_str().unwrap_or_default().to_owned(),
                job["queue_position"].as_i64(),
            )
        }
    };
    // Whichever start message came first holds the slot (they are handled
    // concurrently); the other two wait in the order they were submitted.
    let lined_up = eventually(WAIT, || async {
        let mut holder = None;
        let mut places = vec![];
        for &id in &normal {
            match place(id).await {
                (status, None) if status != "queued" => holder = Some(id),
                (_, Some(p)) => places.push((p, id)),
                _ => return None,
            }
        }
        places.sort();
        let waiting: Vec<Uuid> = places.iter().map(|p| p.1).collect();
        (holder.is_some() && places.iter().map(|p| p.0).eq([1, 2]))
            .then(|| (holder.unwrap(), waiting))
    })
    .await;
    let (holder, normal) = lined_up.expect("one job at the provider, two in line");
    let urgent = submit(&env, &user, high.clone()).await;
    let (_, job) = env.get(&format!("/v1/generations/{urgent}"), &user).await;
    assert_eq!(job["priority"], "high");
    let parked = eventually(WAIT, || async { place(urgent).await.1 }).await;
    assert_eq!(parked, Some(1), "the high job is next in line");
    assert_eq!(place(normal[0]).await.1, Some(2));
    assert_eq!(place(normal[1]).await.1, Some(3));

    let cancel = |id: Uuid| {
        let (env, user) = (&env, &user);
        async move {
            let (status, body) = env
                .post(&format!("/v1/generations/{id}/cancel"), user, &json!({}))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    cancel(holder).await;
    env.wait_for_job(&user, &urgent.to_string(), WAIT, |j| {
        j["status"] != "queued"
    })
    .await;
    assert_eq!(place(normal[0]).await, ("queued".into(), Some(1)));
    cancel(urgent).await;
    env.wait_for_job(&user, &normal[0].to_string(), WAIT, |j| {
        j["status"] != "queued"
    })
    .await;
    assert_eq!(place(normal[1]).await, ("queued".into(), Some(1)));
    cancel(normal[0]).await;
    cancel(normal[1]).await;
    // Each reserved once and refunded once; the waiting one at once.
    for id in [holder, normal[0], normal[1], urgent] {
        let kinds: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM credit_ledger WHERE job_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&env.pool)
                .await
                .unwrap();
        assert_eq!(kinds, ["reserve", "refund"], "{id}");
    }
    let violations = genq_store::ops::verify_ledger(&env.pool).await.unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    worker.stop().await;
    env.cleanup().await;
}
