//! Logging and metrics set-up shared by every binary, and how an error
//! reads on one line.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// Installs the tracing subscriber once; later calls (tests) are no-ops.
pub fn init_tracing(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if settings.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Quiet in tests unless `TEST_LOG` is set.
pub fn init_test_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        init_tracing(&LogSettings {
            json: false,
            filter: "info,sqlx=warn".into(),
        });
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            use metrics_exporter_prometheus::Matcher;
            // Whole jobs and provider tasks take seconds to hours.
            let long = [
                1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
            ];
            let bytes = [1e5, 1e6, 1e7, 5e7, 1e8, 2e8, 5e8, 1e9];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("genq_job_seconds".into()), &long)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("genq_provider_task_seconds".into()),
                        &long,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("genq_archive_bytes".into()), &bytes)
                })
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is installed; ours then stays unused.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// An error with its causes, on one line (reqwest hides the useful part,
/// such as the resolver's refusal, in its sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod error_chain_tests {
    #[test]
    fn error_chains_read_as_one_line() {
        let inner = std::io::Error::other("connection refused");
        let outer = anyhow::Error::new(inner).context("sending");
        assert_eq!(
            super::error_chain(outer.as_ref()),
            "sending: connection refused"
        );
    }
}
