//! A producer's body: bytes to a JSON object, and the envelope around the event's fields.
//!
//! Owns the body-level errors (empty, not UTF-8, not JSON, not an object) and the four shapes of
//! `docs/wire-format.md` "Body shapes": fields are read from `payload` when the body has a
//! `payload` object (shape D) and from the body itself otherwise (shapes A–C). `_trace` and
//! `eventId` are always read at the top level, where every producer puts them.

use prost_types::Timestamp;
use serde_json::{Map, Value};

use super::DecodeError;
use super::fields::Fields;

/// The top-level key of the W3C trace context the producers attach.
pub(super) const TRACE_KEY: &str = "_trace";

/// Parses `bytes` into the body's top-level object.
pub(super) fn parse(bytes: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DecodeError::NotObject),
        Err(error) => Err(DecodeError::NotJson(error.to_string())),
    }
}

/// A parsed body: its top level and where the event's fields are.
#[derive(Debug, Clone)]
pub(super) struct Body<'a> {
    /// The top-level object.
    pub(super) root: Fields<'a>,
    /// The event's fields: `payload` in an envelope, else the top level.
    pub(super) fields: Fields<'a>,
    /// Whether the body is an envelope (shape D).
    enveloped: bool,
}

impl<'a> Body<'a> {
    /// Finds the event's fields in the top-level object `root`.
    pub(super) fn new(root: &'a Map<String, Value>) -> Self {
        match root.get("payload") {
            Some(Value::Object(payload)) => Self {
                root: Fields::new(root, ""),
                fields: Fields::new(payload, "payload."),
                enveloped: true,
            },
            _ => Self {
                root: Fields::new(root, ""),
                fields: Fields::new(root, ""),
                enveloped: false,
            },
        }
    }

    /// The body's `timestamp`: the payload's if it has one, else the envelope's.
    pub(super) fn timestamp(&self) -> Result<Option<Timestamp>, DecodeError> {
        match self.fields.date("timestamp")? {
            Some(timestamp) => Ok(Some(timestamp)),
            None if self.enveloped => self.root.date("timestamp"),
            None => Ok(None),
        }
    }

    /// The producer's `eventId` when it sent a non-empty one.
    pub(super) fn event_id(&self) -> Result<Option<String>, DecodeError> {
        Ok(self.root.string("eventId")?.filter(|id| !id.is_empty()))
    }

    /// `traceparent` and `tracestate` from `_trace`, empty when absent. Tracing is best effort:
    /// a malformed `_trace` never costs the event, so values of the wrong type are ignored.
    pub(super) fn trace(&self) -> (String, String) {
        let Some(Value::Object(trace)) = self.root.get(TRACE_KEY) else {
            return (String::new(), String::new());
        };
        let text = |key: &str| match trace.get(key) {
            Some(Value::String(text)) => text.clone(),
            _ => String::new(),
        };
        (text("traceparent"), text("tracestate"))
    }

    /// The whole body without `_trace`: what an untyped event carries.
    pub(super) fn without_trace(&self) -> Map<String, Value> {
        let mut map = self.root.map().clone();
        map.remove(TRACE_KEY);
        map
    }
}
