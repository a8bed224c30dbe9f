//! W3C trace context in AMQP message headers (`traceparent`, `tracestate`),
//! so that a consumer's span joins the trace of the message's job.

use genq_core::trace::TraceParent;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::publisher::header_str;

/// Headers carrying `trace`; empty without one.
pub fn trace_headers(trace: Option<&TraceParent>) -> FieldTable {
    let mut headers = FieldTable::default();
    if let Some(t) = trace {
        headers.insert(
            ShortString::from("traceparent"),
            AMQPValue::LongString(LongString::from(t.traceparent.as_str())),
        );
        if let Some(state) = &t.tracestate {
            headers.insert(
                ShortString::from("tracestate"),
                AMQPValue::LongString(LongString::from(state.as_str())),
            );
        }
    }
    headers
}

/// Headers carrying the trace of the current span (traces on), else none.
pub fn current_trace_headers() -> FieldTable {
    trace_headers(TraceParent::of(&tracing::Span::current()).as_ref())
}

/// The trace context a delivery carries, if valid (anyone can publish to
/// the broker: it is checked like a client's).
pub fn delivery_trace(props: &BasicProperties) -> Option<TraceParent> {
    let traceparent = header_str(props, "traceparent")?;
    TraceParent::parse(&traceparent, header_str(props, "tracestate").as_deref())
}

/// A producer span (OpenTelemetry's messaging conventions) for a publish,
/// child of the current span; at DEBUG, so it costs nothing untraced.
pub fn producer_span(exchange: &str, routing_key: &str) -> tracing::Span {
    tracing::debug_span!(
        "publish",
        "otel.name" = %format!("publish {routing_key}"),
        "otel.kind" = "producer",
        "messaging.system" = "rabbitmq",
        "messaging.operation.type" = "send",
        "messaging.destination.name" = exchange,
        "messaging.rabbitmq.destination.routing_key" = routing_key,
    )
}

/// The consumer span of one delivery, child of the trace the message
/// carries. Its OpenTelemetry attributes stay out of log lines; the trace
/// ID is a field, so that every line logged while handling it names it.
/// Untraced, a message without a trace gets no span (and `queue`, its
/// name, is not made).
pub fn consumer_span(
    queue: impl FnOnce() -> String,
    props: &BasicProperties,
    routing_key: &str,
) -> tracing::Span {
    use tracing::field::Empty;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let parent = delivery_trace(props);
    if parent.is_none() && !genq_core::trace::exporting() {
        // Nothing to trace and no trace ID to log: no span to pay for.
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "delivery",
        "otel.name" = Empty,
        "otel.kind" = Empty,
        trace_id = Empty
    );
    if span.is_disabled() {
        return span;
    }
    if genq_core::trace::exporting() {
        // Recorded only when traced: log lines stay short otherwise.
        let queue = queue();
        span.record("otel.name", format!("process {queue}"));
        span.record("otel.kind", "consumer");
        genq_core::trace::set_parent(&span, parent.as_ref());
        span.set_attribute("messaging.system", "rabbitmq");
        span.set_attribute("messaging.operation.type", "process");
        span.set_attribute("messaging.destination.name", queue);
        span.set_attribute(
            "messaging.rabbitmq.destination.routing_key",
            routing_key.to_owned(),
        );
    }
    // With traces off, the message's own trace ID still names the lines.
    let trace_id = genq_core::trace::trace_id(&span)
        .or_else(|| parent.as_ref().map(|p| p.trace_id().to_owned()));
    if let Some(id) = trace_id {
        span.record("trace_id", tracing::field::display(id));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_headers() {
        let t = TraceParent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("rojo=00f067aa0ba902b7"),
        )
        .unwrap();
        let props = BasicProperties::default().with_headers(trace_headers(Some(&t)));
        assert_eq!(delivery_trace(&props), Some(t));
        assert_eq!(delivery_trace(&BasicProperties::default()), None);
    }
}
