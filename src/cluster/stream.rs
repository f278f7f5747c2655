//! The journal stream on the wire: its declaration, and the messages in it.
//!
//! Owns: the stream's arguments, the four kinds of message and their headers, reading a
//! delivery back into an [`Entry`]. Does not own: what a node does with an entry (`follower`),
//! or when the writer writes (`writer`).
//!
//! A message's body is the encoded `pb::Event` without its cursor (the cursor is the message's
//! offset, known only once the broker stored it). Every message carries the stream's epoch in
//! `x-notify-epoch`, so a reader can tell the stream from any message of it:
//!
//! | kind (`x-notify-kind`) | body | written by | epoch header |
//! |---|---|---|---|
//! | `event` | the event | the writer | the stream's epoch |
//! | `barrier` | empty; `message_id` names it | the writer, when it takes over | the stream's epoch |
//! | `bootstrap` | empty | any node that found the stream empty | a fresh random one: it is the stream's epoch only if it landed first (offset 0) |
//! | `inbox` | an inbox command (`inbox::Command`); `message_id` names it | the writer, for any node's mark or preferences | the stream's epoch |

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, PublisherConfirm,
    message::Delivery,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use prost::Message as _;

use crate::{inbox::Command, pb};

/// The stream's default name (`--stream`).
pub const DEFAULT_STREAM: &str = "notify-backbone.journal";
/// The shared ingest queue's default name (`--ingest-queue`).
pub const DEFAULT_INGEST_QUEUE: &str = "notify-backbone.ingest";

const EPOCH_HEADER: &str = "x-notify-epoch";
const KIND_HEADER: &str = "x-notify-kind";
/// Set by the broker on every message consumed from a stream.
const OFFSET_HEADER: &str = "x-stream-offset";

/// The stream and how long it keeps events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// `--stream`.
    pub name: String,
    /// `--retention-age` as `x-max-age`.
    pub max_age: Duration,
    /// `--retention-bytes` as `x-max-length-bytes`.
    pub max_bytes: u64,
    /// `--stream-segment-bytes` as `x-stream-max-segment-size-bytes`.
    pub segment_bytes: Option<u64>,
}

impl StreamSettings {
    fn arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        let text = |value: String| AMQPValue::LongString(LongString::from(value));
        arguments.insert("x-queue-type".into(), text("stream".into()));
        arguments.insert(
            "x-max-age".into(),
            text(format!("{}s", self.max_age.as_secs().max(1))),
        );
        arguments.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_bytes).unwrap_or(i64::MAX)),
        );
        if let Some(bytes) = self.segment_bytes {
            arguments.insert(
                "x-stream-max-segment-size-bytes".into(),
                AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX)),
            );
        }
        arguments
    }

    /// Declares the stream (durable; a no-op when it exists with these arguments); what the
    /// broker counts in it.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<QueueCounts> {
        channel
            .queue_declare(
                self.name.as_str().into(),
                QueueDeclareOptions::durable(),
                self.arguments(),
            )
            .await
            .map(|declared| QueueCounts {
                messages: declared.message_count(),
                consumers: declared.consumer_count(),
            })
    }
}

/// A queue as a passive declaration finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages (ready ones, for a queue; all, as the broker counted them, for a stream).
    pub messages: u32,
    /// Consumers: nodes consuming the ingest queue, or following the stream.
    pub consumers: u32,
}

/// What a stream message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An event.
    Event,
    /// The writer's mark: once its own node has read it back, everything written before it is
    /// in that node's replica.
    Barrier,
    /// A first message for an empty stream, proposing its epoch.
    Bootstrap,
    /// An inbox command (a mark, preferences, an admin's first use of their inbox); its
    /// `message_id` names it for the node that waits for its outcome.
    Inbox,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Barrier => "barrier",
            Kind::Bootstrap => "bootstrap",
            Kind::Inbox => "inbox",
        }
    }

    fn parse(text: &[u8]) -> Option<Self> {
        match text {
            b"event" => Some(Kind::Event),
            b"barrier" => Some(Kind::Barrier),
            b"bootstrap" => Some(Kind::Bootstrap),
            b"inbox" => Some(Kind::Inbox),
            _ => None,
        }
    }
}

/// One message read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its offset; its journal position is `offset + 1` (position 0 is "before the first").
    pub offset: u64,
    /// Its `x-notify-epoch`.
    pub epoch: u64,
    /// What it is.
    pub kind: Kind,
    /// The event, for [`Kind::Event`].
    pub event: Option<pb::Event>,
    /// The command, for [`Kind::Inbox`].
    pub command: Option<Command>,
    /// Its `message_id` (a barrier's name).
    pub id: String,
}

impl Entry {
    /// The journal position of this message.
    pub fn position(&self) -> u64 {
        self.offset + 1
    }

    /// The stream's epoch as this message tells it, if it does: every message but a bootstrap
    /// that did not land first.
    pub fn stream_epoch(&self) -> Option<u64> {
        (self.offset == 0 || self.kind != Kind::Bootstrap).then_some(self.epoch)
    }
}

/// A stream message that is not one of ours.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// No `x-stream-offset`: not a delivery from a stream.
    #[error("no x-stream-offset header (not read from a stream?)")]
    NoOffset,
    /// No or an unknown `x-notify-kind` / `x-notify-epoch`.
    #[error("not a notify-backbone journal message (x-notify-kind/x-notify-epoch)")]
    Foreign,
    /// An event body that is not an encoded `Event`.
    #[error("event at offset {offset} does not decode: {source}")]
    Body {
        /// Where.
        offset: u64,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// An inbox command this version cannot read.
    #[error("inbox command at offset {offset} does not decode: {source}")]
    Command {
        /// Where.
        offset: u64,
        /// Why.
        #[source]
        source: crate::inbox::DecodeCommandError,
    },
}

/// The offset of a delivery from a stream, whatever the message.
pub fn offset(delivery: &Delivery) -> Option<u64> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(OFFSET_HEADER)? {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongUInt(offset) => Some(u64::from(*offset)),
        _ => None,
    }
}

/// Reads a delivery from the stream.
pub fn parse(delivery: &Delivery) -> Result<Entry, ParseError> {
    let headers = delivery.properties.headers().as_ref();
    let get = |key: &str| headers.and_then(|h| h.inner().get(key));
    let offset = offset(delivery).ok_or(ParseError::NoOffset)?;
    let kind = match get(KIND_HEADER) {
        Some(AMQPValue::LongString(kind)) => Kind::parse(kind.as_bytes()),
        _ => None,
    }
    .ok_or(ParseError::Foreign)?;
    let epoch = match get(EPOCH_HEADER) {
        Some(AMQPValue::LongLongInt(epoch)) => Some(*epoch as u64),
        _ => None,
    }
    .ok_or(ParseError::Foreign)?;
    let event = match kind {
        Kind::Event => Some(
            pb::Event::decode(delivery.data.as_slice())
                .map_err(|source| ParseError::Body { offset, source })?,
        ),
        Kind::Barrier | Kind::Bootstrap | Kind::Inbox => None,
    };
    let command = match kind {
        Kind::Inbox => Some(
            Command::decode(delivery.data.as_slice())
                .map_err(|source| ParseError::Command { offset, source })?,
        ),
        _ => None,
    };
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    Ok(Entry {
        offset,
        epoch,
        kind,
        event,
        command,
        id,
    })
}

/// Appends one message to the stream; the confirm resolves once the broker stored it.
pub async fn append(
    channel: &Channel,
    stream: &str,
    epoch: u64,
    kind: Kind,
    id: &str,
    body: &[u8],
) -> lapin::Result<PublisherConfirm> {
    let mut headers = FieldTable::default();
    // The epoch's 64 bits as they are; a reader casts them back.
    headers.insert(EPOCH_HEADER.into(), AMQPValue::LongLongInt(epoch as i64));
    headers.insert(
        KIND_HEADER.into(),
        AMQPValue::LongString(LongString::from(kind.name())),
    );
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_message_id(id.into())
        .with_delivery_mode(2);
    channel
        .basic_publish(
            "".into(),
            stream.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
}

/// The body of an event message: the event without its cursor.
pub fn event_body(event: &pb::Event) -> Vec<u8> {
    event.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_becomes_the_streams_arguments() {
        let settings = StreamSettings {
            name: "s".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 1 << 30,
            segment_bytes: Some(1 << 20),
        };
        let arguments = settings.arguments();
        let get = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("stream".into()))
        );
        assert_eq!(
            get("x-max-age"),
            Some(AMQPValue::LongString("604800s".into()))
        );
        assert_eq!(
            get("x-max-length-bytes"),
            Some(AMQPValue::LongLongInt(1 << 30))
        );
        assert_eq!(
            get("x-stream-max-segment-size-bytes"),
            Some(AMQPValue::LongLongInt(1 << 20))
        );
    }

    #[test]
    fn only_a_first_bootstrap_speaks_for_the_streams_epoch() {
        let entry = |offset, kind| Entry {
            offset,
            epoch: 9,
            kind,
            event: None,
            command: None,
            id: String::new(),
        };
        assert_eq!(entry(0, Kind::Bootstrap).stream_epoch(), Some(9));
        assert_eq!(entry(5, Kind::Bootstrap).stream_epoch(), None);
        assert_eq!(entry(5, Kind::Barrier).stream_epoch(), Some(9));
        assert_eq!(entry(5, Kind::Event).stream_epoch(), Some(9));
        assert_eq!(entry(5, Kind::Event).position(), 6);
    }
}
