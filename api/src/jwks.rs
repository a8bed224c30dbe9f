//! The identity provider's signing keys (`auth.jwks_url`): fetched, cached
//! for as long as the provider's `Cache-Control` says (bounded), refreshed in
//! the background, and refetched for an unknown `kid` at most once per
//! `auth.jwks_min_refetch_secs`, so a flood of made-up `kid`s can't make genq
//! hammer the provider. A failed fetch keeps the keys it had.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

/// The largest key set read, in bytes, and the most keys kept from it.
const MAX_BODY_BYTES: usize = 256 * 1024;
const MAX_KEYS: usize = 64;
/// Bounds on how long a fetched set is used before the next refresh,
/// whatever the provider's `max-age` says; absent, an hour.
const MIN_MAX_AGE: Duration = Duration::from_secs(60);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// After a failed background fetch, the next try.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key: the only algorithm it verifies.
#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    algorithm: Algorithm,
}

/// The key set of one identity provider.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<HashMap<String, Key>>,
    /// When the set was last fetched (or tried); the lock also makes
    /// fetches one at a time.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refetch: Duration,
}

/// Why no key verifies a token.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    /// No key with this `kid`, even after a refetch (or a refetch was not
    /// allowed yet).
    UnknownKid,
    /// The key exists but is for another algorithm (algorithm confusion).
    WrongAlgorithm,
}

impl Jwks {
    pub fn new(url: &str, min_refetch: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            url: url.trim().to_owned(),
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::limited(3))
                .build()?,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
            min_refetch,
        })
    }

    /// The key that verifies a token with this `kid` and `alg`. An unknown
    /// `kid` refetches the set, unless it was fetched less than
    /// `min_refetch` ago.
    pub async fn key(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeyError> {
        if self.lookup(kid).is_none() {
            let mut last = self.last_fetch.lock().await;
            let recent = last.is_some_and(|t| t.elapsed() < self.min_refetch);
            // Another caller may have fetched while this one waited.
            if !recent && self.lookup(kid).is_none() {
                *last = Some(Instant::now());
                if let Err(e) = self.fetch().await {
                    tracing::warn!(error = %e, url = %self.url, "fetching the identity provider's keys failed; the cached ones stay in use");
                }
            }
        }
        let key = self.lookup(kid).ok_or(KeyError::UnknownKid)?;
        if key.algorithm != alg {
            return Err(KeyError::WrongAlgorithm);
        }
        Ok(key.decoding)
    }

    fn lookup(&self, kid: &str) -> Option<Key> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(kid)
            .cloned()
    }

    /// Keeps the set fresh until `shutdown`: fetched at once, then again
    /// when the provider's `max-age` runs out (sooner after a failure).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let wait = {
                let mut last = self.last_fetch.lock().await;
                *last = Some(Instant::now());
                match self.fetch().await {
                    Ok(max_age) => max_age,
                    Err(e) => {
                        tracing::warn!(error = %e, url = %self.url, "fetching the identity provider's keys failed; the cached ones stay in use");
                        RETRY_AFTER_FAILURE
                    }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Fetches the set and replaces the cached keys with it; returns how
    /// long it may be used.
    async fn fetch(&self) -> anyhow::Result<Duration> {
        metrics::counter!("genq_jwks_fetches_total").increment(1);
        let response = self.http.get(&self.url).send().await?;
        if !response.status().is_success() {
            anyhow::bail!("the JWKS URL answered HTTP {}", response.status());
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .map_or(DEFAULT_MAX_AGE, |d| d.clamp(MIN_MAX_AGE, MAX_MAX_AGE));
        let body =
            genq_core::outbound::read_limited(response, MAX_BODY_BYTES, "the key set").await?;
        let keys = parse_key_set(&body)?;
        tracing::info!(keys = keys.len(), url = %self.url, "identity provider keys fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(max_age)
    }
}

/// `max-age=N` of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control.split(',').find_map(|d| {
        let (name, value) = d.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

/// The signing keys of a JWKS document, by `kid`. A key without a `kid`,
/// for encryption, of a kind genq can't use, or not parseable is skipped
/// (one odd key must not take the others down).
fn parse_key_set(body: &[u8]) -> anyhow::Result<HashMap<String, Key>> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| anyhow::anyhow!("the key set is not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (Some(algorithm), Ok(decoding)) = (algorithm_of(&jwk), DecodingKey::from_jwk(&jwk))
        else {
            continue;
        };
        keys.insert(
            kid,
            Key {
                decoding,
                algorithm,
            },
        );
    }
    Ok(keys)
}

/// The one algorithm a key verifies: its `alg` if it names one, else the
/// usual one for its type and curve. Never an HMAC algorithm: a public key
/// is not a shared secret.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let named = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(_) => return None,
        None => None,
    };
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            named.map_or(Some(Algorithm::RS256), |a| is_rsa(a).then_some(a))
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let fits = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            };
            named.map_or(Some(fits), |a| (a == fits).then_some(a))
        }
        AlgorithmParameters::OctetKeyPair(p) => (p.curve == EllipticCurve::Ed25519
            && named.is_none_or(|a| a == Algorithm::EdDSA))
        .then_some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => None,
    }
}

fn is_rsa(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=600, must-revalidate"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn symmetric_and_encryption_keys_are_skipped() {
        let set = br#"{"keys": [
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw", "e": "AQAB"},
            {"kty": "RSA", "n": "0vx7", "e": "AQAB"},
            {"kty": "weird", "kid": "w"}
        ]}"#;
        assert!(parse_key_set(set).unwrap().is_empty());
        assert!(parse_key_set(b"[]").is_err());
    }
}
