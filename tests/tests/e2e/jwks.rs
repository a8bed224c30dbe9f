//! Tokens from a real identity provider: keys made and tokens signed by a
//! real JOSE library (npm `jose`, `tests/jose`), the key set served by a
//! local HTTP server as a provider serves its JWKS.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{eventually, test_settings, TestEnv};
use axum::http::{header, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "https://api.genq.example";
/// A namespaced role claim, as Auth0 requires for custom claims.
const ROLE_CLAIM: &str = "https://genq.example/role";

/// The jose helper: keys once per test, tokens in batches.
struct Jose {
    keys: Value,
}

fn node(args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/jose");
    assert!(
        std::path::Path::new(dir).join("node_modules/jose").exists(),
        "the jose library is missing from {dir}: run scripts/web.sh deps (scripts/test.sh does)"
    );
    let mut child = std::process::Command::new("node")
        .arg("jose.mjs")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("jose.mjs ends");
    assert!(out.status.success(), "jose.mjs {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

impl Jose {
    fn new() -> Self {
        Self {
            keys: serde_json::from_str(&node(&["keys"], None)).unwrap(),
        }
    }

    fn public(&self, kid: &str) -> Value {
        self.keys["public"][kid].clone()
    }

    /// Signs each `(kid of the signing key, kid in the header, claims)`.
    fn sign(&self, requests: &[(&str, Option<&str>, Value)]) -> Vec<String> {
        let list: Vec<Value> = requests
            .iter()
            .map(|(key, kid, claims)| {
                let jwk = &self.keys["private"][*key];
                json!({"jwk": jwk, "alg": jwk["alg"], "kid": kid, "claims": claims})
            })
            .collect();
        serde_json::from_str(&node(&["sign"], Some(&Value::from(list).to_string()))).unwrap()
    }

    fn one(&self, key: &str, claims: Value) -> String {
        self.sign(&[(key, Some(key), claims)]).remove(0)
    }

    /// HS256 keyed with the text of `kid`'s public key (algorithm confusion).
    fn confused(&self, kid: &str, claims: Value) -> String {
        let list = json!([{"hmac_with_pem_of": self.public(kid), "alg": "HS256", "kid": kid, "claims": claims}]);
        let tokens: Vec<String> =
            serde_json::from_str(&node(&["sign"], Some(&list.to_string()))).unwrap();
        tokens.into_iter().next().unwrap()
    }
}

/// The identity provider's JWKS endpoint: its keys can change, it can go
/// down, and it counts the fetches.
#[derive(Clone, Default)]
struct Provider {
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(keys: Vec<Value>) -> (Self, String) {
        let provider = Self {
            keys: Arc::new(Mutex::new(keys)),
            ..Default::default()
        };
        let p = provider.clone();
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let p = p.clone();
                async move {
                    p.fetches.fetch_add(1, Ordering::SeqCst);
                    if p.down.load(Ordering::SeqCst) {
                        return AxumStatus::SERVICE_UNAVAILABLE.into_response();
                    }
                    let keys = p.keys.lock().unwrap().clone();
                    (
                        [(header::CACHE_CONTROL, "public, max-age=600")],
                        axum::Json(json!({ "keys": keys })),
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://127.0.0.1:{}/.well-known/jwks.json",
            listener.local_addr().unwrap().port()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (provider, url)
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims as the provider issues them, for `sub`.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

async fn env_for(url: &str, min_refetch_secs: u64) -> TestEnv {
    let mut settings = test_settings();
    settings.auth.jwks_url = url.into();
    settings.auth.issuer = ISSUER.into();
    settings.auth.audience = format!("other-api, {AUDIENCE}");
    settings.auth.role_claim = format!("/{}", ROLE_CLAIM.replace('~', "~0").replace('/', "~1"));
    settings.auth.jwks_min_refetch_secs = min_refetch_secs;
    TestEnv::with_settings(settings).await
}

async fn status_of(env: &TestEnv, path: &str, token: &str) -> (StatusCode, String) {
    let (s, body) = env.get(path, token).await;
    (
        s,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn identity_provider_tokens_are_verified_against_its_keys() {
    let jose = Jose::new();
    let (provider, url) = Provider::start(vec![
        jose.public("rsa-1"),
        jose.public("ec-1"),
        jose.public("ed-1"),
    ])
    .await;
    let env = env_for(&url, 30).await;

    // RS256, ES256 and EdDSA from the provider's keys are accepted.
    for key in ["rsa-1", "ec-1", "ed-1"] {
        let token = jose.one(key, claims(&format!("idp|{key}")));
        let (s, why) = status_of(&env, "/v1/credits", &token).await;
        assert_eq!(s, StatusCode::OK, "{key}: {why}");
    }
    // The role comes from the namespaced claim.
    let admin = jose.one(
        "rsa-1",
        with(claims("idp|olga"), json!({ ROLE_CLAIM: "admin" })),
    );
    assert_eq!(
        status_of(&env, "/v1/admin/system", &admin).await.0,
        StatusCode::OK
    );
    let top_level = jose.one("rsa-1", with(claims("idp|eve"), json!({"role": "admin"})));
    assert_eq!(
        status_of(&env, "/v1/admin/system", &top_level).await.0,
        StatusCode::FORBIDDEN,
        "only the configured claim gives a role"
    );

    // Each refusal is a 401 that says why.
    let refused = [
        (
            "wrong audience",
            jose.one("rsa-1", with(claims("a"), json!({"aud": "someone-else"}))),
            "audience",
        ),
        (
            "wrong issuer",
            jose.one(
                "rsa-1",
                with(claims("a"), json!({"iss": "https://evil.example/"})),
            ),
            "issuer",
        ),
        (
            "expired",
            jose.one("ec-1", with(claims("a"), json!({"exp": now() - 120}))),
            "expired",
        ),
        (
            "not yet valid",
            jose.one("ec-1", with(claims("a"), json!({"nbf": now() + 600}))),
            "not valid yet",
        ),
        (
            "no aud",
            jose.one(
                "rsa-1",
                json!({"sub": "a", "iss": ISSUER, "exp": now() + 600}),
            ),
            "required claim",
        ),
        ("unknown kid", jose.one("rsa-2", claims("a")), "signing key"),
        (
            "no kid",
            jose.sign(&[("rsa-1", None, claims("a"))]).remove(0),
            "kid",
        ),
        // Signed by rsa-1 but naming ec-1's kid: ec-1 verifies ES256 only.
        (
            "another key's kid",
            jose.sign(&[("rsa-1", Some("ec-1"), claims("a"))]).remove(0),
            "algorithm",
        ),
        (
            "algorithm confusion",
            jose.confused("rsa-1", with(claims("a"), json!({ ROLE_CLAIM: "admin" }))),
            "signature",
        ),
        (
            "genq's own secret",
            env.admin_token("a"),
            "identity provider",
        ),
    ];
    for (what, token, says) in refused {
        let (s, why) = status_of(&env, "/v1/credits", &token).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{what}: {why}");
        assert!(why.contains(says), "{what}: {why}");
    }

    // genq's own stream tokens still work, minted from a provider's token.
    let user = jose.one("ed-1", claims("idp|streamer"));
    let (s, body) = env.post("/v1/stream-tokens", &user, &json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let stream = body["token"].as_str().unwrap();
    let r = env
        .client
        .get(format!("{}/v1/events?access_token={stream}", env.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    drop(r);

    // An email counts only when the provider verified it.
    let unverified = jose.one(
        "rsa-1",
        with(
            claims("idp|claims-email"),
            json!({"email": "ceo@genq.example"}),
        ),
    );
    let verified = jose.one(
        "rsa-1",
        with(
            claims("idp|real"),
            json!({"email": "real@genq.example", "email_verified": true}),
        ),
    );
    for t in [&unverified, &verified] {
        assert_eq!(status_of(&env, "/v1/credits", t).await.0, StatusCode::OK);
    }
    let grant = |email: &str| json!({"email": email, "amount": 5, "reason": "r", "kind": "grant"});
    let (s, body) = env
        .post("/v1/admin/credits", &admin, &grant("ceo@genq.example"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert!(body.to_string().contains("name the user by ID"), "{body}");
    let (s, body) = env
        .post("/v1/admin/credits", &admin, &grant("real@genq.example"))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(provider.fetches() >= 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_the_keys_a_handful_of_times_and_an_outage_keeps_the_cache()
{
    let jose = Jose::new();
    let (provider, url) = Provider::start(vec![jose.public("rsa-1")]).await;
    let env = env_for(&url, 30).await;
    let known = jose.one("rsa-1", claims("idp|steady"));
    assert_eq!(
        status_of(&env, "/v1/credits", &known).await.0,
        StatusCode::OK
    );
    let before = provider.fetches();

    let kids: Vec<String> = (0..30).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    let requests: Vec<(&str, Option<&str>, Value)> = kids
        .iter()
        .map(|kid| ("rsa-1", Some(kid.as_str()), claims("idp|flood")))
        .collect();
    for token in jose.sign(&requests) {
        assert_eq!(
            status_of(&env, "/v1/credits", &token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let during = provider.fetches() - before;
    assert!(
        during <= 1,
        "30 unknown kids fetched the key set {during} times"
    );

    // The provider goes down: the keys it served keep working.
    provider.down.store(true, Ordering::SeqCst);
    let again = jose.one("rsa-1", claims("idp|steady"));
    assert_eq!(
        status_of(&env, "/v1/credits", &again).await.0,
        StatusCode::OK
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_rotated_key_is_accepted_within_the_refetch_interval() {
    let jose = Jose::new();
    let (provider, url) = Provider::start(vec![jose.public("rsa-1")]).await;
    let env = env_for(&url, 1).await;
    let old = jose.one("rsa-1", claims("idp|rotating"));
    assert_eq!(status_of(&env, "/v1/credits", &old).await.0, StatusCode::OK);

    // The provider publishes its next key beside the current one.
    provider.keys.lock().unwrap().push(jose.public("rsa-2"));
    let new = jose.one("rsa-2", claims("idp|rotating"));
    let accepted = eventually(Duration::from_secs(10), || async {
        (status_of(&env, "/v1/credits", &new).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(accepted.is_some(), "the new key was never accepted");
    env.cleanup().await;
}

#[test]
fn identity_provider_settings_are_checked_at_load() {
    let mut s = test_settings();
    s.auth.jwks_url = "http://idp.example.com/jwks.json".into();
    s.auth.issuer = ISSUER.into();
    s.auth.audience = AUDIENCE.into();
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("auth.jwks_url"));
    s.auth.jwks_url = "https://idp.example.com/jwks.json".into();
    assert!(s.validate().is_ok());
    s.auth.audience = " , ".into();
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("auth.audience"));
    s.auth.audience = AUDIENCE.into();
    s.auth.issuer = String::new();
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("auth.issuer"));
}
