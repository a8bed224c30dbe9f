//! fal's webhook signing keys (`provider.fal_jwks_url`): ED25519 public keys
//! from its JWKS, fetched when first needed and again when a signature does
//! not verify, at most once per [`MIN_REFETCH`] (so forged callbacks can't
//! make genq hammer fal), cached for at most a day. A failed fetch keeps the
//! keys it had.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};

const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_KEYS: usize = 16;
const MIN_REFETCH: Duration = Duration::from_secs(300);
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct FalKeys {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Vec<VerifyingKey>>,
    /// When the set was last fetched (or tried); the lock also makes
    /// fetches one at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl FalKeys {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.trim().to_owned(),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            keys: RwLock::new(Vec::new()),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    fn any_verifies(&self, message: &[u8], signature: &Signature) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|k| k.verify_strict(message, signature).is_ok())
    }

    /// Whether one of fal's keys signed `message`; fetches the keys when
    /// they are missing, old, or (rate-limited) when none verifies.
    pub async fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        if self.any_verifies(message, signature) && !self.stale().await {
            return true;
        }
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return self.any_verifies(message, signature);
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(error = %e, url = %self.url, "fal's webhook keys could not be fetched");
        }
        self.any_verifies(message, signature)
    }

    async fn stale(&self) -> bool {
        self.last_fetch
            .lock()
            .await
            .is_none_or(|at| at.elapsed() > MAX_AGE)
    }

    async fn fetch(&self) -> anyhow::Result<()> {
        let response = self.http.get(&self.url).send().await?;
        if !response.status().is_success() {
            anyhow::bail!("the JWKS URL answered HTTP {}", response.status());
        }
        let body =
            genq_core::outbound::read_limited(response, MAX_BODY_BYTES, "fal's key set").await?;
        let keys = parse(&body)?;
        tracing::info!(keys = keys.len(), "fal's webhook keys fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }
}

/// The Ed25519 keys (`kty` OKP, `crv` Ed25519, `x` base64url) of a JWKS.
fn parse(body: &[u8]) -> anyhow::Result<Vec<VerifyingKey>> {
    let set: serde_json::Value = serde_json::from_slice(body)?;
    let keys: Vec<VerifyingKey> = set["keys"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
        .filter_map(|k| URL_SAFE_NO_PAD.decode(k["x"].as_str()?).ok())
        .filter_map(|x| VerifyingKey::from_bytes(&x.try_into().ok()?).ok())
        .take(MAX_KEYS)
        .collect();
    if keys.is_empty() {
        anyhow::bail!("the key set has no Ed25519 key");
    }
    Ok(keys)
}
