//! Every provider a worker can call: the deployment's default and each
//! configured model, by the name jobs store in `jobs.provider`, each with
//! its adapter and caps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{build, VideoProvider};
use genq_core::callbacks::{has_callbacks, CallbackKeys};
use genq_core::config::Settings;
use genq_store::store::gate::{Caps, Rules};

/// One configured provider.
#[derive(Clone)]
pub struct ConfiguredProvider {
    /// The name stored on its jobs (`jobs.provider`).
    pub name: String,
    pub adapter: Arc<dyn VideoProvider>,
    pub caps: Caps,
    /// When to poll a new task the first time (`first_poll_ms`); `None`:
    /// the worker's `poll_initial_ms`.
    pub first_poll: Option<Duration>,
    /// Set when this provider calls back (a kind with callbacks, and
    /// `provider.callback_base_url` set): polling is then the safety net.
    pub callbacks: Option<CallbackKeys>,
}

impl ConfiguredProvider {
    /// The URL the provider calls back on for `job_id`, when it does.
    pub fn callback_url(&self, job_id: uuid::Uuid) -> Option<String> {
        self.callbacks.as_ref().map(|k| k.url(&self.name, job_id))
    }
}

/// The providers of a deployment, by name.
#[derive(Clone)]
pub struct Providers {
    default: String,
    by_name: HashMap<String, ConfiguredProvider>,
    /// What the gate enforces: every provider's caps and the per-user limit.
    rules: Rules,
}

impl Providers {
    /// One adapter per configured provider; `default_adapter` replaces the
    /// default provider's (tests).
    pub fn build(
        settings: &Settings,
        default_adapter: Option<Arc<dyn VideoProvider>>,
    ) -> anyhow::Result<Self> {
        let mut by_name = HashMap::new();
        let mut default_adapter = default_adapter;
        let keys = CallbackKeys::from_settings(settings);
        for (i, p) in settings.configured_providers().into_iter().enumerate() {
            let adapter = match default_adapter.take().filter(|_| i == 0) {
                Some(a) => a,
                None => build(&p)?,
            };
            let caps = Caps {
                max_concurrent: p.max_concurrent,
                max_per_minute: p.max_per_minute,
            };
            let callbacks = keys.clone().filter(|_| has_callbacks(p.kind()));
            by_name.insert(
                p.name.clone(),
                ConfiguredProvider {
                    name: p.name,
                    adapter,
                    caps,
                    first_poll: p.first_poll_ms.map(Duration::from_millis),
                    callbacks,
                },
            );
        }
        let rules = Rules::from_settings(settings);
        Ok(Self {
            default: settings.provider.name.clone(),
            by_name,
            rules,
        })
    }

    /// The provider a job names; a job without one (from before providers
    /// were recorded) runs on the default. `None`: not configured here.
    pub fn for_job(&self, provider: Option<&str>) -> Option<&ConfiguredProvider> {
        self.by_name.get(provider.unwrap_or(&self.default))
    }

    /// What the gate enforces.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}
