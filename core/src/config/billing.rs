//! `[billing]`: money in. `[billing.stripe]` is the Stripe webhook that
//! turns paid checkouts into credits and refunds and disputes into reversals.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    pub stripe: StripeSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StripeSettings {
    /// The webhook endpoint's signing secret (`whsec_…`, from Stripe's
    /// dashboard). While it is unset, `POST /v1/billing/stripe/webhook`
    /// answers 404.
    pub webhook_secret: Option<SecretString>,
    /// How old a signature's timestamp may be, in seconds (Stripe's
    /// libraries default to 300); older ones are refused as replays.
    pub tolerance_secs: u64,
    /// Credits per unit of each Stripe price (`price_…`, matched without
    /// regard to case: environment keys are lowercased), for sessions
    /// without `metadata.genq_credits`: genq reads the session's line items
    /// from Stripe's API, which needs `api_key`.
    pub prices: BTreeMap<String, i64>,
    /// A restricted Stripe API key (`rk_…` or `sk_…`) that may read Checkout
    /// Sessions; only used to read line items for `prices`.
    pub api_key: Option<SecretString>,
    /// Stripe's API (tests point it elsewhere).
    pub api_base: String,
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            tolerance_secs: 300,
            prices: BTreeMap::new(),
            api_key: None,
            api_base: "https://api.stripe.com".into(),
        }
    }
}

impl StripeSettings {
    /// The credits one unit of `price` buys, when the deployment maps it.
    pub fn credits_for_price(&self, price: &str) -> Option<i64> {
        self.prices
            .iter()
            .find(|(id, _)| id.eq_ignore_ascii_case(price))
            .map(|(_, c)| *c)
    }

    /// `Err((key, why))` for a setting that can't work.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        use secrecy::ExposeSecret;
        if let Some(s) = &self.webhook_secret {
            let s = s.expose_secret();
            if s.trim().is_empty() || s.len() > 1_000 {
                return Err((
                    "billing.stripe.webhook_secret",
                    "must be the endpoint's signing secret (whsec_…), or unset",
                ));
            }
        }
        if self
            .prices
            .values()
            .any(|c| !(1..=1_000_000_000).contains(c))
        {
            return Err((
                "billing.stripe.prices",
                "each price's credits must be between 1 and 1000000000",
            ));
        }
        if !self.prices.is_empty() && self.api_key.is_none() {
            return Err((
                "billing.stripe.api_key",
                "must be set when billing.stripe.prices is: genq reads a session's line items from Stripe",
            ));
        }
        if url::Url::parse(&self.api_base).is_err() {
            return Err((
                "billing.stripe.api_base",
                "must be a URL such as https://api.stripe.com",
            ));
        }
        if self.tolerance_secs == 0 || self.tolerance_secs > 86_400 {
            return Err((
                "billing.stripe.tolerance_secs",
                "must be between 1 and 86400 (0 would accept any old signature)",
            ));
        }
        Ok(())
    }
}
