//! Stored frames that do not decode (an event an older server stored too deep for protobuf
//! decoders, a damaged record): history pages and replays serve them without their payload,
//! and each is logged and counted, never left out. Does not own the reads themselves
//! (`history`, `subscription`).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use prost::Message;

use crate::{
    pb::{self, subscribe_response::Kind},
    store::{Cursor, StoredEvent},
    telemetry::Metrics,
};

/// The events of stored frames (a history page's), in the frames' order: one event for every
/// frame, so a page never silently leaves one out. A frame that does not decode (an event stored
/// before its nesting was bounded, too deep for any protobuf decoder; a damaged record) is served
/// as what can be read of it: its envelope without the payload (see [`unreadable_event`]), and
/// reported by `unreadable`.
pub(super) fn decode_events(
    stored: &[StoredEvent],
    cursor: impl Fn(u64) -> Cursor,
    unreadable: &Unreadable,
) -> Vec<pb::Event> {
    stored
        .iter()
        .map(
            |stored| match pb::SubscribeResponse::decode(stored.frame.clone()) {
                Ok(pb::SubscribeResponse {
                    kind: Some(Kind::Event(event)),
                }) => event,
                Ok(_) => {
                    unreadable.report(stored, &"the frame holds no event");
                    unreadable_event(stored, cursor(stored.position))
                }
                Err(error) => {
                    unreadable.report(stored, &error);
                    unreadable_event(stored, cursor(stored.position))
                }
            },
        )
        .collect()
}

/// Replaces each replayed frame that does not decode by the frame of its [`unreadable_event`],
/// so that a stream resuming over it is not stopped at it at every resume. Only frames of types
/// that can carry a `Struct` (untyped events, `app.updated`) are decoded to check: those are the
/// frames an older server stored too deep for protobuf decoders; every other frame is sent as
/// stored, undecoded, as before.
pub(super) fn make_replayable(
    events: &mut [StoredEvent],
    cursor: impl Fn(u64) -> Cursor,
    unreadable: &Unreadable,
) {
    for stored in events.iter_mut() {
        if !may_hold_struct(&stored.event_type) {
            continue;
        }
        if let Err(error) = pb::SubscribeResponse::decode(stored.frame.clone()) {
            unreadable.report(stored, &error);
            let event = unreadable_event(stored, cursor(stored.position));
            stored.frame = crate::store::encode_event_frame(&event);
        }
    }
}

/// Whether events of `event_type` can carry a `google.protobuf.Struct`.
fn may_hold_struct(event_type: &str) -> bool {
    !crate::schema::is_typed(event_type) || event_type == APP_UPDATED_TYPE
}

/// The one typed event with `Struct` fields (`old_values`, `new_values`).
const APP_UPDATED_TYPE: &str = "app.updated";

/// What a history page serves for a stored frame that does not decode: the event without its
/// payload. The type, user and device are the journal's (what routing and authorization used);
/// the id, times and trace context are read from the frame when its envelope can be (the
/// payload, where such frames fail, is skipped without being decoded), else left empty. A client
/// handles an event without a payload already: it is what an older client sees of a payload type
/// added after it was built.
fn unreadable_event(stored: &StoredEvent, cursor: Cursor) -> pb::Event {
    let envelope = StoredFrame::decode(stored.frame.clone())
        .ok()
        .and_then(|frame| frame.event)
        .unwrap_or_default();
    pb::Event {
        id: envelope.id,
        cursor: cursor.to_string(),
        r#type: stored.event_type.to_string(),
        user_id: stored.user_id.to_string(),
        device_id: stored.device_id.to_string(),
        occurred_at: envelope.occurred_at,
        received_at: envelope.received_at,
        traceparent: envelope.traceparent,
        tracestate: envelope.tracestate,
        payload: None,
    }
}

/// A stored `SubscribeResponse` read for its event's envelope only: the payload's fields are
/// not declared, so they are skipped, not decoded, however deep they nest.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredFrame {
    #[prost(message, optional, tag = "1")]
    event: Option<StoredEnvelope>,
}

/// The fields of `Event` before its payload (the same tags).
#[derive(Clone, PartialEq, prost::Message)]
struct StoredEnvelope {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "6")]
    occurred_at: Option<prost_types::Timestamp>,
    #[prost(message, optional, tag = "7")]
    received_at: Option<prost_types::Timestamp>,
    #[prost(string, tag = "8")]
    traceparent: String,
    #[prost(string, tag = "9")]
    tracestate: String,
}

/// Reports the stored frames that reads (history pages, replays) could not decode: each read
/// counts in `notify_unreadable_events_total`, and each position is logged (WARN) once while it
/// is among the last [`UNREADABLE_LOGGED`] positions logged, so a page read again and again
/// does not flood the log.
pub(super) struct Unreadable {
    metrics: Arc<Metrics>,
    logged: Mutex<VecDeque<u64>>,
}

/// How many positions [`Unreadable`] remembers having logged.
const UNREADABLE_LOGGED: usize = 1024;

impl Unreadable {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            logged: Mutex::new(VecDeque::new()),
        }
    }

    fn report(&self, stored: &StoredEvent, error: &dyn std::fmt::Display) {
        self.metrics.unreadable_events.inc();
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if logged.contains(&stored.position) {
            return;
        }
        if logged.len() == UNREADABLE_LOGGED {
            logged.pop_front();
        }
        logged.push_back(stored.position);
        drop(logged);
        tracing::warn!(
            position = stored.position,
            event_type = %stored.event_type,
            user_id = %stored.user_id,
            %error,
            "a stored event does not decode: it is served without its payload"
        );
    }
}
