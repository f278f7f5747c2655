//! The dead-letter copy of a poison message.
//!
//! Owns: what the copy carries, and that it fits the broker's frame. The broker's own
//! dead-lettering (`basic.reject` without requeue) cannot add headers, so notify-backbone
//! publishes the copy itself, with publisher confirms, to the dead-letter exchange, and acks the
//! original only once the broker confirmed the copy. The copy keeps the original body, routing
//! key and properties, so replaying it to the producers' exchange is a plain move. A message
//! replayed straight into a node's queue came through the default exchange, which names no
//! exchange; its replay says in [`ORIGINAL_EXCHANGE_HEADER`] which one it belongs to, and a copy
//! of it keeps that, so it can still go back there.
//!
//! A message's properties travel in one content-header frame, which must fit the connection's
//! negotiated `frame_max`. The original fitted, but the copy adds the reason headers: a copy that
//! would not fit leaves the original headers out and says how many bytes it left out
//! ([`HEADERS_DROPPED_HEADER`]); sending it anyway would make the broker close the connection,
//! and the message, redelivered, would do the same at every reconnect. When even that cannot
//! fit, [`copy_properties`] says so and the ingest rejects the original without requeue, so the
//! queue's own dead-lettering takes it (without the reason headers).

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties, Channel, PublisherConfirm,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};

use crate::schema::DecodeError;

use super::message::Message;

/// The header with the stable reason code, e.g. `missing_field` (see `DecodeError::reason`).
pub const ERROR_HEADER: &str = "x-notify-error";
/// The header naming the field at fault, e.g. `payload.userId`, where there is one.
pub const ERROR_FIELD_HEADER: &str = "x-notify-error-field";
/// The header with the full, human-readable reason.
pub const ERROR_DETAIL_HEADER: &str = "x-notify-error-detail";
/// The exchange the message was first published to. On a replay into a queue (`dead-letters
/// replay --to-node`), the exchange it came from, which the node's copy keeps.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-notify-original-exchange";
/// The node that refused it.
pub const NODE_HEADER: &str = "x-notify-node";
/// The original routing key (the event type). Replaying a dead letter straight into a node's
/// queue goes through the default exchange, which replaces the routing key with the queue's
/// name; the ingest reads the event type from this header instead when it is present.
pub const ROUTING_KEY_HEADER: &str = "x-notify-routing-key";

/// When the node dead-lettered it: milliseconds since the epoch (a 64-bit integer).
pub const DEAD_LETTERED_AT_HEADER: &str = "x-notify-dead-lettered-at";
/// How often `dead-letters replay` has sent this message back (a 64-bit integer). A copy keeps
/// the original's headers, so a message refused again carries its count with it.
pub const REPLAYS_HEADER: &str = "x-notify-replays";

/// Set on a copy that leaves the original headers out (they would not fit the frame): how many
/// bytes of headers were left out.
pub const HEADERS_DROPPED_HEADER: &str = "x-notify-headers-dropped";

/// The longest `x-notify-error-detail`, in bytes: a reason may quote the input, and the input is
/// the producer's.
const MAX_DETAIL_BYTES: usize = 1024;

/// What a content-header frame adds to the encoded properties: frame type, channel and size
/// (7 bytes), class, weight and body size (12) and the frame end (1).
const HEADER_FRAME_OVERHEAD: usize = 20;

/// Publishes `properties` (see [`copy_properties`]) with `message`'s body as its dead-letter copy;
/// the returned confirm resolves when the broker has it.
pub(super) async fn publish(
    channel: &Channel,
    exchange: &str,
    message: &Message,
    properties: BasicProperties,
) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            exchange.into(),
            message.routing_key.as_str().into(),
            // Mandatory: a copy that no queue takes comes back instead of vanishing, and the
            // original is not acked.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &message.body,
            properties,
        )
        .await
}

/// The copy's properties: the original ones, persistent, with the reason headers added to the
/// original headers; without the original headers if that would not fit a frame of `frame_max`
/// bytes (0: no limit); `None` if even that does not fit.
pub(super) fn copy_properties(
    message: &Message,
    node_id: &str,
    error: &DecodeError,
    frame_max: u32,
) -> Option<BasicProperties> {
    let original = &message.properties;
    let reasons = reason_headers(message, node_id, error);
    let fits = |properties: &BasicProperties| {
        frame_max == 0 || header_frame_len(properties) <= frame_max as usize
    };
    let mut headers = original.headers().clone().unwrap_or_default();
    for (key, value) in reasons.inner() {
        headers.insert(key.clone(), value.clone());
    }
    let copy = original
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    if fits(&copy) {
        return Some(copy);
    }
    let dropped = original.headers().as_ref().map_or(0, |h| {
        encoded_len(&BasicProperties::default().with_headers(h.clone()))
    });
    let mut headers = reasons;
    // The replay count is the operator's, not the producer's: it stays.
    if let Some(replays) = original
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REPLAYS_HEADER))
    {
        headers.insert(REPLAYS_HEADER.into(), replays.clone());
    }
    headers.insert(
        HEADERS_DROPPED_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(dropped).unwrap_or(i64::MAX)),
    );
    let trimmed = original
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT);
    fits(&trimmed).then_some(trimmed)
}

/// The `x-notify-error*` headers that say why a message was refused (also the refusal a
/// forwarded `Publish` is answered with).
pub(super) fn reason_headers_of(error: &DecodeError) -> FieldTable {
    let mut headers = FieldTable::default();
    let mut text = |key: &str, value: &str| {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    };
    text(ERROR_HEADER, error.reason());
    text(
        ERROR_DETAIL_HEADER,
        clip(&error.to_string(), MAX_DETAIL_BYTES),
    );
    if let Some(field) = error.field() {
        text(ERROR_FIELD_HEADER, clip(field, MAX_DETAIL_BYTES));
    }
    headers
}

/// The `x-notify-*` headers that say why, where and from where.
fn reason_headers(message: &Message, node_id: &str, error: &DecodeError) -> FieldTable {
    let mut headers = reason_headers_of(error);
    let mut text = |key: &str, value: &str| {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    };
    text(ROUTING_KEY_HEADER, &message.routing_key);
    text(NODE_HEADER, node_id);
    let exchange = original_exchange(message).unwrap_or(message.exchange.as_bytes());
    headers.insert(
        ORIGINAL_EXCHANGE_HEADER.into(),
        AMQPValue::LongString(LongString::from(exchange.to_vec())),
    );
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    headers.insert(
        DEAD_LETTERED_AT_HEADER.into(),
        AMQPValue::LongLongInt(now_ms),
    );
    headers
}

/// The exchange a message that came through the default exchange (a replay into this node's
/// queue) belongs to, as its replay said; `None` when it came through an exchange of its own,
/// which then is the one. Longer than an exchange name can be (255 bytes): not ours, ignored.
fn original_exchange(message: &Message) -> Option<&[u8]> {
    const MAX_EXCHANGE_NAME: usize = 255;
    if !message.exchange.is_empty() {
        return None;
    }
    let headers = message.properties.headers().as_ref()?;
    header_text(headers, ORIGINAL_EXCHANGE_HEADER)
        .filter(|exchange| !exchange.is_empty() && exchange.len() <= MAX_EXCHANGE_NAME)
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The size of the content-header frame that carries `properties`.
fn header_frame_len(properties: &BasicProperties) -> usize {
    HEADER_FRAME_OVERHEAD.saturating_add(encoded_len(properties))
}

/// The size of `properties` as the AMQP codec writes them (flags and fields). Measured with the
/// codec lapin itself uses, so the answer is exact; `usize::MAX` if it cannot encode them.
fn encoded_len(properties: &BasicProperties) -> usize {
    cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::new(),
    )
    .map_or(usize::MAX, |bytes| bytes.len())
}

/// AMQP `delivery_mode` 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The event type a replayed dead letter carries in [`ROUTING_KEY_HEADER`], if any. One longer
/// than an AMQP routing key can be (255 bytes) is not one of ours and is ignored: its dead-letter
/// copy could not be published under it.
pub(super) fn replayed_routing_key(properties: &BasicProperties) -> Option<String> {
    const MAX_ROUTING_KEY: usize = 255;
    let headers = properties.headers().as_ref()?;
    let key = header_text(headers, ROUTING_KEY_HEADER)?;
    if key.len() > MAX_ROUTING_KEY {
        return None;
    }
    String::from_utf8(key.to_vec()).ok()
}

/// A header's text value, for tests and tools that read dead letters.
pub fn header_text<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a [u8]> {
    match headers.inner().get(key) {
        Some(AMQPValue::LongString(value)) => Some(value.as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_keeps_the_original_and_adds_the_reason() {
        let mut original_headers = FieldTable::default();
        original_headers.insert("x-producer".into(), AMQPValue::LongString("svc".into()));
        let message = Message::for_test(
            "cloudphone.events",
            "device.error",
            BasicProperties::default()
                .with_timestamp(1_732_096_800_000)
                .with_headers(original_headers),
        );
        let error = DecodeError::MissingField {
            field: "payload.userId".into(),
        };
        let copy = copy_properties(&message, "node-1", &error, 131_072).unwrap();
        assert_eq!(copy.timestamp(), &Some(1_732_096_800_000));
        assert_eq!(copy.delivery_mode(), &Some(2));
        let headers = copy.headers().clone().unwrap_or_default();
        let get = |key| header_text(&headers, key);
        assert_eq!(get("x-producer"), Some(&b"svc"[..]));
        assert_eq!(get(ERROR_HEADER), Some(&b"missing_field"[..]));
        assert_eq!(get(ERROR_FIELD_HEADER), Some(&b"payload.userId"[..]));
        assert_eq!(
            get(ORIGINAL_EXCHANGE_HEADER),
            Some(&b"cloudphone.events"[..])
        );
        assert_eq!(get(NODE_HEADER), Some(&b"node-1"[..]));
        assert_eq!(get(ROUTING_KEY_HEADER), Some(&b"device.error"[..]));
        assert_eq!(replayed_routing_key(&copy).as_deref(), Some("device.error"));
        assert!(get(ERROR_DETAIL_HEADER).is_some());
        assert!(matches!(
            headers.inner().get(DEAD_LETTERED_AT_HEADER),
            Some(AMQPValue::LongLongInt(ms)) if *ms > 1_732_096_800_000
        ));
    }

    /// A replay into a node's queue came through the default exchange (`""`) and says where it
    /// belongs: refused again, its copy still names that exchange, so `list` shows it and a
    /// later replay goes back there. A message through an exchange of its own names that one,
    /// whatever its headers say.
    #[test]
    fn a_copy_of_a_replay_into_a_queue_keeps_the_exchange_it_came_from() {
        let mut headers = FieldTable::default();
        headers.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            AMQPValue::LongString("cloudphone.events".into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        let exchange_of = |exchange: &str| {
            let message = Message::for_test(exchange, "device.error", properties.clone());
            let copy = copy_properties(&message, "n", &DecodeError::NotUtf8, 0).unwrap();
            let headers = copy.headers().clone().unwrap_or_default();
            header_text(&headers, ORIGINAL_EXCHANGE_HEADER).map(<[u8]>::to_vec)
        };
        assert_eq!(exchange_of(""), Some(b"cloudphone.events".to_vec()));
        assert_eq!(exchange_of("other.events"), Some(b"other.events".to_vec()));
        // Without the header, the default exchange is all it can say.
        let message = Message::for_test("", "device.error", BasicProperties::default());
        let copy = copy_properties(&message, "n", &DecodeError::NotUtf8, 0).unwrap();
        let headers = copy.headers().clone().unwrap_or_default();
        assert_eq!(
            header_text(&headers, ORIGINAL_EXCHANGE_HEADER),
            Some(&b""[..])
        );
    }

    #[test]
    fn no_field_header_when_no_field_is_at_fault() {
        let message = Message::for_test("x", "device.started", BasicProperties::default());
        let copy = copy_properties(&message, "n", &DecodeError::NotUtf8, 0).unwrap();
        let headers = copy.headers().clone().unwrap_or_default();
        assert_eq!(header_text(&headers, ERROR_HEADER), Some(&b"not_utf8"[..]));
        assert_eq!(header_text(&headers, ERROR_FIELD_HEADER), None);
    }

    fn with_padding(len: usize) -> Message {
        let mut headers = FieldTable::default();
        headers.insert("x-producer".into(), AMQPValue::LongString("svc".into()));
        headers.insert(
            "x-pad".into(),
            AMQPValue::LongString(LongString::from(vec![b'p'; len])),
        );
        Message::for_test(
            "cloudphone.events",
            "device.error",
            BasicProperties::default()
                .with_timestamp(1_732_096_800_000)
                .with_headers(headers),
        )
    }

    /// Headers that filled the original's frame: the copy with the reason headers added would
    /// not fit (the broker would close the connection, and the redelivered message would do it
    /// again at every reconnect), so the copy leaves them out and says how much it left out.
    #[test]
    fn a_copy_that_would_not_fit_the_frame_leaves_the_original_headers_out() {
        const FRAME_MAX: u32 = 131_072;
        let original = with_padding(130_900);
        assert!(header_frame_len(&original.properties) <= FRAME_MAX as usize);
        let copy = copy_properties(&original, "n", &DecodeError::NotUtf8, FRAME_MAX).unwrap();
        assert!(header_frame_len(&copy) <= FRAME_MAX as usize);
        let headers = copy.headers().clone().unwrap_or_default();
        assert_eq!(header_text(&headers, ERROR_HEADER), Some(&b"not_utf8"[..]));
        assert_eq!(header_text(&headers, "x-pad"), None);
        assert_eq!(header_text(&headers, "x-producer"), None);
        let dropped = headers.inner().get(HEADERS_DROPPED_HEADER);
        assert!(
            matches!(dropped, Some(AMQPValue::LongLongInt(n)) if *n > 130_900),
            "{dropped:?}"
        );
        // Everything but the headers is kept.
        assert_eq!(copy.timestamp(), &Some(1_732_096_800_000));
        // Small headers are kept as they are.
        let small = with_padding(10);
        let copy = copy_properties(&small, "n", &DecodeError::NotUtf8, FRAME_MAX).unwrap();
        let headers = copy.headers().clone().unwrap_or_default();
        assert_eq!(header_text(&headers, "x-producer"), Some(&b"svc"[..]));
        assert!(headers.inner().get(HEADERS_DROPPED_HEADER).is_none());
    }

    #[test]
    fn a_trimmed_copy_keeps_its_replay_count() {
        let mut original = with_padding(130_900);
        let mut headers = original.properties.headers().clone().unwrap_or_default();
        headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongLongInt(2));
        original.properties = original.properties.clone().with_headers(headers);
        let copy = copy_properties(&original, "n", &DecodeError::NotUtf8, 131_072).unwrap();
        let headers = copy.headers().clone().unwrap_or_default();
        assert!(headers.inner().get(HEADERS_DROPPED_HEADER).is_some());
        assert_eq!(
            headers.inner().get(REPLAYS_HEADER),
            Some(&AMQPValue::LongLongInt(2))
        );
    }

    #[test]
    fn a_frame_too_small_for_even_the_reasons_gives_no_copy() {
        let message = with_padding(10);
        assert!(copy_properties(&message, "n", &DecodeError::NotUtf8, 64).is_none());
    }

    #[test]
    fn a_long_reason_is_clipped_on_a_character_boundary() {
        let message = with_padding(10);
        let error = DecodeError::NotJson("é".repeat(4000));
        let copy = copy_properties(&message, "n", &error, 0).unwrap();
        let headers = copy.headers().clone().unwrap_or_default();
        let detail = header_text(&headers, ERROR_DETAIL_HEADER).unwrap();
        assert!(detail.len() <= MAX_DETAIL_BYTES);
        assert!(std::str::from_utf8(detail).is_ok());
    }
}
