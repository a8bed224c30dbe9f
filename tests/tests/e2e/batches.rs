//! Batches: many jobs' moves in one statement, each job under its own
//! guard; a crash between a batch's commit and its ack; submissions of
//! many users in one statement, each with its own answer.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::harness::{eventually, test_settings, user_id, TestEnv};
use genq_core::domain::{AspectRatio, DurationSeconds, JobStatus, Priority, Prompt, VideoRequest};
use genq_provider_sim::SimConfig;
use genq_store::store::{self, NewSubmission, Note, SubmitOutcome, Transition};
use genq_worker::settle::Settler;
use reqwest::StatusCode;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// `n` jobs of `who` (granted what they cost), submitted with no worker.
async fn queued_jobs(env: &TestEnv, who: &str, n: usize) -> Vec<Uuid> {
    let email = format!("{who}@example.com");
    let t = env.new_user(who, &email).await;
    env.grant(&email, 10 * n as i64).await;
    let mut ids = vec![];
    for i in 0..n {
        let (s, job) = env.submit(&t, &format!("{who} {i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{job}");
        ids.push(job["id"].as_str().unwrap().parse().unwrap());
    }
    ids
}

async fn statuses(env: &TestEnv, ids: &[Uuid]) -> Vec<String> {
    let mut out = vec![];
    for id in ids {
        out.push(
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&env.pool)
                .await
                .unwrap(),
        );
    }
    out
}

async fn account(env: &TestEnv, who: &str) -> (i64, i64, i64) {
    let user = user_id(&env.pool, who).await;
    sqlx::query_as("SELECT available, reserved, spent FROM credit_accounts WHERE user_id = $1")
        .bind(user)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn assert_ledger_verifies(env: &TestEnv) {
    let violations = genq_store::ops::verify_ledger(&env.pool).await.unwrap();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn a_batch_moves_each_job_under_its_own_guard_and_commits_each_once() {
    let env = TestEnv::new().await;
    let ada = queued_jobs(&env, "ada", 3).await;
    let bo = queued_jobs(&env, "bo", 1).await;
    let (avail_before, reserved_before, _) = account(&env, "ada").await;
    let claim_from = [JobStatus::Queued, JobStatus::Submitting];
    let running_from = [JobStatus::Running];
    // Claims of all four, but bo's guard expects a running job: it stays.
    let mut claims: Vec<Transition> = ada
        .iter()
        .map(|id| {
            let mut t = Transition::new(*id, &claim_from, JobStatus::Submitting, "claim");
            t.count_attempt = true;
            t
        })
        .collect();
    claims.push(Transition::new(
        bo[0],
        &running_from,
        JobStatus::Submitting,
        "wrong guard",
    ));
    let answers = store::transition_batch(&env.pool, &claims).await.unwrap();
    assert!(answers[..3].iter().all(|a| matches!(a, Some((j, JobStatus::Queued)) if j.status == JobStatus::Submitting && j.attempts == 1)));
    assert!(answers[3].is_none(), "a failed guard is answered None");
    assert_eq!(
        statuses(&env, &bo).await,
        ["queued"],
        "the failed guard changed its job"
    );

    let submitting = [JobStatus::Submitting];
    let running: Vec<Transition> = ada
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mut t = Transition::new(*id, &submitting, JobStatus::Running, "running");
            t.provider_task_id = Some(["task-0", "task-1", "task-2"][i]);
            t.deadline_in = Some(Duration::from_secs(900));
            t
        })
        .collect();
    let answers = store::transition_batch(&env.pool, &running).await.unwrap();
    for (i, a) in answers.iter().enumerate() {
        let (job, _) = a.as_ref().expect("moved");
        assert_eq!(
            job.provider_task_id.as_deref(),
            Some(["task-0", "task-1", "task-2"][i])
        );
        assert!(job.deadline_at.is_some() && job.running_at.is_some());
    }

    // Three commits of one user's jobs in one statement.
    let keys: Vec<String> = ada.iter().map(|id| format!("videos/{id}.mp4")).collect();
    let commits: Vec<Transition> = ada
        .iter()
        .zip(&keys)
        .map(|(id, key)| {
            let mut t = Transition::new(*id, &running_from, JobStatus::Succeeded, "done");
            t.video = Some((key, 1234));
            t.provider_result_url = Some("https://example.com/v.mp4");
            t.note = Some(Note {
                kind: genq_core::domain::EventKind::Archived,
                message: "copied".into(),
                data: Some(serde_json::json!({"bytes": 1234})),
            });
            t
        })
        .collect();
    let answers = store::transition_batch(&env.pool, &commits).await.unwrap();
    assert!(answers
        .iter()
        .all(|a| matches!(a, Some((j, JobStatus::Running)) if j.status == JobStatus::Succeeded)));
    let (avail, reserved, spent) = account(&env, "ada").await;
    assert_eq!(avail, avail_before, "a commit gives nothing back");
    assert_eq!(
        reserved,
        reserved_before - 30,
        "each job's reservation closed"
    );
    assert_eq!(spent, 30);
    // The same batch again (a redelivery): every guard fails, nothing moves.
    let again = store::transition_batch(&env.pool, &commits).await.unwrap();
    assert!(again.iter().all(Option::is_none));
    assert_eq!(account(&env, "ada").await, (avail, reserved, spent));
    let per_job: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FROM credit_ledger WHERE kind = 'commit' GROUP BY job_id ORDER BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(per_job.len(), 3);
    assert!(per_job.iter().all(|(_, n)| *n == 1));
    // Each job's timeline: its own events, the note before the status.
    for id in &ada {
        let kinds: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(to_status, kind) FROM job_events WHERE job_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&env.pool)
        .await
        .unwrap();
        assert_eq!(
            kinds,
            ["queued", "submitting", "running", "archived", "succeeded"]
        );
    }
    assert_ledger_verifies(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_moves_share_statements_and_each_gets_its_answer() {
    let env = TestEnv::new().await;
    let ids = queued_jobs(&env, "cy", 24).await;
    // One statement at a time: what is ready while it runs forms the next.
    let settler = Settler::spawn(env.pool.clone(), 64, 1);
    let from = [JobStatus::Queued];
    let answers = futures::future::join_all(ids.iter().map(|id| {
        let settler = settler.clone();
        async move {
            let t = Transition::new(*id, &from, JobStatus::Submitting, "claim");
            settler.apply(&t).await
        }
    }))
    .await;
    for (id, a) in ids.iter().zip(&answers) {
        let (job, old) = a.as_ref().unwrap().as_ref().expect("claimed");
        assert_eq!((job.id, *old), (*id, JobStatus::Queued));
    }
    let statements = settler.statements();
    assert!(
        statements < ids.len() as u64,
        "24 moves took {statements} statements"
    );
    // A move whose guard fails is answered None, beside others that pass.
    let again = futures::future::join_all(ids[..4].iter().map(|id| {
        let settler = settler.clone();
        async move {
            let t = Transition::new(*id, &from, JobStatus::Submitting, "claim again");
            settler.apply(&t).await.unwrap()
        }
    }))
    .await;
    assert!(again.iter().all(Option::is_none));
    // A refund never shares a statement: it goes alone and gives back.
    let failed_from = [JobStatus::Submitting];
    let mut fail = Transition::new(ids[0], &failed_from, JobStatus::Failed, "failed");
    fail.error = Some(("provider_failed", "no".into()));
    let (job, _) = settler.apply(&fail).await.unwrap().expect("failed");
    assert_eq!(job.status, JobStatus::Failed);
    assert_ledger_verifies(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_crash_between_a_batch_commit_and_its_ack_loses_nothing_and_settles_once() {
    let mut settings = test_settings();
    // The start step polls at once and the video is ready: one delivery
    // takes a job from queued to succeeded, so its ack follows its commit.
    settings.provider.first_poll_ms = Some(0);
    let sim = SimConfig {
        generation: Duration::ZERO,
        ..SimConfig::default()
    };
    let env = TestEnv::with_sim_and_settings(sim, settings).await;
    let mut ids = queued_jobs(&env, "dee", 6).await;
    ids.extend(queued_jobs(&env, "eve", 6).await);
    let crashing = env.spawn_worker_with(true).await;
    let crashed = eventually(WAIT, || async { crashing.join.is_finished().then_some(()) }).await;
    assert!(crashed.is_some(), "the worker did not reach its first ack");
    assert_eq!(
        crashing.processed.load(Ordering::Relaxed),
        0,
        "the crash came before any ack"
    );
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(succeeded > 0, "nothing was committed before the crash");
    // Every unacked delivery comes back to the next worker.
    let worker = env.spawn_worker().await;
    let all = eventually(WAIT, || async {
        let done = statuses(&env, &ids).await;
        done.iter().all(|s| s == "succeeded").then_some(())
    })
    .await;
    assert!(all.is_some(), "{:?}", statuses(&env, &ids).await);
    // The redeliveries of committed jobs were acked and changed nothing.
    let redelivered = eventually(WAIT, || async {
        (worker.processed.load(Ordering::Relaxed) >= ids.len() as u64).then_some(())
    })
    .await;
    assert!(redelivered.is_some(), "the redeliveries were not all acked");
    let per_job: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FROM credit_ledger WHERE kind IN ('commit', 'refund') GROUP BY job_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(per_job.len(), ids.len());
    assert!(per_job.iter().all(|(_, n)| *n == 1), "{per_job:?}");
    for who in ["dee", "eve"] {
        let (_, reserved, spent) = account(&env, who).await;
        assert_eq!((reserved, spent), (0, 60), "{who}");
    }
    assert_ledger_verifies(&env).await;
    worker.stop().await;
    env.cleanup().await;
}

fn request(prompt: &str) -> VideoRequest {
    VideoRequest {
        prompt: Prompt::parse(prompt).unwrap(),
        duration: DurationSeconds::default(),
        aspect_ratio: AspectRatio::default(),
        model: None,
        priority: Priority::Normal,
    }
}

#[tokio::test]
async fn submissions_in_one_statement_each_get_their_own_answer() {
    let env = TestEnv::new().await;
    let users: Vec<Uuid> = {
        let mut out = vec![];
        for who in ["fa", "gus", "hal", "ivy", "jo", "kit"] {
            let email = format!("{who}@example.com");
            env.new_user(who, &email).await;
            // gus gets nothing: the initial credits don't pay for a video.
            if who != "gus" {
                env.grant(&email, 100).await;
            }
            out.push(user_id(&env.pool, who).await);
        }
        out
    };
    let (fa, gus, hal, ivy, jo, kit) = (users[0], users[1], users[2], users[3], users[4], users[5]);
    // A burst of one: hal spends his before the batch.
    let allowance = store::rate::Allowance {
        per_minute: 1,
        burst: 1,
    };
    let new =
        |user: Uuid, request: &'static VideoRequest, key: Option<&'static str>| NewSubmission {
            job_id: Uuid::now_v7(),
            user_id: user,
            request,
            cost: 10,
            idempotency_key: key,
            provider: "default",
            allowance: Some(allowance),
            trace: None,
        };
    let plain: &'static VideoRequest = Box::leak(Box::new(request("a cat")));
    let other: &'static VideoRequest = Box::leak(Box::new(request("a dog")));
    let first = store::submit(&env.pool, &new(hal, plain, None))
        .await
        .unwrap();
    assert!(matches!(first, SubmitOutcome::Accepted { .. }));
    // ivy and jo used their keys before (each spending their one allowance).
    let ivy_first = new(ivy, plain, Some("ivy-1"));
    let SubmitOutcome::Accepted { job: ivy_job, .. } =
        store::submit(&env.pool, &ivy_first).await.unwrap()
    else {
        panic!("ivy's first submission")
    };
    store::submit(&env.pool, &new(jo, plain, Some("jo-1")))
        .await
        .unwrap();
    let (avail_before, ..) = account(&env, "fa").await;

    let batch = [
        new(fa, plain, None),           // accepted
        new(gus, plain, None),          // 402
        new(hal, plain, None),          // 429
        new(ivy, plain, Some("ivy-1")), // the same request again: its job
        new(jo, other, Some("jo-1")),   // another request, same key: 409
        new(kit, plain, Some("kit-1")), // accepted, with its key
    ];
    let answers = store::submit_batch(&env.pool, &batch).await;
    let answers: Vec<SubmitOutcome> = answers.into_iter().map(Result::unwrap).collect();
    assert!(
        matches!(&answers[0], SubmitOutcome::Accepted { job, replayed: false } if job.id == batch[0].job_id),
        "{:?}",
        answers[0]
    );
    assert!(
        matches!(&answers[1], SubmitOutcome::Rejected { required: 10, .. }),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], SubmitOutcome::RateLimited { retry_after } if !retry_after.is_zero()),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(&answers[3], SubmitOutcome::Accepted { job, replayed: true } if job.id == ivy_job.id),
        "{:?}",
        answers[3]
    );
    assert!(
        matches!(answers[4], SubmitOutcome::IdempotencyConflict),
        "{:?}",
        answers[4]
    );
    assert!(
        matches!(
            &answers[5],
            SubmitOutcome::Accepted {
                replayed: false,
                ..
            }
        ),
        "{:?}",
        answers[5]
    );
    // Only the accepted ones reserved, each once; the refused changed nothing
    // but the 402's rejected job.
    assert_eq!(account(&env, "fa").await.0, avail_before - 10);
    let reserves: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT user_id, count(*) FROM credit_ledger WHERE kind = 'reserve' GROUP BY user_id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let count = |u: Uuid| {
        reserves
            .iter()
            .find(|(id, _)| *id == u)
            .map_or(0, |(_, n)| *n)
    };
    assert_eq!(
        [fa, gus, hal, ivy, jo, kit].map(count),
        [1, 0, 1, 1, 1, 1],
        "reservations per user"
    );
    let statuses: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM jobs")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let status_of = |id: Uuid| {
        statuses
            .iter()
            .find(|(j, _)| *j == id)
            .map(|(_, s)| s.clone())
    };
    assert_eq!(status_of(batch[1].job_id).as_deref(), Some("rejected"));
    assert_eq!(status_of(batch[2].job_id), None, "a 429 makes no job");
    assert_eq!(status_of(batch[4].job_id), None, "a 409 makes no job");
    // Every accepted job has its start message in the outbox.
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs j WHERE status = 'queued'
            AND EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id)",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(queued, 5, "hal, ivy, jo before; fa and kit in the batch");
    assert_ledger_verifies(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn concurrent_submissions_through_the_api_are_answered_as_alone() {
    let env = TestEnv::new().await;
    let mut tokens = vec![];
    for u in 0..12 {
        let email = format!("s{u}@example.com");
        let t = env.new_user(&format!("s{u}"), &email).await;
        // Even users can pay for three videos, odd ones for none.
        if u % 2 == 0 {
            env.grant(&email, 22).await;
        }
        tokens.push(t);
    }
    // Five submissions per user at once: the even users' first three are
    // accepted, the rest of theirs and all of the odd users' refused (402).
    let e = &env;
    let answers = futures::future::join_all(
        tokens
            .iter()
            .flat_map(|t| (0..5).map(move |i| (t, i)))
            .map(|(t, i)| async move { e.submit(t, &format!("video {i}")).await.0 }),
    )
    .await;
    for (u, chunk) in answers.chunks(5).enumerate() {
        let accepted = chunk.iter().filter(|s| **s == StatusCode::ACCEPTED).count();
        let refused = chunk
            .iter()
            .filter(|s| **s == StatusCode::PAYMENT_REQUIRED)
            .count();
        let expected = if u % 2 == 0 { 3 } else { 0 };
        assert_eq!(
            (accepted, refused),
            (expected, 5 - expected),
            "user {u}: {chunk:?}"
        );
    }
    assert_ledger_verifies(&env).await;
    env.cleanup().await;
}
