//! The ingest span (`notify.ingest`) of an accepted or refused message, and its parent: the
//! AMQP headers' context, the `Publish` call's span, or the event's own `traceparent`. Owns
//! [`Source`] and the sampler's one decision per event, taken here. Does not own the exporter
//! (`pipeline`) or what a sampled event records later (`event`).

use std::{
    sync::{Arc, atomic::AtomicU32},
    time::SystemTime,
};

use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _},
};

use super::{
    EventTrace, MAX_HANDOFF_SPANS, Tracing,
    context::{extract, traceparent_of},
    event::Traced,
    pipeline::Pipeline,
};
use crate::schema::Decoded;

impl Pipeline {
    /// A `notify.ingest` span started at `started` under the parent `source` and the event's
    /// own context name, if the sampler keeps it. Sampled first, attributes after: an
    /// unsampled event allocates none of them.
    fn ingest_span(
        &self,
        source: &Source<'_>,
        started: SystemTime,
        traceparent: &str,
        tracestate: &str,
    ) -> Option<opentelemetry_sdk::trace::Span> {
        let parent = parent_context(source, traceparent, tracestate);
        let span = self
            .tracer
            .span_builder("notify.ingest")
            .with_kind(span_kind(source))
            .with_start_time(started)
            .start_with_context(&self.tracer, &parent);
        span.span_context().is_sampled().then_some(span)
    }
}

/// Where an event came from, for its ingest span.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A RabbitMQ delivery.
    Amqp {
        /// The exchange it was published to.
        exchange: &'a str,
        /// Its routing key.
        routing_key: &'a str,
        /// Body bytes.
        body_len: usize,
        /// Delivered before (a redelivery after a failure).
        redelivered: bool,
        /// A `traceparent` AMQP header, where the producer set one (it wins over the body's).
        traceparent: Option<&'a str>,
        /// A `tracestate` AMQP header.
        tracestate: Option<&'a str>,
    },
    /// A `Publish` call (or one request of a `PublishStream`).
    Rpc {
        /// The routing key asked for.
        routing_key: &'a str,
        /// Body bytes.
        body_len: usize,
        /// The call's server span (see `grpc::rpc_span`).
        call: Option<&'a Context>,
        /// Whether the call continued its caller's trace (`traceparent` metadata): then the
        /// call's span is the event's parent, else the body's `_trace` is, if it has one.
        continued: bool,
    },
}

impl Tracing {
    /// Records the ingest span of an accepted event (started at `started`, when the message
    /// arrived) as a child of its producer's context, and returns what the later stages need
    /// if the event is sampled. A sampled event whose own `traceparent` is missing, or names
    /// another trace than its ingest span's (the AMQP header or the call won), gets the ingest
    /// span's: subscribers, the live page and a replay later then lead to where its spans are.
    pub fn ingested(
        &self,
        source: &Source<'_>,
        started: SystemTime,
        decoded: &mut Decoded,
    ) -> Option<EventTrace> {
        let pipeline = self.0.as_ref()?;
        let event = &mut decoded.event;
        let mut span =
            pipeline.ingest_span(source, started, &event.traceparent, &event.tracestate)?;
        let mut attributes = source_attributes(source);
        attributes.push(KeyValue::new("notify.event.id", event.id.clone()));
        attributes.push(KeyValue::new("notify.event.type", event.r#type.clone()));
        span.set_attributes(attributes);
        let own_trace = extract(&event.traceparent, &event.tracestate)
            .span()
            .span_context()
            .trace_id();
        if own_trace != span.span_context().trace_id() {
            event.traceparent = traceparent_of(span.span_context());
            event.tracestate = span.span_context().trace_state().header();
        }
        span.end();
        let cx = Context::new().with_span(span);
        Some(EventTrace(Arc::new(Traced {
            tracer: pipeline.tracer.clone(),
            cx,
            handoffs_left: AtomicU32::new(MAX_HANDOFF_SPANS),
        })))
    }

    /// Records the ingest span of a refused message: its reason (`error.type`) and detail,
    /// in the producer's trace when the headers or the body say which.
    pub fn refused(
        &self,
        source: &Source<'_>,
        started: SystemTime,
        body: &[u8],
        reason: &str,
        detail: &str,
    ) {
        let Some(pipeline) = self.0.as_ref() else {
            return;
        };
        let (traceparent, tracestate) = crate::schema::trace_context(body);
        let Some(mut span) = pipeline.ingest_span(source, started, &traceparent, &tracestate)
        else {
            return;
        };
        let mut attributes = source_attributes(source);
        attributes.push(KeyValue::new("error.type", reason.to_owned()));
        attributes.push(KeyValue::new("notify.refused.reason", reason.to_owned()));
        attributes.push(KeyValue::new("notify.refused.detail", detail.to_owned()));
        span.set_attributes(attributes);
        span.set_status(Status::error(format!("{reason}: {detail}")));
        span.end();
    }
}

fn span_kind(source: &Source<'_>) -> SpanKind {
    match source {
        Source::Amqp { .. } => SpanKind::Consumer,
        Source::Rpc { .. } => SpanKind::Internal,
    }
}

/// The messaging semantic conventions' attributes of a delivery, or the call's.
fn source_attributes(source: &Source<'_>) -> Vec<KeyValue> {
    match *source {
        Source::Amqp {
            exchange,
            routing_key,
            body_len,
            redelivered,
            ..
        } => vec![
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", exchange.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                routing_key.to_owned(),
            ),
            KeyValue::new("messaging.message.body.size", body_len as i64),
            KeyValue::new("notify.redelivered", redelivered),
        ],
        Source::Rpc {
            routing_key,
            body_len,
            ..
        } => vec![
            KeyValue::new("notify.ingest.path", "publish"),
            KeyValue::new("notify.routing_key", routing_key.to_owned()),
            KeyValue::new("messaging.message.body.size", body_len as i64),
        ],
    }
}

/// The parent of an ingest span: the AMQP headers' context, or the call's span, or else the
/// event's own `traceparent` (the body's `_trace`); an empty context (a new trace) if none.
fn parent_context(source: &Source<'_>, traceparent: &str, tracestate: &str) -> Context {
    match source {
        Source::Amqp {
            traceparent: Some(header),
            tracestate: state,
            ..
        } => {
            let cx = extract(header, state.unwrap_or(""));
            if cx.span().span_context().is_valid() {
                return cx;
            }
        }
        Source::Rpc {
            call: Some(call),
            continued: true,
            ..
        } => return (*call).clone(),
        _ => {}
    }
    let own = extract(traceparent, tracestate);
    match source {
        // A call that started a trace of its own is the parent only of events with no context.
        Source::Rpc {
            call: Some(call), ..
        } if !own.span().span_context().is_valid() => (*call).clone(),
        _ => own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn a_refused_body_still_names_its_trace_when_it_is_json() {
        let (parent, state) = crate::schema::trace_context(
            br#"{"a":1,"_trace":{"traceparent":"00-x","tracestate":"s"}}"#,
        );
        assert_eq!((parent.as_str(), state.as_str()), ("00-x", "s"));
        assert_eq!(
            crate::schema::trace_context(b"{not json"),
            (String::new(), String::new())
        );
    }

    #[test]
    fn off_records_nothing() {
        let tracing = Tracing::off();
        assert!(!tracing.is_on());
        let mut decoded = Decoded {
            event: pb::Event::default(),
            admin_notice: None,
        };
        let source = Source::Rpc {
            routing_key: "device.started",
            body_len: 2,
            call: None,
            continued: false,
        };
        assert!(
            tracing
                .ingested(&source, SystemTime::now(), &mut decoded)
                .is_none()
        );
        assert!(decoded.event.traceparent.is_empty());
    }
}
