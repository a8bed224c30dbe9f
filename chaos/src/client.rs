//! The load-generating HTTP client: tokens, the users and their funding, the
//! paced submissions (with duplicated idempotency keys and cancels), and what
//! the client saw for each of them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use genq_api::auth::{Claims, ADMIN_ROLE};
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::report::Figures;
use crate::system::{jwt_secret, VIDEO_COST};
use crate::Plan;

/// A day-long token of the run's secret.
pub fn token(sub: &str, email: Option<&str>, admin: bool) -> String {
    Claims::new(sub, 24 * 3600)
        .email(email)
        .email_verified(email.is_some())
        .role(admin.then_some(ADMIN_ROLE))
        .mint(jwt_secret().as_bytes())
        .expect("token")
}

/// What the client saw for one logical submission.
#[derive(Debug, Clone)]
pub enum Seen {
    Accepted(Uuid),
    Refused {
        required: i64,
        available: i64,
        job: Uuid,
    },
    Other(u16),
    GaveUp,
}

/// Everything the load saw, shared by its tasks and read by the checks.
#[derive(Clone, Default)]
pub struct Observations {
    /// Each logical submission: the user's subject and its (first) answer.
    pub outcomes: Arc<Mutex<Vec<(String, Seen)>>>,
    /// Both answers of each submission sent twice at once with one key.
    pub pairs: Arc<Mutex<Vec<(Seen, Seen)>>>,
}

pub struct Client {
    pub http: reqwest::Client,
    /// Every API process; requests go round-robin, as a load balancer's would.
    pub bases: Vec<String>,
    pub next: std::sync::atomic::AtomicUsize,
    pub figures: Arc<Figures>,
}

impl Client {
    /// Sends a request, retrying (bounded, same body and headers) while the
    /// API is unreachable or answers 5xx: what a careful front end does.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Option<(u16, Value)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut delay = Duration::from_millis(100);
        loop {
            let base = &self.bases[self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len()];
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            match req.send().await {
                Ok(r) if !r.status().is_server_error() => {
                    let status = r.status().as_u16();
                    let v = r.json::<Value>().await.unwrap_or(Value::Null);
                    return Some((status, v));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return None;
            }
            self.figures.client_retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn submit(&self, token: &str, prompt: &str, key: &str) -> Seen {
        self.figures.submissions.fetch_add(1, Ordering::Relaxed);
        let Some((status, v)) = self
            .send(
                reqwest::Method::POST,
                "/v1/generations",
                token,
                Some(&json!({"prompt": prompt})),
                Some(key),
            )
            .await
        else {
            self.figures.gave_up.fetch_add(1, Ordering::Relaxed);
            return Seen::GaveUp;
        };
        let id = |v: &Value| {
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .unwrap_or_default()
        };
        match status {
            202 => {
                self.figures.accepted.fetch_add(1, Ordering::Relaxed);
                Seen::Accepted(id(&v["id"]))
            }
            402 => {
                self.figures.refused_402.fetch_add(1, Ordering::Relaxed);
                Seen::Refused {
                    required: v["error"]["required"].as_i64().unwrap_or(-1),
                    available: v["error"]["available"].as_i64().unwrap_or(i64::MAX),
                    job: id(&v["error"]["job_id"]),
                }
            }
            other => Seen::Other(other),
        }
    }

    /// Cancels an accepted job after a random short wait (so some cancels
    /// meet queued jobs and some running ones).
    async fn cancel_soon(&self, token: &str, id: &Uuid) {
        let wait = rand::rng().random_range(0..1_500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        self.figures.cancels_sent.fetch_add(1, Ordering::Relaxed);
        if let Some((200, _)) = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/generations/{id}/cancel"),
                token,
                Some(&json!({})),
                None,
            )
            .await
        {
            self.figures.cancels_ok.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Creates the users at mixed credit levels: none, exactly one video,
/// several videos. Returns what each was funded with, for the balance checks.
pub async fn create_users(client: &Client, users: usize) -> anyhow::Result<HashMap<String, i64>> {
    let admin = token("chaos-admin", None, true);
    let mut funding: HashMap<String, i64> = HashMap::new();
    for u in 0..users {
        let sub = format!("chaos-user-{u}");
        let email = format!("{sub}@example.com");
        let t = token(&sub, Some(&email), false);
        client
            .send(reqwest::Method::GET, "/v1/credits", &t, None, None)
            .await
            .context("creating a user")?;
        let amount = match u % 3 {
            0 => 0,
            1 => VIDEO_COST,
            _ => VIDEO_COST * rand::rng().random_range(5..=40),
        };
        if amount > 0 {
            let body = json!({"email": email, "amount": amount, "reason": "chaos funding", "kind": "grant"});
            let (s, v) = client
                .send(
                    reqwest::Method::POST,
                    "/v1/admin/credits",
                    &admin,
                    Some(&body),
                    None,
                )
                .await
                .context("funding")?;
            anyhow::ensure!(s == 200, "funding failed: {s} {v}");
        }
        funding.insert(sub, amount);
    }
    Ok(funding)
}

/// The random choices for one submission.
struct Draw {
    user: usize,
    /// Asks the simulator for a failure, a hang, a 5xx or a 429 on this job.
    marker: &'static str,
    /// Send it twice at once with the same Idempotency-Key.
    double: bool,
    /// Cancel it once accepted.
    cancel: bool,
}

fn draw(users: usize) -> Draw {
    let mut r = rand::rng();
    let marker = match r.random_range(0..100) {
        0..=1 => " [sim:fail]",
        2 => " [sim:hang]",
        3..=4 => " [sim:5xx]",
        5..=6 => " [sim:429]",
        _ => "",
    };
    Draw {
        user: r.random_range(0..users),
        marker,
        double: r.random_bool(0.1),
        cancel: r.random_bool(0.05),
    }
}

/// Starts the load in the background: the plan's jobs at its rate, at most
/// its concurrency in flight, recording what was seen into `seen`.
pub fn spawn_load(client: Arc<Client>, plan: &Plan, seen: Observations) -> JoinHandle<()> {
    let (jobs, users, concurrency, rate) = (plan.jobs, plan.users, plan.concurrency, plan.rate);
    tokio::spawn(async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        let t0 = Instant::now();
        for i in 0..jobs {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let permit = limit.clone().acquire_owned().await.expect("open");
            let (client, seen) = (client.clone(), seen.clone());
            let draw = draw(users);
            tasks.spawn(async move {
                submission(&client, &seen, i, draw).await;
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// One logical submission: sent (once or twice with one key), maybe
/// cancelled, and what it got recorded.
async fn submission(client: &Client, seen: &Observations, i: usize, draw: Draw) {
    let sub = format!("chaos-user-{}", draw.user);
    let t = token(&sub, Some(&format!("{sub}@example.com")), false);
    let key = format!("chaos-{i}");
    let prompt = format!("chaos video {i}{}", draw.marker);
    let answer = if draw.double {
        client
            .figures
            .duplicate_key_requests
            .fetch_add(1, Ordering::Relaxed);
        let (a, b) = tokio::join!(
            client.submit(&t, &prompt, &key),
            client.submit(&t, &prompt, &key)
        );
        seen.pairs.lock().unwrap().push((a.clone(), b));
        a
    } else {
        client.submit(&t, &prompt, &key).await
    };
    if let (true, Seen::Accepted(id)) = (draw.cancel, &answer) {
        client.cancel_soon(&t, id).await;
    }
    seen.outcomes.lock().unwrap().push((sub, answer));
}
