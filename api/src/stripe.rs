//! Stripe's side of billing: the webhook signature (`Stripe-Signature`) as
//! Stripe specifies it, and the few fields of its events genq reads, parsed
//! into what the store applies. Everything here comes from the network.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Longest `Stripe-Signature` header read, and most `v1` signatures in it
/// (Stripe sends two while a secret is being rolled).
const HEADER_MAX: usize = 4_096;
const SIGNATURES_MAX: usize = 16;

/// Why a signature was refused (each a 400 that changes nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("no v1 signature of the Stripe-Signature header matches the body")]
    NoMatch,
    #[error(
        "the Stripe-Signature timestamp is outside the tolerance (a replay, or a clock far off)"
    )]
    Stale,
}

/// Checks `header` against the exact `body` bytes: some `v1` signature must
/// be HMAC-SHA256 of `{t}.{body}` under `secret` (the whole `whsec_…`
/// string, as Stripe's libraries use it), and `t` within `tolerance` of
/// `now` either way. Other schemes (`v0`) are ignored, as Stripe says.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    tolerance: Duration,
    now: SystemTime,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > HEADER_MAX {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match key {
            "t" if timestamp.is_none() => timestamp = Some(value),
            "t" => return Err(SignatureError::Malformed),
            "v1" => {
                let Ok(bytes) = hex::decode(value) else {
                    continue;
                };
                if signatures.len() == SIGNATURES_MAX {
                    return Err(SignatureError::Malformed);
                }
                signatures.push(bytes);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    let t: u64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    // verify_slice compares in constant time.
    let matched = signatures
        .iter()
        .any(|s| mac.clone().verify_slice(s).is_ok());
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The envelope of every event. `data.object` is read per type.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// A Checkout Session, as far as genq reads it.
#[derive(Debug, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub client_reference_id: Option<String>,
    pub payment_status: Option<String>,
    /// An ID, or the expanded object (whose `id` is read).
    pub payment_intent: Option<IdOrObject>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
}

/// An Invoice (`invoice.paid`), as far as genq reads it: its metadata, or
/// its subscription's (where Stripe copies it, by API version), and the
/// period its lines pay for.
#[derive(Debug, Deserialize)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    #[serde(default)]
    pub lines: Option<InvoiceLines>,
    pub period_end: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceLines {
    #[serde(default)]
    pub data: Vec<InvoiceLine>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceLine {
    pub period: Option<Period>,
}

#[derive(Debug, Deserialize)]
pub struct Period {
    pub end: i64,
}

impl Invoice {
    /// A metadata value, from the invoice or its subscription.
    pub fn meta(&self, key: &str) -> Option<&serde_json::Value> {
        let subscription = self
            .parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .or(self.subscription_details.as_ref())
            .and_then(|s| s.metadata.as_ref());
        [self.metadata.as_ref(), subscription]
            .into_iter()
            .flatten()
            .find_map(|m| m.get(key))
    }

    /// When the period the invoice pays for ends: its lines' latest end.
    pub fn period_end(&self) -> Option<i64> {
        self.lines
            .as_ref()
            .and_then(|l| {
                l.data
                    .iter()
                    .filter_map(|d| d.period.as_ref().map(|p| p.end))
                    .max()
            })
            .or(self.period_end)
    }
}

/// A whole number from a metadata value (Stripe's metadata values are
/// strings; a number is taken too).
pub fn whole_number(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::String(s) => s.trim().parse::<i64>().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A positive whole number of credits from a metadata value.
pub fn credits_value(value: &serde_json::Value) -> Option<i64> {
    whole_number(value).filter(|n| *n > 0 && *n <= CREDITS_MAX)
}

/// `true` or `false` from a metadata value (a string; a boolean is taken too).
pub fn flag_value(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Bool(b) => Some(*b),
        _ => None,
    }
}

/// A page of a session's line items (Stripe's API).
#[derive(Debug, Deserialize)]
pub struct LineItems {
    pub data: Vec<LineItem>,
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Deserialize)]
pub struct LineItem {
    pub price: Option<IdOrObject>,
    pub quantity: Option<i64>,
}

/// Longest line-items answer read from Stripe.
const LINE_ITEMS_MAX: usize = 1024 * 1024;

/// Reads a Checkout Session's line items from Stripe's API (`limit=100`).
pub async fn line_items(
    client: &reqwest::Client,
    settings: &genq_core::config::StripeSettings,
    session: &str,
) -> anyhow::Result<LineItems> {
    use secrecy::ExposeSecret;
    let key = settings
        .api_key
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("billing.stripe.api_key is not set"))?;
    let mut url = url::Url::parse(&settings.api_base)?;
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("billing.stripe.api_base cannot be a base URL"))?
        .pop_if_empty()
        .extend(["v1", "checkout", "sessions", session, "line_items"]);
    url.query_pairs_mut().append_pair("limit", "100");
    let response = client
        .get(url)
        .bearer_auth(key.expose_secret())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("Stripe's API did not answer: {}", e.without_url()))?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("Stripe's API answered HTTP {status}");
    }
    let body =
        genq_core::outbound::read_limited(response, LINE_ITEMS_MAX, "Stripe's line items").await?;
    Ok(serde_json::from_slice(&body)?)
}

/// The credits a session's line items buy under the deployment's price
/// map, or why not (an unmapped price is never credited by guess).
pub fn credits_of_items(
    settings: &genq_core::config::StripeSettings,
    items: &LineItems,
) -> Result<i64, String> {
    if items.has_more {
        return Err("the session has more than 100 line items".into());
    }
    let mut total: i64 = 0;
    for item in &items.data {
        let price = item.price.as_ref().map(IdOrObject::id).unwrap_or("none");
        let per_unit = settings.credits_for_price(price).ok_or_else(|| {
            format!(
                "price {} is not in billing.stripe.prices",
                price.chars().take(100).collect::<String>()
            )
        })?;
        let quantity = item.quantity.filter(|q| *q > 0).unwrap_or(1);
        total = per_unit
            .checked_mul(quantity)
            .and_then(|c| total.checked_add(c))
            .filter(|t| *t <= CREDITS_MAX)
            .ok_or("the line items buy more credits than one payment may")?;
    }
    if total == 0 {
        return Err("the session has no line items".into());
    }
    Ok(total)
}

/// A Charge (`charge.refunded`).
#[derive(Debug, Deserialize)]
pub struct Charge {
    pub id: String,
    pub payment_intent: Option<IdOrObject>,
    pub amount: i64,
    pub amount_refunded: i64,
    pub currency: Option<String>,
}

/// A Dispute (`charge.dispute.created`).
#[derive(Debug, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub payment_intent: Option<IdOrObject>,
    pub amount: i64,
    pub currency: Option<String>,
}

/// A reference Stripe sends as an ID, or expanded into its object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) | Self::Object { id } => id,
        }
    }
}

/// Longest Stripe ID accepted (theirs are under 100 characters).
pub const ID_MAX: usize = 255;

/// Whether `id` looks like a Stripe ID: short, printable, no spaces.
pub fn plausible_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The user a payment names (the identity provider's `sub`): trimmed,
/// not empty, no longer than a token's `sub` may be, no control
/// characters; `None` when it names nobody usable.
pub fn user_sub(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|s| {
        !s.is_empty() && s.len() <= crate::auth::SUB_MAX && !s.chars().any(char::is_control)
    })
}

/// The credits a session buys: `metadata.genq_credits`, a positive integer
/// (Stripe's metadata values are strings; a number is taken too).
pub fn credits_of(session: &CheckoutSession) -> Result<i64, &'static str> {
    let value = session
        .metadata
        .as_ref()
        .and_then(|m| m.get("genq_credits"))
        .ok_or("the session has no metadata.genq_credits")?;
    credits_value(value).ok_or("metadata.genq_credits is not a positive whole number of credits")
}

/// Most credits one payment may add: far above any real purchase, and far
/// below what could overflow a balance.
pub const CREDITS_MAX: i64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const BODY: &[u8] = br#"{"id":"evt_test","object":"event"}"#;
    // Computed with Stripe's own library (generateTestHeaderString).
    const GOOD: &str =
        "t=1700000000,v1=8042376f6ca064adbe037642a718227dfd59047137eb49497a54c49eb0cfb724";

    #[test]
    fn metadata_values_are_read_from_strings_or_their_json_types() {
        use serde_json::json;
        assert_eq!(whole_number(&json!(" 3 ")), Some(3));
        assert_eq!(whole_number(&json!(0)), Some(0));
        assert_eq!(whole_number(&json!("lots")), None);
        assert_eq!(whole_number(&json!(3.5)), None);
        assert_eq!(credits_value(&json!("0")), None);
        assert_eq!(flag_value(&json!("true")), Some(true));
        assert_eq!(flag_value(&json!(false)), Some(false));
        assert_eq!(flag_value(&json!("yes")), None);
        assert_eq!(flag_value(&json!(1)), None);
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn check(header: &str, body: &[u8], now: u64) -> Result<(), SignatureError> {
        verify(
            Some(header),
            body,
            SECRET,
            Duration::from_secs(300),
            at(now),
        )
    }

    #[test]
    fn stripes_own_signature_verifies() {
        assert_eq!(check(GOOD, BODY, 1_700_000_000), Ok(()));
        assert_eq!(check(GOOD, BODY, 1_700_000_300), Ok(()));
    }

    #[test]
    fn any_v1_may_match_and_other_schemes_are_ignored() {
        let rotated = GOOD.replace("t=1700000000,", "t=1700000000,v1=00ff,v0=abc,");
        assert_eq!(check(&rotated, BODY, 1_700_000_000), Ok(()));
        let only_v0 =
            "t=1700000000,v0=8042376f6ca064adbe037642a718227dfd59047137eb49497a54c49eb0cfb724";
        assert_eq!(
            check(only_v0, BODY, 1_700_000_000),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn tampering_staleness_and_garbage_are_refused() {
        assert_eq!(
            check(
                GOOD,
                br#"{"id":"evt_test","object":"evenT"}"#,
                1_700_000_000
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(check(GOOD, BODY, 1_700_000_301), Err(SignatureError::Stale));
        assert_eq!(check(GOOD, BODY, 1_699_999_699), Err(SignatureError::Stale));
        let other_t = GOOD.replace("t=1700000000", "t=1700000001");
        assert_eq!(
            check(&other_t, BODY, 1_700_000_000),
            Err(SignatureError::NoMatch)
        );
        for bad in ["", "t=", "v1=abc", "t=x,v1=00", "t=1,t=1,v1=00", "nonsense"] {
            assert!(check(bad, BODY, 1_700_000_000).is_err(), "{bad:?}");
        }
        assert_eq!(
            verify(None, BODY, SECRET, Duration::from_secs(300), at(1)),
            Err(SignatureError::Missing)
        );
        let long = format!("{GOOD},{}", "v1=00,".repeat(1_000));
        assert_eq!(
            check(&long, BODY, 1_700_000_000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn credits_come_from_metadata_only_when_whole_and_positive() {
        let session = |metadata: serde_json::Value| -> CheckoutSession {
            serde_json::from_value(serde_json::json!({"id": "cs_1", "metadata": metadata})).unwrap()
        };
        assert_eq!(
            credits_of(&session(serde_json::json!({"genq_credits": "50"}))),
            Ok(50)
        );
        assert_eq!(
            credits_of(&session(serde_json::json!({"genq_credits": 7}))),
            Ok(7)
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"genq_credits": "0"}),
            serde_json::json!({"genq_credits": "-5"}),
            serde_json::json!({"genq_credits": "2.5"}),
            serde_json::json!({"genq_credits": "lots"}),
            serde_json::json!({"genq_credits": "99999999999999"}),
        ] {
            assert!(credits_of(&session(bad.clone())).is_err(), "{bad}");
        }
    }
}
