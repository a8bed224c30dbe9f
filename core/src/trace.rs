//! OpenTelemetry traces: the exporter set-up (OTLP over HTTP, configured by
//! the standard `OTEL_*` variables, off when no endpoint is set), the bound
//! on spans waiting to be sent, and W3C trace context in and out of the
//! text forms genq stores and sends (`traceparent`, `tracestate`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The longest `tracestate` kept or sent: W3C's own advice for what a
/// vendor may cut to; a longer one (from a client) is dropped, not stored.
pub const MAX_TRACESTATE: usize = 512;

/// Spans waiting to be exported, at most; beyond it a span is dropped and
/// counted (`genq_trace_spans_dropped_total`), never waited for.
const DEFAULT_QUEUE: usize = 2048;

/// A job's trace context as genq stores it and sends it on: the W3C
/// `traceparent` (validated) and the `tracestate` that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceParent {
    /// The trace context of `span`, if it is part of a trace (tracing on).
    pub fn of(span: &tracing::Span) -> Option<Self> {
        Self::from_context(&span.context())
    }

    /// The context's W3C form; `None` when it holds no valid span.
    pub fn from_context(cx: &Context) -> Option<Self> {
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut carrier);
        let traceparent = carrier.remove("traceparent")?;
        let tracestate = carrier
            .remove("tracestate")
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE);
        Some(Self {
            traceparent,
            tracestate,
        })
    }

    /// Parses what a client or a message sent: `None` unless the
    /// `traceparent` is a valid W3C trace context (any bad or oversized
    /// `tracestate` is left out, the `traceparent` kept).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let cx = Self::extract(traceparent, tracestate);
        Self::from_context(&cx)
    }

    /// The remote context these fields describe, to parent a span on.
    pub fn context(&self) -> Context {
        Self::extract(&self.traceparent, self.tracestate.as_deref())
    }

    fn extract(traceparent: &str, tracestate: Option<&str>) -> Context {
        // W3C's version 00 exactly (the propagator is lenient: it pads a
        // short ID); the propagator then refuses all-zero IDs.
        if !well_formed(traceparent) {
            return Context::new();
        }
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert("traceparent".to_owned(), traceparent.to_owned());
        if let Some(state) = tracestate.filter(|s| s.len() <= MAX_TRACESTATE) {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier)
    }

    /// The 32-hex-digit trace ID.
    pub fn trace_id(&self) -> &str {
        trace_id_of(&self.traceparent).unwrap_or_default()
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, as W3C's version 00 is written.
fn well_formed(traceparent: &str) -> bool {
    let b = traceparent.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    b.len() == 55
        && b.starts_with(b"00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
}

/// The trace ID within a stored `traceparent` (`00-<trace>-<span>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

/// Makes `parent` (a stored or received trace context) the parent of
/// `span`, which must not have been entered yet; no-op when tracing is off.
pub fn set_parent(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(p) = parent {
        // Errs only when tracing is off or the span already started: then
        // the span simply stays where it is.
        let _ = span.set_parent(p.context());
    }
}

/// Sets the attributes that name a job on `span`'s trace span
/// (`genq.job_id`, `genq.user_id`, `genq.provider`); no-op untraced.
pub fn job_attributes(
    span: &tracing::Span,
    job: uuid::Uuid,
    user: uuid::Uuid,
    provider: Option<&str>,
) {
    if !exporting() {
        return;
    }
    span.set_attribute("genq.job_id", job.to_string());
    span.set_attribute("genq.user_id", user.to_string());
    if let Some(p) = provider {
        span.set_attribute("genq.provider", p.to_owned());
    }
}

/// An HTTP client span (OpenTelemetry's HTTP conventions) for a request
/// to `url`, named by the peer it goes to (`provider`, `download`,
/// `webhook`). Only the host and port are kept: paths and queries may carry
/// tokens. At DEBUG, so it costs nothing untraced.
pub fn http_client_span(method: &str, url: &url::Url, peer: &'static str) -> tracing::Span {
    tracing::debug_span!(
        "http",
        "otel.name" = %format!("{method} {peer}"),
        "otel.kind" = "client",
        "http.request.method" = method,
        "server.address" = url.host_str().unwrap_or_default(),
        "server.port" = url.port_or_known_default().unwrap_or_default(),
        "http.response.status_code" = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        "otel.status_code" = tracing::field::Empty,
    )
}

/// Records a client span's answer: its status, and an error for a 4xx/5xx.
pub fn record_http_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", status);
    if status >= 400 {
        span.record("error.type", status.to_string());
        span.record("otel.status_code", "ERROR");
    }
}

/// Records a client span's failure to get any answer.
pub fn record_http_failure(span: &tracing::Span, kind: &'static str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "ERROR");
}

/// The trace ID of `span` as text, for log lines; `None` when tracing is off.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (set once by `init_tracing`).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(crate) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether the environment asks for traces: an OTLP endpoint is set and
/// neither `OTEL_SDK_DISABLED` nor `OTEL_TRACES_EXPORTER=none` says no.
pub fn enabled() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let endpoint = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    endpoint && !disabled && !none
}

/// The tracer provider: OTLP/HTTP (protobuf) to the configured endpoint,
/// sampled as `OTEL_TRACES_SAMPLER` says (default: always, or as the
/// parent was), `service.name` from `OTEL_SERVICE_NAME` or `service`.
pub fn provider(service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP exporter: {e}"))?;
    let cap = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    // The SDK's own queue is kept larger than ours, so that it never drops
    // a span uncounted: ours refuses first, and counts.
    let batch = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(cap + 1)
            .build(),
    )
    .build();
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Bounded {
            inner: batch,
            queued,
            cap,
        })
        .with_resource(resource.build())
        .build())
}

/// The batch processor behind a bound of our own: a span over `cap`
/// waiting is dropped and counted, so an unreachable collector costs
/// memory up to the bound and nothing else.
#[derive(Debug)]
struct Bounded<P> {
    inner: P,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl<P: SpanProcessor> SpanProcessor for Bounded<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.cap {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("genq_trace_spans_dropped_total", "reason" => "queue_full")
                .increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting what it sent and what it failed to send, and
/// freeing the bound's room for both.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.queued.fetch_sub(n, Ordering::Relaxed);
        match &result {
            Ok(()) => metrics::counter!("genq_trace_spans_exported_total").increment(n as u64),
            Err(_) => {
                metrics::counter!("genq_trace_spans_dropped_total", "reason" => "export_failed")
                    .increment(n as u64)
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips_and_names_its_trace() {
        let p = TraceParent::parse(TP, Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(p.traceparent, TP);
        assert_eq!(p.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(p.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn hostile_trace_context_is_refused_or_trimmed() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01x",
            "not a trace",
        ] {
            assert_eq!(TraceParent::parse(bad, None), None, "{bad:?}");
        }
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE);
        let p = TraceParent::parse(TP, Some(&long)).expect("the traceparent stands");
        assert_eq!(p.tracestate, None);
    }
}
