//! W3C trace context: a `traceparent`/`tracestate` pair read as a parent context, and a span's
//! context written back as a `traceparent`. Does not own where the pair comes from (`ingest`,
//! `replay`, `grpc::rpc_span`).

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator as _},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// A W3C `traceparent`/`tracestate` pair as a parent context (empty if malformed).
pub(super) fn extract(traceparent: &str, tracestate: &str) -> Context {
    struct Pair<'a>(&'a str, &'a str);
    impl Extractor for Pair<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" if !self.0.is_empty() => Some(self.0),
                "tracestate" if !self.1.is_empty() => Some(self.1),
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    if traceparent.is_empty() {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&Pair(traceparent, tracestate))
}

/// `00-<trace id>-<span id>-<flags>`.
pub(super) fn traceparent_of(span: &opentelemetry::trace::SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt as _;

    use super::*;

    #[test]
    fn a_traceparent_becomes_the_parent_and_a_bad_one_starts_a_new_trace() {
        let cx = extract(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "vendor=x",
        );
        let span = cx.span().span_context().clone();
        assert!(span.is_valid() && span.is_sampled() && span.is_remote());
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            traceparent_of(&span),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        for bad in ["", "garbage", "00-0000-0000-01"] {
            assert!(!extract(bad, "").span().span_context().is_valid(), "{bad}");
        }
    }
}
