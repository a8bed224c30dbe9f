//! The models a user may ask for on submit (`[models.NAME]`): each one a
//! configured provider with its own price and caps, besides the deployment's
//! default `[provider]`. Also the checks every configured provider passes.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{ProviderKind, ProviderSettings, Settings};

/// The longest first poll: the longest wait tier (`DELAY_TIERS_MS`).
pub const FIRST_POLL_MAX_MS: u64 = 60_000;

/// Longest model name.
pub const MODEL_NAME_MAX: usize = 40;

/// One entry of `[models]`: a provider the user picks with `model` on submit.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Which provider API to speak (as `provider.kind`).
    pub kind: String,
    /// The provider's model / version / endpoint ID; empty means the kind's default.
    pub model: String,
    /// Empty means the kind's real API base.
    pub base_url: String,
    pub api_key: SecretString,
    pub timeout_ms: u64,
    /// Credits one video of this model costs; absent (and no
    /// `cost_per_second`) means `credits.video_cost`.
    pub cost: Option<i64>,
    /// Credits per second of video, times the request's `duration_seconds`,
    /// as providers charge (instead of a flat `cost`).
    pub cost_per_second: Option<i64>,
    /// Tasks in flight at once (submitting or running), across all workers; 0 = no cap.
    pub max_concurrent: u32,
    /// Submissions to the provider per minute, across all workers; 0 = no cap.
    pub max_per_minute: u32,
    /// When to ask about a new task the first time (as `provider.first_poll_ms`).
    pub first_poll_ms: Option<u64>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        let p = ProviderSettings::default();
        Self {
            kind: p.kind,
            model: p.model,
            base_url: p.base_url,
            api_key: p.api_key,
            timeout_ms: p.timeout_ms,
            cost: None,
            cost_per_second: None,
            max_concurrent: 0,
            max_per_minute: 0,
            first_poll_ms: None,
        }
    }
}

impl ModelSettings {
    /// The provider settings of this model, stored on its jobs as `name`.
    pub fn provider(&self, name: &str) -> ProviderSettings {
        ProviderSettings {
            name: name.to_owned(),
            kind: self.kind.clone(),
            model: self.model.clone(),
            base_url: self.base_url.clone(),
            api_key: self.api_key.clone(),
            timeout_ms: self.timeout_ms,
            max_concurrent: self.max_concurrent,
            max_per_minute: self.max_per_minute,
            first_poll_ms: self.first_poll_ms,
            // One switch for every download: `provider.allow_private`.
            allow_private: false,
            // Callbacks are the deployment's: read from `provider`.
            ..ProviderSettings::default()
        }
    }
}

/// Most credits a price may name (per video or per second): far above any
/// real price, far below what could overflow a balance.
pub const PRICE_MAX: i64 = 1_000_000;

/// What a video costs: the same for any length, or per second of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Price {
    Flat(i64),
    PerSecond(i64),
}

impl Price {
    /// The credits a video of `duration_secs` seconds costs.
    pub fn cost(self, duration_secs: u32) -> i64 {
        match self {
            Self::Flat(c) => c,
            Self::PerSecond(c) => c.saturating_mul(i64::from(duration_secs)),
        }
    }

    /// The price per second, when it is one.
    pub fn per_second(self) -> Option<i64> {
        match self {
            Self::Flat(_) => None,
            Self::PerSecond(c) => Some(c),
        }
    }
}

/// What a submission runs on: the configured provider's name (stored as
/// `jobs.provider`), the model the user named (if any) and the price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderChoice<'a> {
    pub provider: &'a str,
    pub model: Option<&'a str>,
    pub price: Price,
}

impl ModelSettings {
    /// This model's price: per second, or flat, or the default video's.
    pub fn price(&self, default_cost: i64) -> Price {
        match (self.cost_per_second, self.cost) {
            (Some(per_second), _) => Price::PerSecond(per_second),
            (None, Some(cost)) => Price::Flat(cost),
            (None, None) => Price::Flat(default_cost),
        }
    }
}

impl Settings {
    /// What a submission naming `model` runs on and costs (`None`: the default provider at
    /// `credits.video_cost`); `None` when no such model is configured.
    pub fn provider_for<'a>(&'a self, model: Option<&'a str>) -> Option<ProviderChoice<'a>> {
        match model {
            None => Some(ProviderChoice {
                provider: &self.provider.name,
                model: None,
                price: Price::Flat(self.credits.video_cost),
            }),
            Some(name) => self
                .models
                .get_key_value(name)
                .map(|(name, m)| ProviderChoice {
                    provider: name,
                    model: Some(name),
                    price: m.price(self.credits.video_cost),
                }),
        }
    }

    /// Every configured model with its price, by name.
    pub fn model_prices(&self) -> Vec<(&str, Price)> {
        self.models
            .iter()
            .map(|(name, m)| (name.as_str(), m.price(self.credits.video_cost)))
            .collect()
    }

    /// Every provider a worker must be able to call: the default, then each model.
    pub fn configured_providers(&self) -> Vec<ProviderSettings> {
        std::iter::once(self.provider.clone())
            .chain(self.models.iter().map(|(name, m)| m.provider(name)))
            .collect()
    }
}

/// Checks `[models]`: each name, price and provider; the failing key and why.
pub(super) fn check_models(
    models: &BTreeMap<String, ModelSettings>,
    default_name: &str,
) -> Result<(), (String, String)> {
    for (name, m) in models {
        let ok = !name.is_empty()
            && name.len() <= MODEL_NAME_MAX
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
        if !ok {
            return Err((
                format!("models.{name}"),
                format!(
                    "is not a usable model name: 1 to {MODEL_NAME_MAX} lowercase letters, digits, '_' or '-'"
                ),
            ));
        }
        if name == default_name {
            return Err((
                format!("models.{name}"),
                "has the name of the default provider (provider.name); jobs could not tell them apart".into(),
            ));
        }
        for (key, price) in [("cost", m.cost), ("cost_per_second", m.cost_per_second)] {
            if price.is_some_and(|c| !(1..=PRICE_MAX).contains(&c)) {
                return Err((
                    format!("models.{name}.{key}"),
                    format!("must be between 1 and {PRICE_MAX}"),
                ));
            }
        }
        if m.cost.is_some() && m.cost_per_second.is_some() {
            return Err((
                format!("models.{name}.cost_per_second"),
                "and models.NAME.cost can't both be set: a model is priced per video or per second"
                    .into(),
            ));
        }
        check_provider(&format!("models.{name}"), &m.provider(name))?;
    }
    Ok(())
}

/// Checks one provider's settings; `prefix` is `provider` or `models.NAME`.
pub(super) fn check_provider(prefix: &str, p: &ProviderSettings) -> Result<(), (String, String)> {
    let key = |k: &str| format!("{prefix}.{k}");
    let Some(kind) = ProviderKind::parse(&p.kind) else {
        return Err((
            key("kind"),
            format!(
                "must be one of {} (not {:?})",
                ProviderKind::ALL.map(ProviderKind::as_str).join(", "),
                p.kind
            ),
        ));
    };
    if !p.base_url.trim().is_empty() && url::Url::parse(p.base_url.trim()).is_err() {
        return Err((
            key("base_url"),
            "must be a URL such as http://127.0.0.1:8090 (or empty for the provider's own API)"
                .into(),
        ));
    }
    if p.timeout_ms == 0 {
        return Err((key("timeout_ms"), "must be more than 0".into()));
    }
    if p.first_poll_ms.is_some_and(|ms| ms > FIRST_POLL_MAX_MS) {
        return Err((
            key("first_poll_ms"),
            format!("must be at most {FIRST_POLL_MAX_MS} (the longest wait tier)"),
        ));
    }
    let secret = p.api_key.expose_secret();
    // A real provider's API needs a key; a simulator at another base_url may not.
    if kind != ProviderKind::TaskId && secret.is_empty() && p.base_url.trim().is_empty() {
        return Err((
            key("api_key"),
            format!("must be set for {prefix}.kind = {kind}"),
        ));
    }
    if kind == ProviderKind::Kling && !secret.is_empty() {
        let ok = secret
            .split_once(':')
            .is_some_and(|(ak, sk)| !ak.is_empty() && !sk.is_empty());
        if !ok {
            return Err((
                key("api_key"),
                format!("must be ACCESS_KEY:SECRET_KEY for {prefix}.kind = kling"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_env(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings: Settings = config::Config::builder()
            .add_source(
                config::Environment::with_prefix("GENQ")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(map)),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    #[test]
    fn models_come_from_the_environment_with_their_price() {
        let s = from_env(&[
            ("GENQ__MODELS__FAST__KIND", "runway"),
            ("GENQ__MODELS__FAST__BASE_URL", "http://127.0.0.1:9000"),
            ("GENQ__MODELS__FAST__COST", "4"),
            ("GENQ__MODELS__FAST__MAX_CONCURRENT", "2"),
            ("GENQ__MODELS__PLAIN__KIND", "taskid"),
            ("GENQ__PROVIDER__MAX_PER_MINUTE", "10"),
            ("GENQ__MODELS__FAST__FIRST_POLL_MS", "0"),
        ])
        .unwrap();
        assert_eq!(s.models["fast"].kind, "runway");
        assert_eq!(s.models["fast"].max_concurrent, 2);
        assert_eq!(s.provider.max_per_minute, 10);
        assert_eq!(s.models["fast"].provider("fast").first_poll_ms, Some(0));
        assert_eq!(s.provider.first_poll_ms, None);
        let fast = s.provider_for(Some("fast")).unwrap();
        assert_eq!(
            (fast.provider, fast.model, fast.price),
            ("fast", Some("fast"), Price::Flat(4))
        );
        // No price: the default one.
        assert_eq!(
            s.provider_for(Some("plain")).unwrap().price,
            Price::Flat(s.credits.video_cost)
        );
        let default = s.provider_for(None).unwrap();
        assert_eq!((default.provider, default.model), ("sim", None));
        assert!(s.provider_for(Some("nope")).is_none());
        assert_eq!(
            s.model_prices(),
            vec![("fast", Price::Flat(4)), ("plain", Price::Flat(10))]
        );
        let names: Vec<String> = s
            .configured_providers()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["sim", "fast", "plain"]);
    }

    #[test]
    fn bad_models_are_refused_naming_the_key() {
        let e = from_env(&[("GENQ__MODELS__FAST__KIND", "vimeo")]).unwrap_err();
        assert!(e.to_string().contains("models.fast.kind"), "{e}");
        let e = from_env(&[
            ("GENQ__MODELS__FAST__KIND", "taskid"),
            ("GENQ__MODELS__FAST__COST", "0"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("models.fast.cost"), "{e}");
        let e = from_env(&[("GENQ__MODELS__FAST__KIND", "runway")]).unwrap_err();
        assert!(e.to_string().contains("models.fast.api_key"), "{e}");
        let e = from_env(&[("GENQ__MODELS__SIM__KIND", "taskid")]).unwrap_err();
        assert!(e.to_string().contains("models.sim "), "{e}");
        let e = from_env(&[("GENQ__PROVIDER__FIRST_POLL_MS", "600000")]).unwrap_err();
        assert!(e.to_string().contains("provider.first_poll_ms"), "{e}");
        let e = from_env(&[("GENQ__MODELS__FAST__COLOUR", "red")]).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = from_env(&[
            ("GENQ__MODELS__FAST__KIND", "taskid"),
            ("GENQ__MODELS__FAST__COST", "3"),
            ("GENQ__MODELS__FAST__COST_PER_SECOND", "5"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("models.fast.cost_per_second"), "{e}");
        let e = from_env(&[
            ("GENQ__MODELS__FAST__KIND", "taskid"),
            ("GENQ__MODELS__FAST__COST_PER_SECOND", "0"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("models.fast.cost_per_second"), "{e}");
    }

    #[test]
    fn a_price_per_second_is_multiplied_by_the_length() {
        let s = from_env(&[
            ("GENQ__MODELS__GEN4__KIND", "taskid"),
            ("GENQ__MODELS__GEN4__COST_PER_SECOND", "5"),
        ])
        .unwrap();
        let price = s.provider_for(Some("gen4")).unwrap().price;
        assert_eq!(price, Price::PerSecond(5));
        assert_eq!((price.cost(5), price.cost(10)), (25, 50));
        assert_eq!(Price::Flat(10).cost(60), 10);
        assert_eq!(Price::PerSecond(i64::MAX).cost(2), i64::MAX);
    }
}
