//! Group commit of submissions (store::group): what a group decides, what it
//! leaves to the lone path, and that concurrent groups neither deadlock nor
//! keep anything of a group that failed.

use genq_shared::domain::{AspectRatio, DurationSeconds, Prompt, VideoRequest};
use genq_shared::store::group::{submit_group, GroupOutcome, RateAllowance};
use genq_shared::store::NewSubmission;
use genq_tests::{ledger_balances, user_id, TestEnv};
use uuid::Uuid;

fn request(prompt: &str) -> VideoRequest {
    VideoRequest {
        prompt: Prompt::parse(prompt).unwrap(),
        duration: DurationSeconds::default(),
        aspect_ratio: AspectRatio::default(),
        model: None,
    }
}

fn new<'a>(user: Uuid, request: &'a VideoRequest, key: Option<&'a str>) -> NewSubmission<'a> {
    NewSubmission {
        job_id: Uuid::now_v7(),
        user_id: user,
        request,
        cost: 10,
        idempotency_key: key,
        provider: "sim",
    }
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&env.pool).await.unwrap()
}

#[tokio::test]
async fn a_group_decides_what_a_lone_submission_would_and_leaves_the_rest_alone() {
    let env = TestEnv::new().await;
    env.new_user("poor", "poor@example.com").await; // 8 credits: no video
    env.new_user("rich", "rich@example.com").await;
    env.grant("rich@example.com", 12).await; // 20: two videos
    env.new_user("keyed", "keyed@example.com").await;
    env.grant("keyed@example.com", 100).await;
    let (poor, rich, keyed) = (
        user_id(&env.pool, "poor").await,
        user_id(&env.pool, "rich").await,
        user_id(&env.pool, "keyed").await,
    );
    let r = request("a group");
    let group = [
        new(rich, &r, None),
        new(poor, &r, None),
        new(rich, &r, None),
        new(keyed, &r, Some("k")),
        new(rich, &r, None),
    ];
    // A burst of 3 per user: rich's third is over it.
    let rate = Some(RateAllowance {
        per_minute: 1,
        burst: 3,
    });
    let outcomes = submit_group(&env.pool, &group, rate).await.unwrap();
    let accepted: Vec<Uuid> = outcomes
        .iter()
        .filter_map(|o| match o {
            GroupOutcome::Accepted(job) => Some(job.id),
            _ => None,
        })
        .collect();
    // Rich's first two, in their order; rich's third over its credits is
    // left alone (to record its 402 under the account lock) with its
    // allowance taken; poor's likewise; the keyed one untouched.
    assert_eq!(accepted, vec![group[0].job_id, group[2].job_id]);
    assert!(matches!(
        outcomes[1],
        GroupOutcome::Alone { rate_taken: true }
    ));
    assert!(matches!(
        outcomes[3],
        GroupOutcome::Alone { rate_taken: false }
    ));
    assert!(matches!(
        outcomes[4],
        GroupOutcome::Alone { rate_taken: true }
    ));
    assert_eq!(ledger_balances(&env.pool, rich).await.0, 0);
    assert_eq!(ledger_balances(&env.pool, keyed).await.0, 108);
    assert_eq!(count(&env, "SELECT count(*) FROM outbox").await, 2);

    // Rich has spent the burst: the next is refused by the allowance,
    // before any credit is looked at.
    let later = [new(rich, &r, None)];
    let outcomes = submit_group(&env.pool, &later, rate).await.unwrap();
    assert!(matches!(outcomes[0], GroupOutcome::RateLimited(_)));
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_group_keeps_nothing() {
    let env = TestEnv::new().await;
    env.new_user("u", "u@example.com").await;
    env.grant("u@example.com", 92).await; // 100
    let u = user_id(&env.pool, "u").await;
    let r = request("once");
    let first = [new(u, &r, None)];
    submit_group(&env.pool, &first, None).await.unwrap();
    // The second submission reuses a committed job ID: the statement fails
    // and with it the whole group, the first submission included.
    let mut again = new(u, &r, None);
    again.job_id = first[0].job_id;
    let group = [new(u, &r, None), again];
    let allowance = Some(RateAllowance {
        per_minute: 60,
        burst: 100,
    });
    assert!(submit_group(&env.pool, &group, allowance).await.is_err());
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await, 1);
    assert_eq!(count(&env, "SELECT count(*) FROM submit_rate").await, 0);
    assert_eq!(ledger_balances(&env.pool, u).await.0, 90);
    env.cleanup().await;
}

/// Each group names the same users in a different order. Were they locked
/// in the order given, two groups would wait on each other and Postgres
/// would end one with a deadlock error.
#[tokio::test]
async fn concurrent_groups_over_the_same_users_do_not_deadlock() {
    let env = TestEnv::new().await;
    let mut users = Vec::new();
    for i in 0..6 {
        let sub = format!("user{i}");
        let email = format!("{sub}@example.com");
        env.new_user(&sub, &email).await;
        env.grant(&email, 10_000).await;
        users.push(user_id(&env.pool, &sub).await);
    }
    let r = request("in any order");
    let rate = Some(RateAllowance {
        per_minute: 60,
        burst: 1000,
    });
    let groups: Vec<Vec<NewSubmission<'_>>> = (0..8)
        .map(|g| {
            let mut order = users.clone();
            order.rotate_left(g % users.len());
            if g % 2 == 1 {
                order.reverse();
            }
            order.into_iter().map(|u| new(u, &r, None)).collect()
        })
        .collect();
    let results =
        futures::future::join_all(groups.iter().map(|g| submit_group(&env.pool, g, rate))).await;
    for outcomes in results {
        let outcomes = outcomes.expect("no group fails");
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, GroupOutcome::Accepted(_))));
    }
    assert_eq!(count(&env, "SELECT count(*) FROM jobs").await, 48);
    env.cleanup().await;
}
