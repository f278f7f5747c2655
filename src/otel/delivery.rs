//! How a frame reached a subscriber's stream ([`Delivery`]) and [`FrameTrace`]: a sampled
//! event's frame on its way to a stream, whose hand-off span ends when the stream takes it.
//! Does not own which replayed frames get a span (`replay`) or the event's other spans
//! (`event`).

use std::{
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use opentelemetry::{
    KeyValue,
    trace::{Span as _, TraceContextExt as _, TraceId},
};

use super::EventTrace;

/// How a frame reached a subscriber's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// From the live feed (the subscriber's mailbox).
    Live,
    /// Replayed from the journal after `resume_after`.
    Resume,
    /// Replayed from the journal after the subscriber lagged.
    CatchUp,
}

impl Delivery {
    /// `live`, `resume` or `catch_up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Live => "live",
            Delivery::Resume => "resume",
            Delivery::CatchUp => "catch_up",
        }
    }
}

/// A frame of a sampled event on its way to one subscriber's stream (or, live, to all of
/// them: one shared `Arc`).
#[derive(Debug)]
pub struct FrameTrace {
    pub(super) delivery: Delivery,
    pub(super) trace_id: TraceId,
    pub(super) kind: FrameKind,
}

#[derive(Debug)]
pub(super) enum FrameKind {
    /// From the live feed: the event's trace, and when fan-out queued it.
    Live {
        event: EventTrace,
        queued_at: SystemTime,
    },
    /// From the journal: its hand-off span, started when it was read, ended when the stream
    /// takes the frame (or, never taken, when the frame is dropped).
    Replayed(Box<Mutex<Option<opentelemetry_sdk::trace::Span>>>),
}

impl FrameTrace {
    /// A live frame of `event`, queued now.
    pub fn live(event: EventTrace) -> Arc<Self> {
        Arc::new(Self {
            delivery: Delivery::Live,
            trace_id: event.0.cx.span().span_context().trace_id(),
            kind: FrameKind::Live {
                event,
                queued_at: SystemTime::now(),
            },
        })
    }

    /// Live, or replayed.
    pub fn delivery(&self) -> Delivery {
        self.delivery
    }

    /// The event's trace id (32 hex digits).
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }

    /// The frame left for subscriber `subscriber`'s stream, `lag` events behind the newest
    /// (`published_at`: when a live event entered the server). Live: at most
    /// [`MAX_HANDOFF_SPANS`] spans per event.
    pub fn handed_off(&self, subscriber: u64, lag: u64, published_at: Option<Instant>) {
        let mut attributes = vec![
            KeyValue::new(
                "notify.subscriber.id",
                i64::try_from(subscriber).unwrap_or(i64::MAX),
            ),
            KeyValue::new("notify.delivery", self.delivery.as_str()),
            KeyValue::new(
                "notify.delivery.lag",
                i64::try_from(lag).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(at) = published_at {
            attributes.push(KeyValue::new(
                "notify.delivery.latency_ms",
                at.elapsed().as_secs_f64() * 1000.0,
            ));
        }
        match &self.kind {
            FrameKind::Live { event, queued_at } => event.handed_off(*queued_at, attributes),
            FrameKind::Replayed(span) => {
                let span = span
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take();
                if let Some(mut span) = span {
                    span.set_attributes(attributes);
                    span.end();
                }
            }
        }
    }
}

impl Drop for FrameTrace {
    fn drop(&mut self) {
        if let FrameKind::Replayed(span) = &mut self.kind {
            let span = span
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(mut span) = span {
                // The stream ended before it sent this frame.
                span.set_attribute(KeyValue::new("notify.delivered", false));
                span.end();
            }
        }
    }
}
