//! Webhooks per the Standard Webhooks spec: the `whsec_` secrets, the `v1`
//! HMAC-SHA256 signature over `{id}.{timestamp}.{body}`, the payload of a
//! job's status change, the retry schedule, and which targets a delivery may
//! reach (the SSRF guard's address rules, shared by registration and sending).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use url::Url;

pub use crate::outbound::is_public;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{InvalidInput, JobStatus};

/// The event type of a job's status change (the payload's `type`).
pub const EVENT_TYPE: &str = "job.status";
/// The prefix of a symmetric secret as shown to people.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a new secret (the spec asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;
/// The headers every delivery carries.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The longest URL an endpoint may have.
pub const URL_MAX: usize = 2048;

/// The delay before each retry: the spec's example schedule (after the
/// immediate first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), so a
/// delivery is given up about 28 hours after its event.
pub const RETRY_SCHEDULE_MS: [u64; 7] = [
    5_000,
    5 * 60_000,
    30 * 60_000,
    2 * 3_600_000,
    5 * 3_600_000,
    10 * 3_600_000,
    10 * 3_600_000,
];

/// A signing secret: `whsec_` + base64 of the key. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(whsec_…)")
    }
}

impl Secret {
    /// A new secret of [`SECRET_BYTES`] random bytes (the thread's CSPRNG,
    /// seeded from the operating system).
    pub fn generate() -> Self {
        let mut key = vec![0u8; SECRET_BYTES];
        rand::rng().fill(&mut key[..]);
        Self {
            text: format!("{SECRET_PREFIX}{}", BASE64.encode(&key)),
            key,
        }
    }

    /// Reads a stored or given secret: `whsec_` and base64 of 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| format!("a webhook secret starts with {SECRET_PREFIX}"))?;
        let key = BASE64
            .decode(b64)
            .map_err(|e| format!("a webhook secret is base64 after {SECRET_PREFIX}: {e}"))?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "a webhook secret has 24 to 64 bytes, this one {}",
                key.len()
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            key,
        })
    }

    /// The secret as shown once to the operator and stored.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// One `v1,<base64 HMAC-SHA256>` signature of `{msg_id}.{timestamp}.{body}`.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.verifier(msg_id, timestamp, body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The HMAC of `{msg_id}.{timestamp}.{body}`, to finish (sign) or to
    /// compare in constant time (`verify_slice`).
    pub fn verifier(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` header: one signature per secret, space-separated
/// (the current secret first, then the previous one during a rotation).
pub fn signature_header(secrets: &[Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The body of every delivery: a job's status change. The trigger on
/// `job_events` writes it (migration `webhooks`); this type documents it and
/// reads it back in tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatusWebhook {
    /// Always `job.status`.
    #[serde(rename = "type")]
    #[schema(example = "job.status")]
    pub event_type: String,
    /// When the status changed (not when this attempt was made: that is `webhook-timestamp`).
    pub timestamp: DateTime<Utc>,
    pub data: JobStatusData,
}

/// What changed, and what a receiver needs to act on it without calling back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatusData {
    /// The timeline event's ID: increases with every change of every job, so
    /// a receiver can order changes and drop ones it has seen.
    pub event_id: i64,
    pub job_id: Uuid,
    /// genq's ID of the job's owner.
    pub user_id: Uuid,
    /// The owner's ID at the identity provider (the token's `sub`).
    pub external_user_id: String,
    /// Absent (null) for the first status of a job.
    pub from_status: Option<JobStatus>,
    pub to_status: JobStatus,
    /// The timeline's sentence for people.
    pub message: Option<String>,
    /// Credits the job reserves (and spends if it succeeds).
    pub cost: i64,
    /// The model the submission named; null for the default.
    pub model: Option<String>,
    /// Why, when the job ended without a video (`rejected`, `failed`, `canceled`, `dead`).
    pub error: Option<WebhookJobError>,
    /// On `rejected`: what a video needed and what the user had.
    pub required_credits: Option<i64>,
    pub available_credits: Option<i64>,
    /// On `succeeded`: genq's copy of the video, a path on the API (owner's token).
    pub result_url: Option<String>,
    pub video_bytes: Option<i64>,
}

/// A job's error in a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookJobError {
    pub code: String,
    pub message: String,
}

/// The wait before the retry that follows attempt number `attempt` (1 for
/// the first) of this round, moved by up to `jitter` of itself either way
/// and never shorter than a `Retry-After` the endpoint sent; `None` when the
/// schedule has run out and the delivery has failed.
pub fn retry_delay(
    schedule: &[u64],
    jitter: f64,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let base = *schedule.get(attempt.checked_sub(1)? as usize)? as f64;
    let factor = if jitter > 0.0 {
        1.0 + rand::rng().random_range(-jitter..=jitter)
    } else {
        1.0
    };
    let delay = Duration::from_millis((base * factor).max(1.0) as u64);
    // A Retry-After is honoured up to a day; past that it is not a pause.
    let asked = retry_after.map(|d| d.min(Duration::from_secs(24 * 3600)));
    Some(asked.map_or(delay, |a| a.max(delay)))
}

/// Checks an endpoint URL given by an operator, on its text first (so that
/// what is accepted is exactly what the API documents, not what a lenient
/// URL parser makes of it): http or https; a host that is a DNS name (labels
/// of letters, digits and inner hyphens, the last starting with a letter),
/// an IPv4 address or a bracketed IPv6 address; an optional port from 1 to
/// 65535; a path and query of RFC 3986 characters (others percent-encoded);
/// no credentials, no fragment, at most [`URL_MAX`] bytes. Unless
/// `allow_private`, no host that is a non-public address or `localhost`.
/// Host names are resolved only when sending, where every address they
/// resolve to is checked again.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, InvalidInput> {
    let invalid = |why: &str| InvalidInput::new("url", why);
    if raw.is_empty() || raw.len() > URL_MAX {
        return Err(invalid(&format!("url must have 1 to {URL_MAX} bytes.")));
    }
    // Only what RFC 3986 allows unencoded (a parser would silently drop
    // tabs and newlines, and encode the rest), and `%` only as `%XX`.
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let allowed = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b);
        if !allowed {
            return Err(invalid(&format!(
                "url must be a URI (RFC 3986): percent-encode {:?} (no spaces or control characters).",
                raw[i..].chars().next().unwrap_or(' ')
            )));
        }
        let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
        if b == b'%' && !(hex(i + 1) && hex(i + 2)) {
            return Err(invalid(
                "url has a % that is not followed by two hex digits.",
            ));
        }
    }
    let lower = raw.to_ascii_lowercase();
    let Some(rest) = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
    else {
        return Err(invalid("url must be an http:// or https:// URL."));
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(invalid(
            "url must not contain credentials (user:password@); the signature authenticates genq.",
        ));
    }
    if tail.contains('#') {
        return Err(invalid("url must not have a fragment (#…)."));
    }
    if tail.contains(['[', ']']) {
        return Err(invalid("url may have [ and ] only around an IPv6 address."));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid("url has an unclosed [ in its host."))?;
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(invalid("url has an invalid IPv6 address."));
            }
            match after {
                "" => (addr, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (addr, Some(p)),
                    None => return Err(invalid("url has text after its IPv6 address.")),
                },
            }
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.parse::<Ipv4Addr>().is_err() && !is_host_name(host) {
                return Err(invalid(
                    "url must name a host: a DNS name (letters, digits and inner hyphens; the last label starts with a letter) or an IP address.",
                ));
            }
            (host, port)
        }
    };
    if let Some(p) = port {
        let ok = !p.starts_with('0')
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n));
        if !ok {
            return Err(invalid("url has an invalid port (1 to 65535)."));
        }
    }
    if !allow_private {
        let refused = match host.parse::<IpAddr>() {
            Ok(ip) => !is_public(ip),
            Err(_) => host == "localhost" || host.ends_with(".localhost"),
        };
        if refused {
            return Err(invalid(&format!(
                "url points at a private, loopback or reserved address ({host}); deliveries there are refused unless webhooks.allow_private is true."
            )));
        }
    }
    Url::parse(raw).map_err(|e| invalid(&format!("url is not a valid URL: {e}.")))
}

/// A DNS name as URLs carry it: labels of letters, digits and inner
/// hyphens, the last one starting with a letter (so that it can't be read
/// as an address).
fn is_host_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let labels: Vec<&str> = host.split('.').collect();
    labels.iter().all(|l| label_ok(l))
        && labels
            .last()
            .is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the spec's reference libraries.
    #[test]
    fn signs_like_the_reference_libraries() {
        let secret = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            secret.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn secrets_are_whsec_and_random() {
        let (a, b) = (Secret::generate(), Secret::generate());
        assert!(a.expose().starts_with("whsec_"));
        assert_ne!(a, b);
        assert_eq!(Secret::parse(a.expose()).unwrap(), a);
        assert!(!format!("{a:?}").contains(&a.expose()[6..]));
        assert!(Secret::parse("whsec_short").is_err());
        assert!(Secret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let (new, old) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 5, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(
            parts,
            [new.sign("msg_1", 5, b"{}"), old.sign("msg_1", 5, b"{}")]
        );
    }

    #[test]
    fn the_schedule_is_followed_then_ends() {
        let s = RETRY_SCHEDULE_MS;
        assert_eq!(retry_delay(&s, 0.0, 1, None), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_delay(&s, 0.0, 7, None),
            Some(Duration::from_secs(36_000))
        );
        assert_eq!(retry_delay(&s, 0.0, 8, None), None);
        assert_eq!(retry_delay(&[], 0.0, 1, None), None);
        for _ in 0..100 {
            let d = retry_delay(&s, 0.1, 2, None).unwrap().as_millis();
            assert!((270_000..=330_000).contains(&d), "{d}");
        }
        // A Retry-After longer than the step is honoured.
        assert_eq!(
            retry_delay(&s, 0.0, 1, Some(Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn urls_are_checked_naming_the_field() {
        for good in [
            "https://hooks.example.com/genq?x=1",
            "HTTPS://Hooks.Example.COM:8443/a%20b/c;d=e?f=g&h",
            "http://example.com?x",
            "https://8.8.8.8/hook",
            "https://[2606:4700::1111]:443/",
            "http://a",
        ] {
            assert!(check_url(good, false).is_ok(), "{good}");
        }
        for bad in [
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "https://exa mple.com/",
            "https://example.com/a<b>",
            "https://example.com/%zz",
            "https://example.com/\u{e9}",
            "https://0.com*",
            "https://a.1b/",
            "https://0/",
            "https://example.com:0/",
            "https://example.com:080/",
            "https://example.com:65536/",
            "https://example.com./",
            "https://exa_mple.com/",
            "https://example.com/[x]",
            "not a url",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://localhost:3000/",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let e = check_url(bad, false).unwrap_err();
            assert_eq!(e.field, "url", "{bad}");
        }
        assert!(check_url("http://127.0.0.1:8080/hook", true).is_ok());
        assert!(check_url("https://user@example.com/", true).is_err());
    }
}
