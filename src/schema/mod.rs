//! Decoding: producer JSON (every shape in `docs/wire-format.md`) or a typed `pb::Event` → a
//! validated `pb::Event`, plus the admin notice it implies.
//!
//! Owns: routing-key and field aliases, body shapes A–D, exact money, timestamps, event ids,
//! deriving admin notices, which events are state and their conflation keys (`conflation`),
//! and the bounds every accepted event keeps (the grammar of event types, the length of ids,
//! no user `*`, the nesting clients can decode, `--max-event-bytes`), so that every ingest
//! path applies the same ones.
//! Does not own: I/O of any kind, cursors (the journal assigns them), or who may see an event
//! (`auth`).
//! Everything here is a pure function, so it is unit tested from fixtures and fuzzable.

mod admin;
mod body;
mod catalog;
mod conflation;
mod dates;
mod fields;
mod id;
mod json_struct;
mod money;
mod nesting;
mod routing;
mod typed;

#[cfg(test)]
mod tests;

use std::time::SystemTime;

use body::Body;
use catalog::Content;
use routing::Route;

use crate::pb;

/// The type of derived admin notices (`Event.type`).
pub const ADMIN_NOTICE_TYPE: &str = "admin.notice";

/// AMQP-style message properties that decoding may use.
#[derive(Debug, Clone, Copy)]
pub struct Properties {
    /// The AMQP `timestamp` property as the producers send it: milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// When notify-backbone accepted the message; becomes `Event.received_at`.
    pub received_at: SystemTime,
}

/// Knobs that change what decoding accepts.
#[derive(Debug, Clone, Copy)]
pub struct DecodeSettings {
    /// Reject events of a known family whose routing key has no typed message, instead of
    /// delivering them with an untyped `Struct` payload.
    pub strict_schema: bool,
    /// The largest body (JSON text, or an encoded typed event) and the largest event, encoded,
    /// that decoding accepts (`--max-event-bytes`); at most [`MAX_EVENT_BYTES_CEILING`].
    pub max_event_bytes: usize,
}

impl Default for DecodeSettings {
    fn default() -> Self {
        Self {
            strict_schema: false,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// `--max-event-bytes` by default: far above any event the platform publishes (a few KiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;

/// The highest `--max-event-bytes` may be: a default gRPC client refuses messages over 4 MiB,
/// and a stored event that a subscriber cannot receive would stop that subscriber at every
/// resume and every history page, for good. 64 KiB stay for what the journal adds (cursor,
/// framing).
pub const MAX_EVENT_BYTES_CEILING: usize = 4 * 1024 * 1024 - 64 * 1024;

/// The longest event id, user id and device id accepted, in bytes: the same bound a
/// subscription's filter has, so every stored id can be asked for.
pub const MAX_ID_BYTES: usize = 256;

/// The word a subscription's `user_id` uses for every user's events (the firehose). It is never
/// an event's user: an event stored for it could not be asked for by its user id, and would
/// reach a token whose subject is `*` as if it were its own.
pub const FIREHOSE_SELECTOR: &str = "*";

/// W3C trace context: a version-00 `traceparent` is 55 characters (later versions may append
/// fields), and systems need pass on no more than 512 characters of `tracestate`. These bounds
/// keep every well-formed value and drop absurd ones.
const MAX_TRACEPARENT_BYTES: usize = 256;
const MAX_TRACESTATE_BYTES: usize = 1024;

/// The longest routing key (event type), in bytes: the longest event-type pattern a
/// subscription may carry, so every stored type can be named by one.
pub const MAX_ROUTING_KEY_BYTES: usize = 128;

/// The `_trace` context (`traceparent`, `tracestate`) of a body, read as [`decode`] reads it,
/// bounds included: for the span of a message that could not be decoded. Empty when the body is
/// not a JSON object or has none.
pub fn trace_context(body: &[u8]) -> (String, String) {
    let Ok(root) = body::parse(body) else {
        return (String::new(), String::new());
    };
    let (mut traceparent, mut tracestate) = body::Body::new(&root).trace();
    if traceparent.len() > MAX_TRACEPARENT_BYTES {
        traceparent.clear();
    }
    if tracestate.len() > MAX_TRACESTATE_BYTES {
        tracestate.clear();
    }
    (traceparent, tracestate)
}

/// A decoded event and the admin notice derived from it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The event, with `cursor` empty (the journal assigns it).
    pub event: pb::Event,
    /// The admin notice this event implies (`docs/wire-format.md` "Admin notices"), with
    /// `cursor` empty.
    pub admin_notice: Option<pb::Event>,
}

/// Why a message could not be decoded. Each variant names the field at fault where one is.
///
/// The variants carry text, never a parser's error as a `#[source]`: a `DecodeError` is the
/// reason a producer is given, whole, in one line (the message of a `Publish` refusal, a dead
/// letter's `x-notify-error-detail` header, a log field), where a source would not be
/// printed; and it is `Clone + PartialEq` (compared in tests, kept with a delivery), which the
/// parsers' errors are not. No variant has a source, so none prints a cause twice under a
/// chain printer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The body is empty.
    #[error("empty body")]
    Empty,
    /// The body is not UTF-8.
    #[error("body is not UTF-8")]
    NotUtf8,
    /// The body is not JSON: serde_json's reason, with its line and column.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body is JSON but not an object")]
    NotObject,
    /// A message that says it is an encoded `Event` (an event forwarded by another node) but
    /// does not decode as one: prost's reason.
    #[error("body is not an encoded cloudphone.notify.v1.Event: {0}")]
    NotEvent(String),
    /// The body, or the event decoded from it, is larger than `--max-event-bytes`.
    #[error("{what} is {size} bytes; the limit is {limit} bytes (--max-event-bytes)")]
    TooLarge {
        /// `body` or `event` (encoded).
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The routing key breaks the grammar every event type follows: lowercase segments of
    /// `[a-z0-9_-]` joined by single dots, at most [`MAX_ROUTING_KEY_BYTES`] bytes.
    #[error(
        "routing key {0:?} is not an event type: lowercase segments of [a-z0-9_-] joined by \
         dots, at most {MAX_ROUTING_KEY_BYTES} bytes"
    )]
    InvalidRoutingKey(String),
    /// The routing key names no family this server knows.
    #[error("unknown routing key {0:?}")]
    UnknownRoutingKey(String),
    /// The routing key is in a known family but has no typed message, and `--strict-schema` is on.
    #[error("routing key {0:?} has no typed schema (strict schema)")]
    Untyped(String),
    /// A required field is absent or null.
    #[error("missing field {field:?}")]
    MissingField {
        /// The producer's field name, e.g. `userId` or `payload.deviceId`.
        field: String,
    },
    /// A field has the wrong JSON type or a value that cannot be read.
    #[error("field {field:?}: {problem}")]
    InvalidField {
        /// The producer's field name.
        field: String,
        /// What is wrong, e.g. `expected a number, got an object`.
        problem: String,
    },
    /// The body's objects and arrays nest deeper than [`MAX_BODY_DEPTH`], or a typed event's
    /// `Struct` reaches deeper than [`MAX_EVENT_NESTING`] in its `SubscribeResponse`: clients'
    /// protobuf decoders would refuse it (see `nesting`).
    #[error("{field:?} nests {depth} levels deep ({what}); at most {limit} are allowed")]
    TooDeep {
        /// The path of the first value past the limit (`x[0][0]`, `payload.extra`), or the
        /// typed event's field (`untyped`).
        field: String,
        /// What the levels count.
        what: &'static str,
        /// How deep it nests.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// A typed event whose payload does not match its type.
    #[error("payload does not match event type {event_type:?}")]
    PayloadMismatch {
        /// The canonical event type.
        event_type: String,
    },
    /// Not found by decoding but by the journal: the event's id is stored already for a
    /// different event (another type, user, device or payload). Dead-lettered like bad input,
    /// so the producer's mistake is seen, not dropped as a re-send.
    #[error("event id {id:?} {}", CONFLICTING_ID)]
    ConflictingId {
        /// The id.
        id: String,
    },
}

/// What is said of an event id stored already for a different event, wherever it is refused
/// (dead-lettered by the ingest as [`DecodeError::ConflictingId`], refused to `Publish` by the
/// writer): one text, so a producer reads the same advice on every path.
pub const CONFLICTING_ID: &str = "was already used for a different event; a re-send must be the same event, a new event \
     needs a new id";

impl DecodeError {
    /// A short stable code for metrics labels and the `x-notify-error` header,
    /// e.g. `missing_field`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty_body",
            DecodeError::NotUtf8 => "not_utf8",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::NotObject => "not_object",
            DecodeError::NotEvent(_) => "not_event",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::InvalidRoutingKey(_) => "invalid_routing_key",
            DecodeError::UnknownRoutingKey(_) => "unknown_routing_key",
            DecodeError::Untyped(_) => "untyped_strict",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::PayloadMismatch { .. } => "payload_mismatch",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::ConflictingId { .. } => "conflicting_id",
        }
    }

    /// The field at fault, where there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            DecodeError::MissingField { field }
            | DecodeError::InvalidField { field, .. }
            | DecodeError::TooDeep { field, .. } => Some(field),
            DecodeError::ConflictingId { .. } => Some("eventId"),
            _ => None,
        }
    }

    /// A `MissingField` for `field`.
    fn missing(field: impl Into<String>) -> Self {
        DecodeError::MissingField {
            field: field.into(),
        }
    }

    /// An `InvalidField` for `field`.
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        DecodeError::InvalidField {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

pub use conflation::{
    ConflationKey, NOTICE_SAMPLE_IDS, NoticeKind, coalesced_notice, conflation_key, is_state_type,
    notice_kind,
};
pub use nesting::{DECODER_NESTING_LIMIT, MAX_BODY_DEPTH, MAX_EVENT_NESTING};
pub use routing::{is_event_type, is_segment};

/// Whether a canonical event type has a typed payload message (`docs/wire-format.md` "Event
/// catalog").
pub fn is_typed(event_type: &str) -> bool {
    routing::is_typed(event_type)
}

/// The known family (`quota`, `billing`, `app`, `device`) an event type belongs to, if any.
pub fn family_of(event_type: &str) -> Option<&'static str> {
    routing::family_of(event_type)
}

/// Decodes a producer's JSON body published under `routing_key`.
///
/// The routing key names the event (aliases resolved), whatever the body's own `type` says.
/// The event's id is the producer's `eventId`, else `h-` and 32 hex digits of the SHA-256 of the
/// canonical type, a newline and the body without `_trace` (compact, keys sorted), so an outbox
/// re-send with a new trace gets the same id.
///
/// # Errors
///
/// A body that is not a JSON object, a routing key outside the known families (or untyped under
/// `strict_schema`), and a required field that is missing or a field that cannot be read, named
/// as the producer wrote it (`payload.userId` in an envelope).
pub fn decode(
    routing_key: &str,
    body: &[u8],
    props: &Properties,
    opts: DecodeSettings,
) -> Result<Decoded, DecodeError> {
    // The key and the size are checked before the body is parsed: refusing them costs nothing,
    // while parsing a huge body (a million keys) costs many times its size in memory.
    let route = routing::route(routing_key, opts)?;
    let event_type = routing::canonical(routing_key);
    check_size("body", body.len(), opts)?;
    let root = body::parse(body)?;
    nesting::check_body(&root)?;
    let body = Body::new(&root);
    let (user_id, device_id) = subject(event_type, route, &body)?;
    let content = match route {
        Route::Typed(kind) => catalog::decode(kind, &body)?,
        Route::Untyped => Content {
            payload: pb::event::Payload::Untyped(json_struct::from_object(&body.without_trace())),
            occurred_at: None,
        },
    };
    let received_at = dates::from_system_time(props.received_at);
    // When it happened, by precedence: the event's own date field, the body's `timestamp`, the
    // AMQP `timestamp` property, and at last when we received it.
    let occurred_at = content
        .occurred_at
        .or(body.timestamp()?)
        .or(props.timestamp_ms.and_then(dates::from_epoch_ms))
        .unwrap_or(received_at);
    let id = match body.event_id()? {
        Some(id) => id,
        None => id::from_body(event_type, &root),
    };
    let (traceparent, tracestate) = body.trace();
    finish(
        pb::Event {
            id,
            cursor: String::new(),
            r#type: event_type.to_owned(),
            user_id,
            device_id,
            occurred_at: Some(occurred_at),
            received_at: Some(received_at),
            traceparent,
            tracestate,
            payload: Some(content.payload),
        },
        [
            "eventId",
            &body.fields.path("userId"),
            &body.fields.path("deviceId"),
        ],
        opts,
    )
}

/// The user and device an event is about (`userId`, `deviceId`), checked against what its type
/// requires.
fn subject(
    event_type: &str,
    route: Route,
    body: &Body<'_>,
) -> Result<(String, String), DecodeError> {
    let user_id = body.fields.text("userId")?;
    if routing::requires_user(event_type) && user_id.is_empty() {
        return Err(DecodeError::missing(body.fields.path("userId")));
    }
    let device_id = body.fields.text("deviceId")?;
    if matches!(route, Route::Typed(kind) if kind.requires_device()) && device_id.is_empty() {
        return Err(DecodeError::missing(body.fields.path("deviceId")));
    }
    Ok((user_id, device_id))
}

/// Validates a typed event sent through `Publish` and fills what the server assigns.
///
/// The type is the canonical form of `routing_key`, else of `event.type`. The server sets
/// `received_at`, clears `cursor`, fills an unset `occurred_at` (AMQP timestamp, else
/// `received_at`) and an empty `id` (`h-` and a hash of the type and the encoded event without
/// the fields the server assigns or the trace context, so a re-send keeps its id).
///
/// # Errors
///
/// No type or two types that disagree, a type outside the known families (`admin.notice`
/// included: only the server derives notices), a payload that is not the type's message, and
/// a missing user, device, required id or unreadable amount, named by its proto field.
pub fn accept_typed(
    routing_key: &str,
    event: pb::Event,
    props: &Properties,
    opts: DecodeSettings,
) -> Result<Decoded, DecodeError> {
    check_size("body", prost::Message::encoded_len(&event), opts)?;
    let event = typed::accept(routing_key, event, props, opts)?;
    finish(event, ["id", "user_id", "device_id"], opts)
}

/// Accepts an encoded `Event` forwarded by another node's `Publish` (cluster mode): decoded, then
/// checked and completed like any typed event.
///
/// # Errors
///
/// A body that is not an encoded `Event` ([`DecodeError::NotEvent`]), and whatever
/// [`accept_typed`] refuses.
pub fn decode_forwarded(
    body: &[u8],
    props: &Properties,
    opts: DecodeSettings,
) -> Result<Decoded, DecodeError> {
    check_size("body", body.len(), opts)?;
    let event = <pb::Event as prost::Message>::decode(body)
        .map_err(|error| DecodeError::NotEvent(error.to_string()))?;
    accept_typed("", event, props, opts)
}

/// Refuses `size` bytes of `what` over the limit.
fn check_size(what: &'static str, size: usize, opts: DecodeSettings) -> Result<(), DecodeError> {
    if size > opts.max_event_bytes {
        return Err(DecodeError::TooLarge {
            what,
            size,
            limit: opts.max_event_bytes,
        });
    }
    Ok(())
}

/// The last checks on an accepted event, then the admin notice it implies. The event's ids
/// must fit what the journal and a subscriber's filter can hold, its user must not be the
/// firehose's selector, its `Struct`s must nest within what clients decode, and the event,
/// encoded, must fit the limit too: a protobuf `Struct` can be twice the size of the JSON it
/// came from.
/// `names` are the id, user and device fields as the caller wrote them (`eventId`,
/// `payload.userId`, or the proto's names for a typed event).
fn finish(
    mut event: pb::Event,
    names: [&str; 3],
    opts: DecodeSettings,
) -> Result<Decoded, DecodeError> {
    let [id, user, device] = names;
    for (field, value) in [
        (id, &event.id),
        (user, &event.user_id),
        (device, &event.device_id),
    ] {
        if value.len() > MAX_ID_BYTES {
            return Err(DecodeError::invalid(
                field,
                format!("{} bytes; at most {MAX_ID_BYTES} are allowed", value.len()),
            ));
        }
    }
    if event.user_id == FIREHOSE_SELECTOR {
        return Err(DecodeError::invalid(
            user,
            format!("{FIREHOSE_SELECTOR:?} selects every user's events; it is not a user id"),
        ));
    }
    nesting::check_event(&event)?;
    // Trace context is best effort (a bad one never costs the event): values longer than W3C
    // trace context allows are dropped, not stored and sent to every subscriber.
    if event.traceparent.len() > MAX_TRACEPARENT_BYTES {
        event.traceparent.clear();
    }
    if event.tracestate.len() > MAX_TRACESTATE_BYTES {
        event.tracestate.clear();
    }
    check_size("event", prost::Message::encoded_len(&event), opts)?;
    Ok(Decoded {
        admin_notice: admin::derive(&event),
        event,
    })
}
