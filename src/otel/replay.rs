//! Hand-off spans of replayed events: read from the journal, an event's frame gets a span only
//! if it names a trace, the sampler keeps it, and this second's budget
//! ([`MAX_REPLAY_SPANS_PER_SECOND`]) has room, so a storm of resumes cannot crowd out the live
//! events' spans. Does not own live hand-offs (`event`, `delivery`).

use std::{
    sync::{Arc, Mutex, atomic::Ordering},
    time::SystemTime,
};

use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
use opentelemetry_sdk::trace::SamplingDecision;
use prost::Message as _;

use super::{
    Delivery, FrameTrace, Tracing, context::extract, delivery::FrameKind, pipeline::Pipeline,
};

/// The most hand-off spans of replayed events recorded per second, all streams together (and
/// at most [`MAX_HANDOFF_SPANS`] per stream).
const MAX_REPLAY_SPANS_PER_SECOND: u64 = 512;

impl Pipeline {
    /// One replayed hand-off span more this second, if fewer than
    /// [`MAX_REPLAY_SPANS_PER_SECOND`] were recorded: a storm of resumes after a restart
    /// must not crowd the live events' spans out of the export queue.
    fn take_replay_budget(&self) -> bool {
        let second = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() & 0xffff_ffff);
        self.replay_budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let (at, used) = (packed >> 32, packed & 0xffff_ffff);
                if at != second {
                    Some(second << 32 | 1)
                } else if used < MAX_REPLAY_SPANS_PER_SECOND {
                    Some(packed + 1)
                } else {
                    None
                }
            })
            .is_ok()
    }
}

impl Tracing {
    /// For a replayed frame (an encoded `SubscribeResponse` from the journal), queued now for
    /// a stream: its hand-off span, started now, if its event has a `traceparent`, the sampler
    /// keeps it, and this second's budget ([`MAX_REPLAY_SPANS_PER_SECOND`]) has room. The span
    /// is a child of that `traceparent` (the ingest span for an event traced when it came in).
    pub fn replayed(&self, frame: &[u8], delivery: Delivery) -> Option<Arc<FrameTrace>> {
        let pipeline = self.0.as_ref()?;
        let traced = TracedResponse::decode(frame).ok()?.event?;
        if traced.traceparent.is_empty() {
            return None;
        }
        let parent = extract(&traced.traceparent, &traced.tracestate);
        let trace_id = parent.span().span_context().trace_id();
        if !parent.span().span_context().is_valid() {
            return None;
        }
        let decision = pipeline
            .sampler
            .should_sample(
                Some(&parent),
                trace_id,
                "notify.deliver",
                &SpanKind::Internal,
                &[],
                &[],
            )
            .decision;
        if decision != SamplingDecision::RecordAndSample || !pipeline.take_replay_budget() {
            return None;
        }
        let span = pipeline
            .tracer
            .span_builder("notify.deliver")
            .with_kind(SpanKind::Internal)
            .start_with_context(&pipeline.tracer, &parent);
        Some(Arc::new(FrameTrace {
            delivery,
            trace_id,
            kind: FrameKind::Replayed(Box::new(Mutex::new(Some(span)))),
        }))
    }
}

/// Just enough of a stored `SubscribeResponse { event }` to find its trace: prost skips the
/// other fields without decoding them.
#[derive(Clone, PartialEq, prost::Message)]
struct TracedResponse {
    #[prost(message, optional, tag = "1")]
    event: Option<TracedEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TracedEvent {
    #[prost(string, tag = "8")]
    traceparent: String,
    #[prost(string, tag = "9")]
    tracestate: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[test]
    fn the_trace_of_a_stored_frame_is_read_without_decoding_the_event() {
        let frame = pb::SubscribeResponse {
            kind: Some(pb::subscribe_response::Kind::Event(pb::Event {
                id: "e1".into(),
                r#type: "device.started".into(),
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ..pb::Event::default()
            })),
        }
        .encode_to_vec();
        let traced = TracedResponse::decode(frame.as_slice())
            .unwrap()
            .event
            .unwrap();
        assert_eq!(
            traced.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
