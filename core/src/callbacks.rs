//! Provider callbacks: which provider kinds call back, the callback URL a
//! submit hands the provider (with a per-job token, an HMAC of the job's
//! identity under `provider.callback_secret`), and the checks a callback
//! must pass (the token, compared in constant time; Replicate's Standard
//! Webhooks signature). A callback that passes only wakes the job's poll.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD};
use base64::Engine;

use crate::config::ProviderKind;
use crate::webhooks::Secret;

/// A Standard Webhooks timestamp further than this from now is refused
/// (a replay of an old callback).
pub const TOLERANCE_SECS: i64 = 300;

/// The longest token and signature header a callback may carry.
pub const TOKEN_MAX: usize = 128;
pub const SIGNATURE_HEADER_MAX: usize = 1024;

/// Where fal publishes its webhook signing keys.
pub const FAL_JWKS_URL: &str = "https://rest.alpha.fal.ai/.well-known/jwks.json";

/// The headers of a fal callback's signature.
pub const FAL_REQUEST_ID: &str = "x-fal-webhook-request-id";
pub const FAL_USER_ID: &str = "x-fal-webhook-user-id";
pub const FAL_TIMESTAMP: &str = "x-fal-webhook-timestamp";
pub const FAL_SIGNATURE: &str = "x-fal-webhook-signature";

/// What fal signs (ED25519): the request ID, the user ID, the timestamp and
/// the hex SHA-256 of the body, one per line; `None` when a header is
/// missing, too long, or the timestamp is not within [`TOLERANCE_SECS`].
pub fn fal_message(
    request_id: &str,
    user_id: &str,
    timestamp: &str,
    body: &[u8],
    now: i64,
) -> Option<Vec<u8>> {
    use sha2::Digest;
    let plain = |s: &str| !s.is_empty() && s.len() <= 256;
    if !plain(request_id) || !plain(user_id) {
        return None;
    }
    let ts: i64 = timestamp.parse().ok()?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return None;
    }
    let digest = hex::encode(Sha256::digest(body));
    Some(format!("{request_id}\n{user_id}\n{timestamp}\n{digest}").into_bytes())
}

/// The kinds whose API takes a callback URL on submit.
pub fn has_callbacks(kind: ProviderKind) -> bool {
    matches!(
        kind,
        ProviderKind::Replicate
            | ProviderKind::Fal
            | ProviderKind::Kling
            | ProviderKind::Luma
            | ProviderKind::Seedance
    )
}

/// How this deployment is called back: its public base URL and the key of
/// the per-job tokens.
#[derive(Clone)]
pub struct CallbackKeys {
    base_url: String,
    secret: SecretString,
}

impl std::fmt::Debug for CallbackKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackKeys")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl CallbackKeys {
    /// `None` when callbacks are off (`provider.callback_base_url` empty).
    pub fn from_settings(settings: &crate::config::Settings) -> Option<Self> {
        let base = settings.provider.callback_base_url.trim();
        (!base.is_empty()).then(|| Self {
            base_url: base.trim_end_matches('/').to_owned(),
            secret: settings.provider.callback_secret.clone(),
        })
    }

    /// The unguessable token of `job_id` at `provider` (43 characters).
    pub fn token(&self, provider: &str, job_id: Uuid) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(provider, job_id).finalize().into_bytes())
    }

    fn mac(&self, provider: &str, job_id: Uuid) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"genq-callback\0");
        mac.update(provider.as_bytes());
        mac.update(b"\0");
        mac.update(job_id.as_bytes());
        mac
    }

    /// Whether `token` is `job_id`'s at `provider`, compared in constant time.
    pub fn verify_token(&self, provider: &str, job_id: Uuid, token: &str) -> bool {
        if token.len() > TOKEN_MAX {
            return false;
        }
        let Ok(given) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        self.mac(provider, job_id).verify_slice(&given).is_ok()
    }

    /// The URL a submit hands the provider for `job_id`.
    pub fn url(&self, provider: &str, job_id: Uuid) -> String {
        let path: String = url::form_urlencoded::byte_serialize(provider.as_bytes()).collect();
        format!(
            "{}/v1/providers/{path}/callback?job={job_id}&token={}",
            self.base_url,
            self.token(provider, job_id)
        )
    }
}

/// Checks a Standard Webhooks signature (Replicate's): `webhook-signature`
/// holds one or more `v1,<base64>` entries, any of which may match the
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` (compared in constant time), and
/// the timestamp is within [`TOLERANCE_SECS`] of `now`.
pub fn verify_standard_webhook(
    secret: &Secret,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> bool {
    if id.is_empty() || id.len() > 256 || signatures.len() > SIGNATURE_HEADER_MAX {
        return false;
    }
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > TOLERANCE_SECS {
        return false;
    }
    signatures.split(' ').any(|entry| {
        let Some(b64) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(given) = BASE64.decode(b64) else {
            return false;
        };
        secret.verifier(id, ts, body).verify_slice(&given).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> CallbackKeys {
        CallbackKeys {
            base_url: "https://genq.example".into(),
            secret: SecretString::from("0123456789abcdef0123456789abcdef"),
        }
    }

    #[test]
    fn tokens_are_per_job_and_provider() {
        let k = keys();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let t = k.token("replicate", a);
        assert_eq!(t.len(), 43);
        assert!(k.verify_token("replicate", a, &t));
        assert!(!k.verify_token("replicate", b, &t));
        assert!(!k.verify_token("fal", a, &t));
        assert!(!k.verify_token("replicate", a, "x"));
        assert!(!k.verify_token("replicate", a, &"A".repeat(200)));
        let url = k.url("replicate", a);
        assert!(url.starts_with("https://genq.example/v1/providers/replicate/callback?job="));
    }

    #[test]
    fn fals_message_is_four_lines() {
        let m = fal_message("req-1", "user-1", "1000", b"{}", 1_010).unwrap();
        let text = String::from_utf8(m).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines[..3], ["req-1", "user-1", "1000"]);
        assert_eq!(lines[3].len(), 64);
        assert!(
            fal_message("req-1", "user-1", "1000", b"{}", 2_000).is_none(),
            "stale"
        );
        assert!(fal_message("", "user-1", "1000", b"{}", 1_000).is_none());
        assert!(fal_message("r", "u", "soon", b"{}", 1_000).is_none());
    }

    #[test]
    fn standard_webhook_signatures() {
        let s = Secret::generate();
        let body = br#"{"id":"p1"}"#;
        let sig = s.sign("msg_1", 1_000, body);
        assert!(verify_standard_webhook(
            &s, "msg_1", "1000", &sig, body, 1_100
        ));
        let two = format!("v1,bm9wZQ== {sig}");
        assert!(verify_standard_webhook(
            &s, "msg_1", "1000", &two, body, 1_100
        ));
        assert!(!verify_standard_webhook(
            &s, "msg_1", "1000", &sig, b"{}", 1_100
        ));
        assert!(!verify_standard_webhook(
            &s, "msg_2", "1000", &sig, body, 1_100
        ));
        assert!(!verify_standard_webhook(
            &s, "msg_1", "1000", &sig, body, 2_000
        ));
        assert!(!verify_standard_webhook(
            &s, "msg_1", "x", &sig, body, 1_100
        ));
    }
}
