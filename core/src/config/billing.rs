//! `[billing]`: money in. `[billing.stripe]` is the Stripe webhook that
//! turns paid checkouts into credits and refunds and disputes into reversals.

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
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            webhook_secret: None,
            tolerance_secs: 300,
        }
    }
}

impl StripeSettings {
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
        if self.tolerance_secs == 0 || self.tolerance_secs > 86_400 {
            return Err((
                "billing.stripe.tolerance_secs",
                "must be between 1 and 86400 (0 would accept any old signature)",
            ));
        }
        Ok(())
    }
}
