//! [`EventTrace`]: a sampled event's trace while it travels through this node, and the spans of
//! its later stages: journal append, fan-out and the live feed's hand-offs (at most
//! [`MAX_HANDOFF_SPANS`]). Does not own the ingest span that starts it (`ingest`) or a frame's
//! hand-off to one stream (`delivery`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::SystemTime,
};

use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use opentelemetry_sdk::trace::SdkTracer;

/// The most `notify.deliver` spans one sampled event records (the first subscribers to take
/// it); the rest are left out. Also the most one replaying stream records.
pub const MAX_HANDOFF_SPANS: u32 = 64;

/// A sampled event's trace while it travels through this node; cheap to clone.
#[derive(Clone)]
pub struct EventTrace(pub(super) Arc<Traced>);

pub(super) struct Traced {
    pub(super) tracer: SdkTracer,
    /// The ingest span: the parent of the rest.
    pub(super) cx: Context,
    pub(super) handoffs_left: AtomicU32,
}

impl std::fmt::Debug for EventTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EventTrace({})", self.trace_id())
    }
}

impl EventTrace {
    /// The trace id (32 hex digits).
    fn trace_id(&self) -> String {
        self.0.cx.span().span_context().trace_id().to_string()
    }

    /// The journal append that stored the event: `batch` events in one commit, which ran
    /// from `started` to `ended` (the durability wait included).
    pub fn journaled(&self, started: SystemTime, ended: SystemTime, batch: usize, duplicate: bool) {
        let attributes = vec![
            KeyValue::new("notify.journal.batch_size", batch as i64),
            KeyValue::new("notify.journal.duplicate", duplicate),
        ];
        self.record("notify.journal.append", started, ended, attributes);
    }

    /// The fan-out that handed the event to `subscribers` subscribers' queues.
    pub fn fanned_out(&self, started: SystemTime, ended: SystemTime, subscribers: u64) {
        let attributes = vec![KeyValue::new(
            "notify.fanout.subscribers",
            i64::try_from(subscribers).unwrap_or(i64::MAX),
        )];
        self.record("notify.fanout", started, ended, attributes);
    }

    /// A hand-off span of the live feed, if this event has not recorded
    /// [`MAX_HANDOFF_SPANS`] yet.
    pub(super) fn handed_off(&self, queued_at: SystemTime, attributes: Vec<KeyValue>) {
        let left = self
            .0
            .handoffs_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if left.is_ok() {
            self.record("notify.deliver", queued_at, SystemTime::now(), attributes);
        }
    }

    /// The journal refused the batch that held the event: an error span, and the trace ends.
    pub fn journal_failed(&self, started: SystemTime, ended: SystemTime, error: &str) {
        let tracer = &self.0.tracer;
        let mut span = tracer
            .span_builder("notify.journal.append")
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .start_with_context(tracer, &self.0.cx);
        span.set_status(Status::error(error.to_owned()));
        span.end_with_timestamp(ended.max(started));
    }

    fn record(
        &self,
        name: &'static str,
        started: SystemTime,
        ended: SystemTime,
        attributes: Vec<KeyValue>,
    ) {
        let tracer = &self.0.tracer;
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(attributes)
            .start_with_context(tracer, &self.0.cx);
        span.end_with_timestamp(ended.max(started));
    }
}
