//! Money in through Stripe: events shaped as Stripe sends them, signed by
//! Stripe's own library (npm `stripe`, `tests/stripe`) and by hand, posted
//! to the webhook; the ledger verified after each.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use genq_provider_sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

const SECRET: &str = "whsec_genq_test_0123456789abcdef";
const OLD_SECRET: &str = "whsec_genq_test_old_fedcba9876543210";
const WAIT: Duration = Duration::from_secs(30);

fn fast_sim() -> SimConfig {
    SimConfig {
        generation: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `Stripe-Signature` headers from Stripe's library, one per
/// (payload, secret, timestamp).
fn stripe_sign(requests: &[(&str, &str, i64)]) -> Vec<String> {
    use std::io::Write;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/stripe");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/stripe")
            .exists(),
        "Stripe's library is missing from {dir}: run scripts/web.sh deps (scripts/test.sh does)"
    );
    let input: Vec<Value> = requests
        .iter()
        .map(|(p, s, t)| json!({"payload": p, "secret": s, "timestamp": t}))
        .collect();
    let mut child = std::process::Command::new("node")
        .arg("sign.mjs")
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("sign.mjs ends");
    assert!(out.status.success(), "sign.mjs failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn event(id: &str, kind: &str, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": now(),
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind,
        "data": {"object": object},
    })
    .to_string()
}

/// A Checkout Session; `credits` is its `metadata.genq_credits` (none: no
/// metadata, as a session priced by its line items).
fn session(id: &str, sub: Option<&str>, pi: &str, credits: Option<&str>, paid: &str) -> Value {
    let metadata = match credits {
        Some(c) => json!({"genq_credits": c}),
        None => json!({}),
    };
    json!({
        "id": id,
        "object": "checkout.session",
        "amount_subtotal": 5000,
        "amount_total": 5000,
        "client_reference_id": sub,
        "currency": "usd",
        "customer": "cus_QXg1hqf4jFNsqG",
        "customer_details": {"email": "buyer@example.com", "name": null},
        "livemode": false,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": pi,
        "payment_status": paid,
        "status": "complete",
    })
}

fn refunded_charge(pi: &str, amount_refunded: i64) -> Value {
    json!({
        "id": format!("ch_{pi}"),
        "object": "charge",
        "amount": 5000,
        "amount_captured": 5000,
        "amount_refunded": amount_refunded,
        "captured": true,
        "currency": "usd",
        "disputed": false,
        "metadata": {},
        "paid": true,
        "payment_intent": pi,
        "refunded": amount_refunded >= 5000,
        "status": "succeeded",
    })
}

fn stripe_settings() -> genq_core::config::Settings {
    let mut s = test_settings();
    s.billing.stripe.webhook_secret = Some(secrecy::SecretString::from(SECRET));
    s.credits.initial = 0;
    s.credits.video_cost = 10;
    s
}

impl TestEnv {
    /// Posts `body` with `signature` (none: no header).
    async fn stripe(&self, body: &str, signature: Option<&str>) -> (StatusCode, Value) {
        let mut req = self
            .client
            .post(format!("{}/v1/billing/stripe/webhook", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(s) = signature {
            req = req.header("stripe-signature", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Posts `body` signed now by Stripe's library; returns the outcome.
    async fn stripe_signed(&self, body: &str) -> String {
        let header = stripe_sign(&[(body, SECRET, now())]).remove(0);
        let (status, answer) = self.stripe(body, Some(&header)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["outcome"].as_str().unwrap().to_owned()
    }

    async fn balances(&self, sub: &str) -> (i64, i64, i64, i64) {
        sqlx::query_as(
            "SELECT available, reserved, spent, owed FROM credit_accounts a
               JOIN users u ON u.id = a.user_id WHERE u.external_id = $1",
        )
        .bind(sub)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn events_logged(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM billing_events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn assert_ledger_sound(&self) {
        let violations = genq_store::ops::verify_ledger(&self.pool).await.unwrap();
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

#[tokio::test]
async fn a_paid_checkout_credits_once_however_often_it_arrives() {
    let env = TestEnv::with_settings(stripe_settings()).await;
    let body = event(
        "evt_1PgcA1B7WZ01zgkWcQ3dQk9Z",
        "checkout.session.completed",
        session("cs_test_a1", Some("buyer-1"), "pi_1", Some("50"), "paid"),
    );
    // A user who never signed in is created from the sub.
    assert_eq!(env.stripe_signed(&body).await, "credited");
    assert_eq!(env.balances("buyer-1").await, (50, 0, 0, 0));
    for _ in 0..3 {
        assert_eq!(env.stripe_signed(&body).await, "duplicate");
    }
    // The same session's twin event credits nothing more.
    let twin = event(
        "evt_twin",
        "checkout.session.async_payment_succeeded",
        session("cs_test_a1", Some("buyer-1"), "pi_1", Some("50"), "paid"),
    );
    assert_eq!(env.stripe_signed(&twin).await, "duplicate");
    assert_eq!(env.balances("buyer-1").await, (50, 0, 0, 0));
    let (kind, reference, actor): (String, String, String) =
        sqlx::query_as("SELECT kind, reference, actor FROM credit_ledger WHERE kind = 'purchase'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), reference.as_str(), actor.as_str()),
        ("purchase", "cs_test_a1", "stripe")
    );
    env.assert_ledger_sound().await;
    // An unpaid session is ignored; one naming no user, or no amount, is
    // kept for an operator and credits nothing.
    let unpaid = event(
        "evt_unpaid",
        "checkout.session.completed",
        session("cs_test_b", Some("buyer-1"), "pi_2", Some("50"), "unpaid"),
    );
    assert_eq!(env.stripe_signed(&unpaid).await, "ignored");
    let no_user = event(
        "evt_no_user",
        "checkout.session.completed",
        session("cs_test_c", None, "pi_3", Some("50"), "paid"),
    );
    assert_eq!(env.stripe_signed(&no_user).await, "needs_attention");
    let no_amount = event(
        "evt_no_amount",
        "checkout.session.completed",
        session("cs_test_d", Some("buyer-1"), "pi_4", Some("-3"), "paid"),
    );
    assert_eq!(env.stripe_signed(&no_amount).await, "needs_attention");
    let other = event(
        "evt_other",
        "customer.created",
        json!({"id": "cus_1", "object": "customer"}),
    );
    assert_eq!(env.stripe_signed(&other).await, "ignored");
    assert_eq!(env.balances("buyer-1").await, (50, 0, 0, 0));
    // Operators see them, those needing attention on their own.
    let admin = env.admin_token("ops");
    let (s, all) = env.get("/v1/admin/billing/events", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(all.as_array().unwrap().len(), 6, "{all}");
    let (_, attention) = env
        .get("/v1/admin/billing/events?attention=true", &admin)
        .await;
    let ids: Vec<&str> = attention
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        ids.contains(&"evt_no_user") && ids.contains(&"evt_no_amount"),
        "{ids:?}"
    );
    env.assert_ledger_sound().await;
    env.cleanup().await;
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_tampered_bodies_change_nothing() {
    let env = TestEnv::with_settings(stripe_settings()).await;
    let body = event(
        "evt_sig",
        "checkout.session.completed",
        session("cs_test_sig", Some("buyer-2"), "pi_sig", Some("40"), "paid"),
    );
    let t = now();
    let signed = stripe_sign(&[
        (&body, SECRET, t),
        (&body, OLD_SECRET, t),
        (&body, SECRET, t - 301),
        (&body, "whsec_someone_else", t),
    ]);
    let tampered = body.replace("\"40\"", "\"4000\"");
    for (what, body, header) in [
        ("no signature", body.as_str(), None),
        ("tampered body", tampered.as_str(), Some(signed[0].as_str())),
        ("stale timestamp", body.as_str(), Some(signed[2].as_str())),
        ("another secret", body.as_str(), Some(signed[3].as_str())),
        ("garbage", body.as_str(), Some("t=abc,v1=zz")),
    ] {
        let (status, answer) = env.stripe(body, header).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(
            answer["error"]["field"], "Stripe-Signature",
            "{what}: {answer}"
        );
    }
    assert_eq!(env.events_logged().await, 0);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "a refused event created a user");
    // While a secret is being rolled Stripe signs with both: any v1 may match.
    let v1 = |h: &str| {
        h.split(',')
            .find(|p| p.starts_with("v1="))
            .unwrap()
            .to_owned()
    };
    let rolled = format!("t={t},{},{}", v1(&signed[1]), v1(&signed[0]));
    let (status, answer) = env.stripe(&body, Some(&rolled)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], "credited");
    // A body past the bound is refused before anything is read into it.
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(300 * 1024));
    let (status, _) = env.stripe(&huge, Some(&signed[0])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(env.balances("buyer-2").await, (40, 0, 0, 0));
    env.assert_ledger_sound().await;
    env.cleanup().await;
    // Unconfigured, the route does not exist.
    let plain = TestEnv::new().await;
    let (status, _) = plain.stripe(&body, Some(&signed[0])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    plain.cleanup().await;
}

#[tokio::test]
async fn a_refund_takes_back_unspent_credits_and_what_was_spent_is_owed() {
    let env = TestEnv::with_sim_and_settings(fast_sim(), stripe_settings()).await;
    let worker = env.spawn_worker().await;
    let buy = event(
        "evt_buy",
        "checkout.session.completed",
        session("cs_test_r", Some("spender"), "pi_r", Some("50"), "paid"),
    );
    assert_eq!(env.stripe_signed(&buy).await, "credited");
    let token = env.token("spender", None);
    for prompt in ["first", "second"] {
        let (s, job) = env.submit(&token, prompt).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{job}");
        env.wait_for_status(&token, job["id"].as_str().unwrap(), "succeeded", WAIT)
            .await;
    }
    assert_eq!(env.balances("spender").await, (30, 0, 20, 0));
    // Half refunded: 25 credits, all still unspent.
    let half = event("evt_half", "charge.refunded", refunded_charge("pi_r", 2500));
    assert_eq!(env.stripe_signed(&half).await, "reversed");
    assert_eq!(env.balances("spender").await, (5, 0, 20, 0));
    // The rest: 5 unspent are taken, 20 were spent and are owed.
    let full = event("evt_full", "charge.refunded", refunded_charge("pi_r", 5000));
    assert_eq!(env.stripe_signed(&full).await, "reversed");
    assert_eq!(env.balances("spender").await, (0, 0, 20, 20));
    // Again, and the same refund as a new event: nothing more.
    assert_eq!(env.stripe_signed(&full).await, "duplicate");
    let again = event(
        "evt_full_again",
        "charge.refunded",
        refunded_charge("pi_r", 5000),
    );
    assert_eq!(env.stripe_signed(&again).await, "recorded");
    assert_eq!(env.balances("spender").await, (0, 0, 20, 20));
    env.assert_ledger_sound().await;
    // A user who owes starts nothing, and is told why.
    let admin = env.admin_token("ops");
    env.post(
        "/v1/admin/credits",
        &admin,
        &json!({"user_id": "spender", "amount": 30, "reason": "goodwill", "kind": "grant"}),
    )
    .await;
    let (s, refused) = env.submit(&token, "third").await;
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["code"], "credits_owed");
    assert_eq!(refused["error"]["owed"], 20);
    let (_, credits) = env.get("/v1/credits", &token).await;
    assert_eq!(
        (credits["owed"].as_i64(), credits["can_generate"].as_bool()),
        (Some(20), Some(false))
    );
    // An operator waives part; a purchase repays the rest first.
    let (s, waived) = env
        .post(
            "/v1/admin/users/spender/waive",
            &admin,
            &json!({"amount": 5, "reason": "ticket 7"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{waived}");
    assert_eq!(waived["waived"], 5);
    let viewer = env.token_with("viewer", None, Some("viewer"), 600);
    let (s, _) = env
        .post(
            "/v1/admin/users/spender/waive",
            &viewer,
            &json!({"reason": "no"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let rebuy = event(
        "evt_rebuy",
        "checkout.session.completed",
        session("cs_test_r2", Some("spender"), "pi_r2", Some("40"), "paid"),
    );
    assert_eq!(env.stripe_signed(&rebuy).await, "credited");
    assert_eq!(env.balances("spender").await, (55, 0, 20, 0));
    let (s, job) = env.submit(&token, "fourth").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    env.wait_for_status(&token, job["id"].as_str().unwrap(), "succeeded", WAIT)
        .await;
    env.assert_ledger_sound().await;
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn refunds_and_disputes_are_applied_in_whatever_order_they_come() {
    let env = TestEnv::with_settings(stripe_settings()).await;
    // The refund comes before its checkout: kept, then applied with it.
    let refund = event(
        "evt_early_refund",
        "charge.refunded",
        refunded_charge("pi_early", 5000),
    );
    assert_eq!(env.stripe_signed(&refund).await, "recorded");
    let buy = event(
        "evt_late_buy",
        "checkout.session.completed",
        session(
            "cs_test_late",
            Some("early"),
            "pi_early",
            Some("50"),
            "paid",
        ),
    );
    assert_eq!(env.stripe_signed(&buy).await, "credited");
    assert_eq!(env.balances("early").await, (0, 0, 0, 0));
    env.assert_ledger_sound().await;
    // A dispute reverses once, however often it is sent.
    let buy = event(
        "evt_disputed_buy",
        "checkout.session.completed",
        session("cs_test_dp", Some("disputer"), "pi_dp", Some("50"), "paid"),
    );
    assert_eq!(env.stripe_signed(&buy).await, "credited");
    let dispute = |id: &str| {
        event(
            id,
            "charge.dispute.created",
            json!({
                "id": "dp_1", "object": "dispute", "amount": 5000, "charge": "ch_pi_dp",
                "currency": "usd", "payment_intent": "pi_dp", "reason": "fraudulent",
                "status": "needs_response", "is_charge_refundable": false,
            }),
        )
    };
    assert_eq!(env.stripe_signed(&dispute("evt_dp")).await, "reversed");
    assert_eq!(env.stripe_signed(&dispute("evt_dp")).await, "duplicate");
    assert_eq!(env.stripe_signed(&dispute("evt_dp_2")).await, "recorded");
    assert_eq!(env.balances("disputer").await, (0, 0, 0, 0));
    env.assert_ledger_sound().await;
    env.cleanup().await;
}

#[tokio::test]
async fn expiring_credits_are_spent_first_and_expire_only_what_is_free() {
    let mut settings = stripe_settings();
    settings.credits.video_cost = 6;
    settings.worker.sweep_interval_ms = 100;
    let env = TestEnv::with_sim_and_settings(fast_sim(), settings).await;
    let worker = env.spawn_worker().await;
    let admin = env.admin_token("ops");
    let token = env.new_user("lotte", "lotte@example.com").await;
    let grant = |body: Value| {
        let env = &env;
        let admin = admin.clone();
        async move {
            let (s, r) = env.post("/v1/admin/credits", &admin, &body).await;
            assert_eq!(s, StatusCode::OK, "{r}");
        }
    };
    grant(
        json!({"email": "lotte@example.com", "amount": 50, "reason": "bought",
                 "kind": "purchase", "reference": "pay-lotte-1"}),
    )
    .await;
    grant(
        json!({"email": "lotte@example.com", "amount": 10, "reason": "monthly plan",
                 "kind": "grant", "expires_in_secs": 3600}),
    )
    .await;
    let (s, bad) = env
        .post(
            "/v1/admin/credits",
            &admin,
            &json!({"email": "lotte@example.com", "amount": 1, "reason": "x", "kind": "grant",
                    "expires_in_secs": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"]["field"], "expires_in_secs");
    let (_, credits) = env.get("/v1/credits", &token).await;
    assert_eq!(credits["available"], 60);
    assert_eq!(credits["expiring"]["amount"], 10);
    let lots = |env: &TestEnv| {
        let pool = env.pool.clone();
        async move {
            let rows: Vec<(i64, bool)> = sqlx::query_as(
                "SELECT remaining, expires_at IS NOT NULL FROM credit_lots l
                   JOIN users u ON u.id = l.user_id WHERE u.external_id = 'lotte' ORDER BY l.id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };
    // A job takes its 6 credits from the lot that expires.
    let (s, hang) = env.submit(&token, "[sim:hang] holds six credits").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{hang}");
    let hang_id = hang["id"].as_str().unwrap().to_owned();
    env.wait_for_status(&token, &hang_id, "running", WAIT).await;
    assert_eq!(lots(&env).await, [(50, false), (4, true)]);
    env.assert_ledger_sound().await;
    // The lot's time passes: the sweeper expires the 4 it still holds, once,
    // and not the 6 the running job reserved.
    sqlx::query("UPDATE credit_lots SET expires_at = now() - interval '1 second' WHERE expires_at IS NOT NULL")
        .execute(&env.pool)
        .await
        .unwrap();
    let expired = eventually(WAIT, || async {
        let rows: Vec<i64> =
            sqlx::query_scalar("SELECT amount FROM credit_ledger WHERE kind = 'expire'")
                .fetch_all(&env.pool)
                .await
                .unwrap();
        (!rows.is_empty()).then_some(rows)
    })
    .await
    .expect("the sweeper expired the lot");
    assert_eq!(expired, [4]);
    assert_eq!(env.balances("lotte").await, (50, 6, 0, 0));
    assert_eq!(lots(&env).await, [(50, false), (0, true)]);
    // Canceled, the job's 6 go back to their lot, which has expired: they
    // expire at once, recorded; the bought credits are whole.
    let (s, _) = env
        .post(
            &format!("/v1/generations/{hang_id}/cancel"),
            &token,
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(env.balances("lotte").await, (50, 0, 0, 0));
    let expired: Vec<i64> =
        sqlx::query_scalar("SELECT amount FROM credit_ledger WHERE kind = 'expire' ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(expired, [4, 6]);
    // Later jobs take from the bought lot.
    let (s, job) = env.submit(&token, "after the expiry").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    env.wait_for_status(&token, job["id"].as_str().unwrap(), "succeeded", WAIT)
        .await;
    assert_eq!(lots(&env).await, [(44, false), (0, true)]);
    let (_, credits) = env.get("/v1/credits", &token).await;
    assert!(credits.get("expiring").is_none(), "{credits}");
    env.assert_ledger_sound().await;
    worker.stop().await;
    env.cleanup().await;
}

/// Grants landing while submissions reserve: a submission whose statement
/// began before a new lot committed sees its account allow the cost but not
/// the lot; it changes nothing and tries again. No 5xx, and the lots add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_racing_submissions_never_break_the_lots() {
    let env = TestEnv::with_settings(stripe_settings()).await;
    let admin = env.admin_token("ops");
    let token = env.new_user("racer", "racer@example.com").await;
    // One video's credits before the race: whatever the timing, at least
    // one submission reserves (the race alone may see every grant late).
    let (s, r) = env
        .post(
            "/v1/admin/credits",
            &admin,
            &json!({"email": "racer@example.com", "amount": 10, "reason": "before the race",
                    "kind": "grant"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (client, base, admin, token) = (
            env.client.clone(),
            env.base.clone(),
            admin.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let grant = client
                .post(format!("{base}/v1/admin/credits"))
                .bearer_auth(&admin)
                .json(
                    &json!({"email": "racer@example.com", "amount": 10, "reason": "race",
                              "kind": "grant", "expires_in_secs": 3600 + i}),
                )
                .send();
            let submit = client
                .post(format!("{base}/v1/generations"))
                .bearer_auth(&token)
                .json(&json!({"prompt": format!("race {i}")}))
                .send();
            let (g, s) = tokio::join!(grant, submit);
            (g.unwrap().status(), s.unwrap().status())
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        let (g, s) = t.await.unwrap();
        assert_eq!(g, StatusCode::OK);
        assert!(
            s == StatusCode::ACCEPTED || s == StatusCode::PAYMENT_REQUIRED,
            "a submission answered {s}"
        );
        accepted += usize::from(s == StatusCode::ACCEPTED);
    }
    assert!(accepted > 0);
    env.assert_ledger_sound().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_paid_plan_invoice_grants_credits_that_expire_with_its_period() {
    let env = TestEnv::with_settings(stripe_settings()).await;
    let period_end = now() + 30 * 86_400;
    let invoice = |id: &str| {
        event(
            id,
            "invoice.paid",
            json!({
                "id": "in_1PlanB7WZ01zgkW", "object": "invoice", "status": "paid",
                "billing_reason": "subscription_cycle", "customer": "cus_QXg1hqf4jFNsqG",
                "amount_paid": 1500, "currency": "usd", "metadata": {},
                "parent": {"type": "subscription_details", "subscription_details": {
                    "subscription": "sub_1PlanB7WZ01zgkW",
                    "metadata": {"genq_plan_credits": "120", "genq_user": "subscriber",
                                 "genq_plan_max_active": "3", "genq_plan_priority": "true"}}},
                "lines": {"object": "list", "data": [{"id": "il_1", "object": "line_item",
                    "period": {"start": now(), "end": period_end}}]},
                "period_end": now(),
            }),
        )
    };
    assert_eq!(env.stripe_signed(&invoice("evt_inv")).await, "credited");
    assert_eq!(env.stripe_signed(&invoice("evt_inv")).await, "duplicate");
    assert_eq!(
        env.stripe_signed(&invoice("evt_inv_again")).await,
        "duplicate"
    );
    assert_eq!(env.balances("subscriber").await, (120, 0, 0, 0));
    let expires: i64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at)::bigint FROM credit_lots WHERE amount = 120",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(expires, period_end);
    // The plan's limits: 3 at once and high priority, audited as Stripe's.
    let (max_active, priority, by): (Option<i32>, bool, String) = sqlx::query_as(
        "SELECT max_active, priority, updated_by FROM user_limits l JOIN users u ON u.id = l.user_id
          WHERE u.external_id = 'subscriber'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!((max_active, priority), (Some(3), true));
    assert_eq!(by, "stripe:in_1PlanB7WZ01zgkW");
    // Limits that can't be read: not credited, for an operator.
    let unreadable = event(
        "evt_bad_limits",
        "invoice.paid",
        json!({"id": "in_1BadLimits0000", "object": "invoice", "status": "paid",
               "metadata": {"genq_plan_credits": "10", "genq_user": "subscriber", "genq_plan_max_active": "lots"},
               "lines": {"object": "list", "data": [{"id": "il_2", "object": "line_item",
                   "period": {"start": now(), "end": period_end}}]}}),
    );
    assert_eq!(env.stripe_signed(&unreadable).await, "needs_attention");
    // Not a genq plan: ignored.
    let other = event(
        "evt_other_invoice",
        "invoice.paid",
        json!({"id": "in_other", "object": "invoice", "metadata": {}, "lines": {"data": []}}),
    );
    assert_eq!(env.stripe_signed(&other).await, "ignored");
    env.assert_ledger_sound().await;
    env.cleanup().await;
}

/// A stand-in for Stripe's API: a session's line items, for the right key.
async fn fake_stripe_api() -> String {
    use axum::extract::Path;
    use axum::http::HeaderMap;
    async fn items(Path(id): Path<String>, headers: HeaderMap) -> (StatusCode, axum::Json<Value>) {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer rk_test_genq")
        {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": {"type": "invalid_request_error"}})),
            );
        }
        let data = match id.as_str() {
            "cs_test_prices" => json!([
                {"id": "li_1", "object": "item", "price": {"id": "price_1Credits100", "object": "price"}, "quantity": 2},
                {"id": "li_2", "object": "item", "price": {"id": "price_1Credits25", "object": "price"}, "quantity": 1},
            ]),
            _ => {
                json!([{"id": "li_3", "object": "item", "price": {"id": "price_unknown", "object": "price"}, "quantity": 1}])
            }
        };
        (
            StatusCode::OK,
            axum::Json(json!({"object": "list", "data": data, "has_more": false})),
        )
    }
    let app = axum::Router::new().route(
        "/v1/checkout/sessions/{id}/line_items",
        axum::routing::get(items),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// Stripe settings with two prices mapped, reading line items at `api_base`.
fn priced_settings(api_base: String) -> genq_core::config::Settings {
    let mut settings = stripe_settings();
    let stripe = &mut settings.billing.stripe;
    stripe.api_base = api_base;
    stripe.api_key = Some(secrecy::SecretString::from("rk_test_genq"));
    // As the environment gives them: lowercased.
    stripe.prices.insert("price_1credits100".into(), 100);
    stripe.prices.insert("price_1credits25".into(), 25);
    settings
}

#[tokio::test]
async fn mapped_prices_credit_their_line_items_and_an_unknown_price_is_never_guessed() {
    let env = TestEnv::with_settings(priced_settings(fake_stripe_api().await)).await;
    let priced = session("cs_test_prices", Some("pricey"), "pi_prices", None, "paid");
    assert_eq!(
        env.stripe_signed(&event("evt_prices", "checkout.session.completed", priced))
            .await,
        "credited"
    );
    assert_eq!(env.balances("pricey").await, (225, 0, 0, 0));
    let unknown = session(
        "cs_test_unknown",
        Some("pricey"),
        "pi_unknown",
        None,
        "paid",
    );
    assert_eq!(
        env.stripe_signed(&event("evt_unknown", "checkout.session.completed", unknown))
            .await,
        "needs_attention"
    );
    assert_eq!(env.balances("pricey").await, (225, 0, 0, 0));
    env.assert_ledger_sound().await;
    env.cleanup().await;
    // Stripe's API not answering is a 503, so that Stripe sends it again;
    // nothing is recorded meanwhile.
    let env = TestEnv::with_settings(priced_settings("http://127.0.0.1:9".into())).await;
    let priced = session("cs_test_later", Some("patient"), "pi_later", None, "paid");
    let body = event("evt_later", "checkout.session.completed", priced);
    let header = stripe_sign(&[(&body, SECRET, now())]).remove(0);
    let (status, answer) = env.stripe(&body, Some(&header)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(env.events_logged().await, 0);
    env.cleanup().await;
}

/// The operator's side in genqctl: the events and what they did, what a
/// user owes and their lots in the diagnosis, and a waiver.
#[tokio::test]
async fn operators_see_payment_events_debts_and_lots_in_genqctl() {
    use clap::Parser;
    let env = TestEnv::with_sim_and_settings(fast_sim(), stripe_settings()).await;
    let worker = env.spawn_worker().await;
    let ctl = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            let cli = genqctl::Cli::try_parse_from(
                std::iter::once("genqctl").chain(args.iter().copied()),
            )
            .expect("valid arguments");
            genqctl::execute(&cli, &env.settings, &env.pool)
                .await
                .expect("command runs")
        }
    };
    let buy = event(
        "evt_ctl_buy",
        "checkout.session.completed",
        session(
            "cs_test_ctl",
            Some("ctl-user"),
            "pi_ctl",
            Some("50"),
            "paid",
        ),
    );
    assert_eq!(env.stripe_signed(&buy).await, "credited");
    let no_user = event(
        "evt_ctl_nobody",
        "checkout.session.completed",
        session(
            "cs_test_ctl_nobody",
            None,
            "pi_ctl_nobody",
            Some("50"),
            "paid",
        ),
    );
    assert_eq!(env.stripe_signed(&no_user).await, "needs_attention");
    let listed = ctl(&["billing", "events", "--attention"]).await;
    assert_eq!(listed.code, 0);
    assert!(
        listed.output.contains("evt_ctl_nobody") && !listed.output.contains("evt_ctl_buy"),
        "{}",
        listed.output
    );
    assert!(
        listed.output.contains("1 needing attention"),
        "{}",
        listed.output
    );
    // Everything spent, then refunded in full: 50 owed.
    let token = env.token("ctl-user", None);
    for i in 0..5 {
        let (s, job) = env.submit(&token, &format!("spend {i}")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{job}");
        env.wait_for_status(&token, job["id"].as_str().unwrap(), "succeeded", WAIT)
            .await;
    }
    let refund = event(
        "evt_ctl_refund",
        "charge.refunded",
        refunded_charge("pi_ctl", 5000),
    );
    assert_eq!(env.stripe_signed(&refund).await, "reversed");
    let diagnosis = ctl(&["diagnose", "--user", "ctl-user"]).await;
    assert!(
        diagnosis.output.contains("OWED      50 credits"),
        "{}",
        diagnosis.output
    );
    assert!(diagnosis.output.contains("LOTS"), "{}", diagnosis.output);
    let waived = ctl(&[
        "credits", "waive", "--user", "ctl-user", "--reason", "goodwill",
    ])
    .await;
    assert_eq!(waived.code, 0, "{}", waived.output);
    assert!(waived.output.contains("Waived 50"), "{}", waived.output);
    assert_eq!(env.balances("ctl-user").await, (0, 0, 50, 0));
    env.assert_ledger_sound().await;
    worker.stop().await;
    env.cleanup().await;
}
