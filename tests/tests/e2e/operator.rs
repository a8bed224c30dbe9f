//! Operator tooling against the real Postgres and RabbitMQ: the ORIGIN.md
//! scenario with `genqctl diagnose`, credits, jobs, every dlq command,
//! `ledger verify` catching corruption, and the sweeper re-driving a job
//! whose messages were purged.

use std::time::Duration;

use crate::harness::{eventually, test_settings, TestEnv};
use clap::Parser;
use genq_broker::{Publisher, DELAY_TIERS_MS};
use genq_provider_sim::SimConfig;
use genqctl::{execute, Cli, Outcome};
use reqwest::StatusCode;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

async fn ctl(env: &TestEnv, args: &[&str]) -> Outcome {
    let cli = Cli::try_parse_from(std::iter::once("genqctl").chain(args.iter().copied()))
        .expect("valid arguments");
    execute(&cli, &env.settings, &env.pool)
        .await
        .expect("command runs")
}

async fn ctl_json(env: &TestEnv, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(env, &all).await;
    (
        out.code,
        serde_json::from_str(&out.output).unwrap_or_else(|_| panic!("not JSON: {}", out.output)),
    )
}

fn fast_sim() -> SimConfig {
    SimConfig {
        generation: Duration::from_millis(300),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn the_origin_incident_is_one_command_away() {
    let env = TestEnv::with_sim(fast_sim()).await;
    let worker = env.spawn_worker().await;
    // A new user tries to generate with the initial 8 credits.
    let t = env.token("user-42", Some("viewer@example.com"));
    let (s, refused) = env.submit(&t, "my first video").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED);

    let out = ctl(&env, &["diagnose", "--email", "viewer@example.com"]).await;
    assert_eq!(out.code, 0);
    assert!(
        out.output
            .contains("was refused: a video needs 10 credits, the user had 8. No job was queued."),
        "{}",
        out.output
    );
    assert!(out.output.contains("CANNOT afford one"), "{}", out.output);
    assert!(out
        .output
        .contains(refused["error"]["job_id"].as_str().unwrap()));
    let (_, d) = ctl_json(&env, &["diagnose", "--user", "user-42"]).await;
    assert_eq!(d["credits"]["granted"], 8);
    assert_eq!(d["credits"]["purchased"], 0);
    assert_eq!(d["credits"]["can_afford_video"], false);
    assert_eq!(d["jobs"][0]["status"], "rejected");

    // The operator grants credits; the user tries again and gets a video.
    let out = ctl(
        &env,
        &[
            "credits",
            "grant",
            "--email",
            "viewer@example.com",
            "--amount",
            "10",
            "--reason",
            "support ticket 1",
            "--actor",
            "olga",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(out.output.contains("Added 10 credits"), "{}", out.output);
    let (s, job) = env.submit(&t, "my first video").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    env.wait_for_status(&t, job["id"].as_str().unwrap(), "succeeded", WAIT)
        .await;

    let out = ctl(&env, &["diagnose", "--email", "viewer@example.com"]).await;
    assert!(
        out.output.contains("succeeded; 10 credits were spent"),
        "{}",
        out.output
    );
    assert!(out.output.contains("operator:olga"), "{}", out.output);
    assert!(out.output.contains("running → succeeded"), "{}", out.output);
    let (_, d) = ctl_json(&env, &["diagnose", "--email", "viewer@example.com"]).await;
    assert_eq!(
        (
            d["credits"]["spent"].as_i64(),
            d["credits"]["available"].as_i64()
        ),
        (Some(10), Some(8))
    );
    assert_eq!(d["jobs"].as_array().unwrap().len(), 2);
    assert!(d["jobs"][0]["provider_task_id"].as_str().is_some());

    // The same diagnosis over HTTP for admins.
    let admin = env.admin_token("ops");
    let (s, http) = env
        .get("/v1/admin/users/viewer@example.com/diagnosis", &admin)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(http["conclusion"], d["conclusion"]);

    let out = ctl(&env, &["diagnose", "--email", "nobody@example.com"]).await;
    assert_eq!(out.code, 2);
    assert!(out.output.contains("No user"), "{}", out.output);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn purchases_apply_once_and_jobs_can_be_listed_and_shown() {
    let env = TestEnv::new().await;
    let t = env.new_user("p1", "p1@example.com").await;
    let args = [
        "credits",
        "purchase",
        "--email",
        "p1@example.com",
        "--amount",
        "25",
        "--reference",
        "stripe_pi_1",
    ];
    let first = ctl(&env, &args).await;
    assert!(first.output.contains("Added 25"), "{}", first.output);
    let again = ctl(&env, &args).await;
    assert!(again.output.contains("already applied"), "{}", again.output);
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(credits["available"], 33);
    let bad = Cli::try_parse_from([
        "genqctl",
        "credits",
        "grant",
        "--email",
        "p1@example.com",
        "--amount",
        "-3",
        "--reason",
        "x",
    ])
    .unwrap();
    assert!(execute(&bad, &env.settings, &env.pool).await.is_err());

    let (_, job) = env.submit(&t, "listed").await;
    let id = job["id"].as_str().unwrap();
    let (code, list) = ctl_json(
        &env,
        &["jobs", "list", "--status", "queued", "--older-than", "0s"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    let (_, none) = ctl_json(
        &env,
        &["jobs", "list", "--status", "queued", "--older-than", "1h"],
    )
    .await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let shown = ctl(&env, &["jobs", "show", id]).await;
    assert!(
        shown.output.contains("TIMELINE") && shown.output.contains("→ queued"),
        "{}",
        shown.output
    );
    env.cleanup().await;
}

async fn open_letters(env: &TestEnv) -> Vec<Value> {
    let (_, list) = ctl_json(env, &["dlq", "list"]).await;
    list.as_array().unwrap().clone()
}

#[tokio::test]
async fn dead_letters_can_be_listed_shown_replayed_and_discarded() {
    let mut settings = test_settings();
    settings.worker.max_attempts = 2;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("dl", "dl@example.com").await;
    env.grant("dl@example.com", 2).await; // 10: one video at a time

    // Two 503s exhaust the two attempts: dead, refunded, dead-lettered.
    let (_, job) = env.submit(&t, "[sim:5xx] comes back later").await;
    let id = job["id"].as_str().unwrap().to_owned();
    env.wait_for_status(&t, &id, "dead", WAIT).await;
    let letters = eventually(WAIT, || async {
        let l = open_letters(&env).await;
        (!l.is_empty()).then_some(l)
    })
    .await
    .expect("a dead letter");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["job_id"], id.as_str());
    assert_eq!(letter["user_email"], "dl@example.com");
    assert_eq!(letter["attempts"], 2);
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{letter}"
    );
    let letter_id = letter["id"].as_i64().unwrap().to_string();
    // Reading again neither loses nor reorders anything.
    let ids = |l: &[Value]| {
        l.iter()
            .map(|x| (x["id"].clone(), x["reason"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&open_letters(&env).await), ids(&letters));
    let table = ctl(&env, &["dlq", "list"]).await.output;
    assert!(
        table.contains("gave up after 2 attempts") && table.contains("dl@example.com"),
        "{table}"
    );
    let shown = ctl(&env, &["dlq", "show", &letter_id]).await.output;
    assert!(
        shown.contains("\"type\":\"start\"") && shown.contains("TIMELINE"),
        "{shown}"
    );

    // Replay: reserves again (reservation 2) and this time the provider works.
    let out = ctl(&env, &["dlq", "replay", &letter_id, "--actor", "olga"]).await;
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(out.output.contains("reserved again"), "{}", out.output);
    env.wait_for_status(&t, &id, "succeeded", WAIT).await;
    let kinds: Vec<(String, i32)> = sqlx::query_as(
        "SELECT kind, reservation FROM credit_ledger WHERE job_id = $1::uuid ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        vec![
            ("reserve".into(), 1),
            ("refund".into(), 1),
            ("reserve".into(), 2),
            ("commit".into(), 2)
        ]
    );
    let again = ctl(&env, &["dlq", "replay", &letter_id]).await;
    assert_eq!(again.code, 1);
    assert!(
        again.output.contains("already replayed"),
        "{}",
        again.output
    );
    assert_eq!(ctl(&env, &["ledger", "verify"]).await.code, 0);

    // A replay the user can no longer afford says why and changes nothing.
    env.grant("dl@example.com", 10).await; // 10 available
    let (_, second) = env.submit(&t, "[sim:5xx] second one").await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    env.wait_for_status(&t, &second_id, "dead", WAIT).await;
    let (_, spend) = env.submit(&t, "uses the refund").await; // reserves the refunded 10
    assert!(spend["id"].is_string(), "{spend}");
    let letter2 = eventually(WAIT, || async {
        open_letters(&env)
            .await
            .into_iter()
            .find(|l| l["job_id"] == second_id.as_str())
    })
    .await
    .expect("second dead letter");
    let out = ctl(
        &env,
        &[
            "dlq",
            "replay",
            &letter2["id"].as_i64().unwrap().to_string(),
        ],
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(
        out.output
            .contains("can't afford it again: a video needs 10 credits, the user has 0"),
        "{}",
        out.output
    );

    // Discard: closes the letter (the job is already dead and refunded).
    let out = ctl(
        &env,
        &[
            "dlq",
            "discard",
            &letter2["id"].as_i64().unwrap().to_string(),
            "--actor",
            "olga",
        ],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(open_letters(&env).await.is_empty());
    let audits: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE actor = 'operator:olga' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(audits, ["dlq.replay", "dlq.discard"]);
    assert_eq!(ctl(&env, &["ledger", "verify"]).await.code, 0);
    worker.stop().await;
    // The replayed job's first reservation must stay refunded in the ledger.
    sqlx::query(
        "DELETE FROM credit_ledger WHERE job_id = $1::uuid AND reservation = 1 AND kind = 'refund'",
    )
    .bind(&id)
    .execute(&env.pool)
    .await
    .unwrap();
    let out = ctl(&env, &["ledger", "verify"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.output.contains("earlier_reservation_refunded"),
        "{}",
        out.output
    );
    env.cleanup().await;
}

#[tokio::test]
async fn discarding_letters_of_open_jobs_closes_and_refunds_them() {
    // No worker: genqctl itself moves the letters from the broker.
    let env = TestEnv::new().await;
    let t = env.new_user("dd", "dd@example.com").await;
    env.grant("dd@example.com", 12).await; // two videos
    let mut ids = vec![];
    for i in 0..2 {
        let (_, job) = env.submit(&t, &format!("stuck {i}")).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let conn = genq_broker::connect(&env.settings).await.unwrap();
    let publisher = Publisher::new(&conn).await.unwrap();
    env.topology().declare(publisher.channel()).await.unwrap();
    for id in &ids {
        let body =
            serde_json::to_vec(&json!({"type": "start", "job_id": id, "attempt": 1})).unwrap();
        publisher
            .publish(
                &env.topology().dead_letter_exchange(),
                "start",
                &body,
                Default::default(),
            )
            .await
            .unwrap();
    }
    publisher
        .publish(
            &env.topology().dead_letter_exchange(),
            "poll",
            b"garbage",
            Default::default(),
        )
        .await
        .unwrap();
    conn.close(200, "done".into()).await.ok();

    let letters = open_letters(&env).await;
    assert_eq!(letters.len(), 3);
    // The malformed one can't be replayed, and says why.
    let malformed = letters.iter().find(|l| l["job_id"].is_null()).unwrap();
    let out = ctl(
        &env,
        &[
            "dlq",
            "replay",
            &malformed["id"].as_i64().unwrap().to_string(),
        ],
    )
    .await;
    assert!(out.output.contains("malformed"), "{}", out.output);
    let out = ctl(&env, &["dlq", "discard", "--all", "--actor", "olga"]).await;
    assert_eq!(out.code, 0, "{}", out.output);
    assert!(out.output.contains("3 done"), "{}", out.output);
    for id in &ids {
        let (_, job) = env.get(&format!("/v1/generations/{id}"), &t).await;
        assert_eq!(job["status"], "dead");
        assert_eq!(job["error"]["code"], "discarded");
    }
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["available"].as_i64(), credits["reserved"].as_i64()),
        (Some(20), Some(0))
    );
    assert_eq!(ctl(&env, &["ledger", "verify"]).await.code, 0);
    // The admin endpoints see the same archive.
    let admin = env.admin_token("ops");
    let (s, all) = env.get("/v1/admin/dlq?all=true", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["state"] == "discarded"));
    env.cleanup().await;
}

#[tokio::test]
async fn ledger_verify_catches_a_corrupted_row() {
    let env = TestEnv::new().await;
    let t = env.new_user("lv", "lv@example.com").await;
    env.grant("lv@example.com", 2).await;
    env.submit(&t, "a job").await;
    let out = ctl(&env, &["ledger", "verify"]).await;
    assert_eq!(out.code, 0, "{}", out.output);
    sqlx::query("UPDATE credit_accounts SET available = available + 5")
        .execute(&env.pool)
        .await
        .unwrap();
    let (code, report) = ctl_json(&env, &["ledger", "verify"]).await;
    assert_eq!(code, 1);
    let rules: Vec<&str> = report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rule"].as_str().unwrap())
        .collect();
    assert!(
        rules.contains(&"account_matches_ledger") && rules.contains(&"balance_equals_funding"),
        "{report}"
    );
    // A job settled twice (the unique index forbids it, so drop it for the test).
    sqlx::query("UPDATE credit_accounts SET available = available - 5")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM credit_ledger WHERE kind = 'reserve'")
        .execute(&env.pool)
        .await
        .unwrap();
    let out = ctl(&env, &["ledger", "verify"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.output.contains("one_settlement_per_job") && out.output.contains("0 reserve"),
        "{}",
        out.output
    );
    let admin = env.admin_token("ops");
    let (_, http) = env
        .post("/v1/admin/ledger/verify", &admin, &serde_json::json!({}))
        .await;
    assert_eq!(http["ok"], false);
    env.cleanup().await;
}

#[tokio::test]
async fn the_sweeper_finishes_a_job_whose_messages_were_purged() {
    let mut settings = test_settings();
    settings.worker.poll_initial_ms = 2_000; // the first poll waits in a queue we purge
    settings.worker.poll_max_ms = 2_000;
    settings.worker.stale_after_secs = 1;
    settings.worker.sweep_interval_ms = 200;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let worker = env.spawn_worker().await;
    let t = env.new_user("sw", "sw@example.com").await;
    env.grant("sw@example.com", 2).await;
    let (_, job) = env.submit(&t, "purged").await;
    let id = job["id"].as_str().unwrap().to_owned();
    env.wait_for_status(&t, &id, "running", WAIT).await;
    // Lose every message on the broker.
    let conn = genq_broker::connect(&env.settings).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topology = env.topology();
    for q in [topology.start_queue(), topology.poll_queue()]
        .into_iter()
        .chain(DELAY_TIERS_MS.iter().map(|t| topology.wait_queue(*t)))
    {
        ch.queue_purge(q.into(), Default::default()).await.unwrap();
    }
    conn.close(200, "done".into()).await.ok();
    let done = env.wait_for_status(&t, &id, "succeeded", WAIT).await;
    assert!(
        done["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "sweeper"),
        "{done:#}"
    );
    let (_, credits) = env.get("/v1/credits", &t).await;
    assert_eq!(
        (credits["reserved"].as_i64(), credits["spent"].as_i64()),
        (Some(0), Some(10))
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_dead_letter_archiver_comes_back_when_its_queue_is_deleted() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker().await;
    let topology = env.topology();
    let conn = genq_broker::connect(&env.settings).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let consumers = |channel: lapin::Channel| {
        let queue = topology.dead_letter_queue();
        async move {
            channel
                .queue_declare(queue.as_str().into(), passive, Default::default())
                .await
                .ok()
                .map(|q| q.consumer_count())
        }
    };
    // The worker consumes its dead-letter queue (a passive declare of a
    // missing queue closes its channel: a fresh channel per look)...
    eventually(WAIT, || async {
        let ch = conn.create_channel().await.ok()?;
        (consumers(ch).await? > 0).then_some(())
    })
    .await
    .expect("the archiver consumes");
    // ...which an operator deletes by mistake: the archiver's consumer ends.
    channel
        .queue_delete(
            topology.dead_letter_queue().as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();
    // The worker notices, reconnects, declares the queue again and consumes it.
    eventually(WAIT, || async {
        let ch = conn.create_channel().await.ok()?;
        (consumers(ch).await? > 0).then_some(())
    })
    .await
    .expect("the archiver is back");
    let publisher = Publisher::new(&conn).await.unwrap();
    publisher
        .publish(
            &topology.dead_letter_exchange(),
            "poll",
            b"after the restart",
            Default::default(),
        )
        .await
        .unwrap();
    let archived = eventually(WAIT, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&env.pool)
            .await
            .ok()?;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(archived, Some(1), "the dead letter was archived");
    conn.close(200, "done".into()).await.ok();
    worker.stop().await;
    env.cleanup().await;
}
