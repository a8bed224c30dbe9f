//! Logging, trace export and metrics set-up shared by every binary, and
//! how an error reads on one line.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogSettings;

/// What [`init_tracing`] set up. Call [`Tracing::shutdown`] on the way
/// out, so that the last spans are sent (within the exporter's timeout).
#[must_use]
pub struct Tracing {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Tracing {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is waiting and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::debug!(error = %e, "the trace exporter did not shut down cleanly");
            }
        }
    }
}

/// Installs the tracing subscriber once; later calls (tests) are no-ops.
/// Logs go to stdout as `settings` say; with an OTLP endpoint in the
/// environment (see [`crate::trace`]), genq's spans are also exported as
/// OpenTelemetry traces of service `service` (unless `OTEL_SERVICE_NAME`).
pub fn init_tracing(settings: &LogSettings, service: &str) -> Tracing {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    if !crate::trace::enabled() {
        let builder = tracing_subscriber::fmt().with_env_filter(filter);
        let _ = if settings.json {
            builder.json().try_init()
        } else {
            builder.try_init()
        };
        return Tracing { provider: None };
    }
    let provider = match crate::trace::provider(service) {
        Ok(p) => p,
        Err(e) => {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
            tracing::error!(error = %format!("{e:#}"), "traces are off: the exporter could not be set up");
            return Tracing { provider: None };
        }
    };
    // The traces take genq's spans down to DEBUG (a request's span is at
    // DEBUG), whatever the log's level: the subscriber lets them through,
    // and the log filters for itself. (A filter on the trace layer alone
    // lost spans: per-layer filters on both layers left some consumer spans
    // disabled for the trace layer.)
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| settings.filter.clone());
    let global = EnvFilter::try_new(format!("{directives},genq=debug"))
        .unwrap_or_else(|_| EnvFilter::new("info,genq=debug"));
    let fmt: Box<dyn Layer<_> + Send + Sync> = if settings.json {
        Box::new(tracing_subscriber::fmt::layer().json().with_filter(filter))
    } else {
        Box::new(tracing_subscriber::fmt::layer().with_filter(filter))
    };
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "genq");
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        // Both act on every poll of an instrumented future (a span entered
        // and left): timing it, and making its context current for
        // OpenTelemetry's own instrumentation, which genq does not use.
        // Off, a traced submission costs a third less CPU.
        .with_tracked_inactivity(false)
        .with_context_activation(false);
    if tracing_subscriber::registry()
        .with(global)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
    {
        crate::trace::set_exporting();
    }
    Tracing {
        provider: Some(provider),
    }
}

/// Quiet in tests unless `TEST_LOG` is set.
pub fn init_test_tracing() {
    if std::env::var_os("TEST_LOG").is_some() {
        // Never exports: a test process has no collector to flush to.
        let _ = init_tracing(
            &LogSettings {
                json: false,
                filter: "info,sqlx=warn".into(),
            },
            "genq-test",
        );
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
