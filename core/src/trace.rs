//! OpenTelemetry traces: the exporter set-up (OTLP over HTTP, configured by
//! the standard `OTEL_*` variables, off when no endpoint is set), the bound
//! on spans waiting to be sent, and W3C trace context in and out of the
//! text forms genq stores and sends (`traceparent`, `tracestate`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
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
        // Untraced, every publish asks: answer without the subscriber.
        if !exporting() {
            return None;
        }
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

/// Links `span` to `to`'s trace span (a batch to each request it serves:
/// the batch is in a trace of its own, its requests in theirs); no-op
/// untraced.
pub fn link(span: &tracing::Span, to: &tracing::Span) {
    if !exporting() {
        return;
    }
    let cx = to.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.add_link(sc);
    }
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
    let env = |key: &str, default: usize| {
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default)
    };
    let cap = env("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE);
    let batcher = Batcher::start(
        exporter,
        cap,
        env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH).min(cap),
        Duration::from_millis(env("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY_MS) as u64),
    )?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batcher)
        .with_resource(resource.build())
        .build())
}

/// Spans sent in one export, at most.
const DEFAULT_BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const DEFAULT_DELAY_MS: usize = 5_000;

/// Batches ended spans for the exporter, which runs on a thread of its
/// own. A span is pushed under a short lock, and the thread is woken only
/// when a batch is full (or at its interval): the SDK's batch processor
/// wakes its thread for every span, which cost a traced submission a third
/// more CPU. Spans past `cap` waiting are dropped and counted, so a
/// collector that is down costs memory up to the bound and nothing else.
#[derive(Debug)]
struct Batcher<E: SpanExporter + 'static> {
    shared: Arc<Shared<E>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared<E> {
    queue: std::sync::Mutex<Queue>,
    wake: std::sync::Condvar,
    /// Signalled after each round the thread completes.
    done: std::sync::Condvar,
    exporter: std::sync::Mutex<E>,
    cap: usize,
    batch: usize,
    delay: Duration,
}

#[derive(Debug, Default)]
struct Queue {
    spans: Vec<SpanData>,
    /// Rounds the thread started (took the waiting spans) and completed;
    /// a flush waits for a round that starts after it asks.
    started: u64,
    rounds: u64,
    flush: bool,
    stop: bool,
}

impl<E: SpanExporter + 'static> Batcher<E> {
    fn start(exporter: E, cap: usize, batch: usize, delay: Duration) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Default::default(),
            wake: Default::default(),
            done: Default::default(),
            exporter: std::sync::Mutex::new(exporter),
            cap,
            batch: batch.max(1),
            delay,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("genq-traces".into())
            .spawn(move || worker.run())?;
        Ok(Self {
            shared,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Asks the thread for a round now and waits (within `timeout`) for it.
    fn round_now(&self, stop: bool, timeout: Duration) {
        let shared = &self.shared;
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let target = q.started + 1;
        q.flush = true;
        q.stop |= stop;
        shared.wake.notify_one();
        let _ = shared
            .done
            .wait_timeout_while(q, timeout, |q| q.rounds < target);
    }
}

impl<E: SpanExporter> Shared<E> {
    fn run(&self) {
        loop {
            let (spans, stop) = {
                let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let (mut q, _) = self
                    .wake
                    .wait_timeout_while(q, self.delay, |q| {
                        q.spans.len() < self.batch && !q.flush && !q.stop
                    })
                    .unwrap_or_else(|e| e.into_inner());
                q.flush = false;
                q.started += 1;
                (std::mem::take(&mut q.spans), q.stop)
            };
            self.export(spans);
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.rounds += 1;
            self.done.notify_all();
            if stop {
                return;
            }
        }
    }

    fn export(&self, spans: Vec<SpanData>) {
        let exporter = self.exporter.lock().unwrap_or_else(|e| e.into_inner());
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            let chunk: Vec<SpanData> = spans.by_ref().take(self.batch).collect();
            let n = chunk.len() as u64;
            // The OTLP/HTTP exporter's client is blocking: the future is done
            // when polled once, bounded by its own timeout.
            match futures::executor::block_on(exporter.export(chunk)) {
                Ok(()) => metrics::counter!("genq_trace_spans_exported_total").increment(n),
                Err(_) => {
                    metrics::counter!("genq_trace_spans_dropped_total", "reason" => "export_failed")
                        .increment(n)
                }
            }
        }
    }
}

impl<E: SpanExporter + 'static> SpanProcessor for Batcher<E> {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let shared = &self.shared;
        let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.spans.len() >= shared.cap || q.stop {
            drop(q);
            metrics::counter!("genq_trace_spans_dropped_total", "reason" => "queue_full")
                .increment(1);
            return;
        }
        q.spans.push(span);
        if q.spans.len() == shared.batch {
            shared.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.round_now(false, Duration::from_secs(10));
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.round_now(true, timeout);
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
        let exporter = self
            .shared
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        exporter.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.shared
            .exporter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
    use std::sync::{Condvar, Mutex};

    /// An exporter that holds each export until opened, and counts.
    #[derive(Debug, Clone, Default)]
    struct Gate {
        received: Arc<Mutex<usize>>,
        open: Arc<(Mutex<bool>, Condvar)>,
    }

    impl SpanExporter for Gate {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let (lock, cv) = &*self.open;
            let _open = cv.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
            *self.received.lock().unwrap() += batch.len();
            Ok(())
        }
    }

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: vec![],
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn spans_past_the_bound_are_dropped_and_a_flush_sends_the_rest() {
        let gate = Gate::default();
        let batcher = Batcher::start(gate.clone(), 4, 2, Duration::from_secs(3600)).unwrap();
        // A full batch wakes the thread, which then waits on the exporter.
        batcher.on_end(span());
        batcher.on_end(span());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while batcher.shared.queue.lock().unwrap().started == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the thread never took the batch"
            );
            std::thread::yield_now();
        }
        // Four more wait (the bound); three past it are dropped.
        for _ in 0..7 {
            batcher.on_end(span());
        }
        assert_eq!(batcher.shared.queue.lock().unwrap().spans.len(), 4);
        *gate.open.0.lock().unwrap() = true;
        gate.open.1.notify_all();
        // The flush waits for a round begun after it: every waiting span sent.
        batcher.force_flush().unwrap();
        assert_eq!(*gate.received.lock().unwrap(), 6);
        batcher.shutdown().unwrap();
    }

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
