//! The simulator calling back: when a task given a callback URL ends, a POST
//! of the dialect's own body to that URL (Replicate's signed the Standard
//! Webhooks way with `--webhook-secret`, fal's with an ED25519 key), with
//! the faults of a real provider's callbacks: dropped, duplicated, delayed,
//! out of order, forged, or one sent before the submit is even answered.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::{Dialect, Phase, Sim, View};

/// How the simulator calls back (all off by default).
#[derive(Debug, Clone, Default)]
pub struct CallbackFaults {
    /// Call back at all (for tasks whose submit named a callback URL).
    pub enabled: bool,
    /// Share of callbacks never sent.
    pub drop_rate: f64,
    /// Send every callback twice.
    pub duplicate: bool,
    /// Wait this long after the task ends before calling back.
    pub delay: Duration,
    /// Before each real callback, send one with a wrong token (or, for
    /// Replicate with a secret, a wrong signature).
    pub forge: bool,
    /// Call back once while the task is still working, before the submit's
    /// answer is sent.
    pub early: bool,
    /// After each real callback, send a stale one (the task still running):
    /// callbacks out of order.
    pub reorder: bool,
    /// Replicate's signing secret (`whsec_…`); unsigned without it.
    pub webhook_secret: Option<String>,
}

/// The callback URL a submit named, as the dialect stored it.
fn url_of(t: &View) -> Option<String> {
    t.meta["callback_url"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

impl Sim {
    /// After a dialect created task `id`: the early callback (awaited, so it
    /// arrives before the submit's answer), and the one when it ends.
    pub(crate) async fn created(self: &Arc<Self>, id: &str) {
        let faults = &self.config.callbacks;
        if !faults.enabled {
            return;
        }
        let Some(view) = self.view(id) else { return };
        let Some(url) = url_of(&view) else { return };
        if faults.early {
            self.send(&url, &view, false).await;
        }
        let sim = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move { sim.call_back_when_done(id, url).await });
    }

    async fn call_back_when_done(self: Arc<Self>, id: String, url: String) {
        let ends_at = {
            let tasks = self.tasks.lock().expect("sim lock");
            let Some(task) = tasks.by_id.get(&id) else {
                return;
            };
            task.ready_at(self.config.generation)
        };
        // One sleep per task (a hundred thousand in flight are a hundred
        // thousand timers, not wake-ups); a task canceled earlier is
        // reported then too.
        tokio::time::sleep_until(ends_at.into()).await;
        let Some(view) = self.view(&id) else { return };
        if !view.phase.is_terminal() {
            // Hangs and unknown words never end: no callback.
            return;
        }
        tokio::time::sleep(self.config.callbacks.delay).await;
        let view = self.view(&id).unwrap_or(view);
        self.deliver(&url, &view).await;
    }

    async fn deliver(&self, url: &str, view: &View) {
        let faults = &self.config.callbacks;
        if rand::rng().random_bool(faults.drop_rate.clamp(0.0, 1.0)) {
            self.stats.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if faults.forge {
            self.send(url, view, true).await;
        }
        self.send(url, view, false).await;
        if faults.duplicate {
            self.send(url, view, false).await;
        }
        if faults.reorder {
            let stale = View {
                phase: Phase::Running { progress: 0.5 },
                video_url: None,
                ..view.clone()
            };
            self.send(url, &stale, false).await;
        }
    }

    /// One POST; `forged` spoils the token (or Replicate's signature).
    async fn send(&self, url: &str, view: &View, forged: bool) {
        let body = serde_json::to_vec(&self.callback_body(view)).expect("serializes");
        let secret = self
            .config
            .callbacks
            .webhook_secret
            .as_deref()
            .filter(|_| self.config.dialect == Dialect::Replicate);
        let fal = self.config.dialect == Dialect::Fal;
        // Where the provider signs, a forgery has a bad signature (and a
        // good token); elsewhere, a wrong token.
        let url = if forged && secret.is_none() && !fal {
            spoil_token(url)
        } else {
            url.to_owned()
        };
        let mut request = self
            .callback_client
            .post(&url)
            .header("content-type", "application/json");
        if let Some(secret) = secret {
            let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
            let ts = chrono::Utc::now().timestamp();
            let mut sig = sign(secret, &id, ts, &body);
            if forged {
                sig = format!("v1,{}", BASE64.encode([0u8; 32]));
            }
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig);
        }
        if fal {
            use ed25519_dalek::Signer;
            use sha2::Digest;
            let ts = chrono::Utc::now().timestamp().to_string();
            let message = format!(
                "{}\n{FAL_USER}\n{ts}\n{}",
                view.id,
                hex::encode(Sha256::digest(&body))
            );
            let mut signature = self.fal_key.sign(message.as_bytes()).to_bytes();
            if forged {
                signature[0] ^= 0xff;
            }
            request = request
                .header("x-fal-webhook-request-id", &view.id)
                .header("x-fal-webhook-user-id", FAL_USER)
                .header("x-fal-webhook-timestamp", ts)
                .header("x-fal-webhook-signature", hex::encode(signature));
        }
        let counter = if forged {
            &self.stats.callbacks_forged
        } else {
            &self.stats.callbacks_sent
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match request.body(body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                self.stats.callbacks_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(status = %r.status(), forged, "callback refused");
            }
            Err(e) => {
                self.stats.callbacks_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "callback failed");
            }
        }
    }

    /// What the dialect's provider posts: its task as its status call shows it.
    fn callback_body(&self, t: &View) -> Value {
        match self.config.dialect {
            Dialect::Replicate => crate::replicate::prediction(self, t),
            Dialect::Kling => crate::kling::task(t),
            Dialect::Luma => crate::luma::generation(t),
            Dialect::Seedance => crate::seedance::task(t),
            Dialect::Fal => {
                let ok = t.phase == Phase::Succeeded;
                json!({
                    "request_id": t.id,
                    "gateway_request_id": t.id,
                    "status": if ok { "OK" } else { "ERROR" },
                    "payload": if ok { json!({"video": {"url": t.video_url}}) } else { Value::Null },
                    "error": if ok { Value::Null } else { json!("the request failed (simulated)") },
                })
            }
            _ => json!({"id": t.id}),
        }
    }
}

/// The account fal's signed callbacks name.
const FAL_USER: &str = "sim-user";

/// fal's key set: the simulator's signing key, as fal publishes its own.
pub(crate) async fn jwks(
    axum::extract::State(sim): axum::extract::State<Arc<Sim>>,
) -> axum::Json<Value> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let x = URL_SAFE_NO_PAD.encode(sim.fal_key.verifying_key().to_bytes());
    axum::Json(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig"}]}))
}

/// The URL with its `token` parameter replaced by a wrong one.
fn spoil_token(url: &str) -> String {
    match url.find("token=") {
        Some(at) => format!(
            "{}token=forged-{}",
            &url[..at],
            uuid::Uuid::new_v4().simple()
        ),
        None => format!("{url}&token=forged"),
    }
}

/// A Standard Webhooks `v1` signature with a `whsec_` secret.
fn sign(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = BASE64
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}
