//! The dead-letter copy of a poison message.
//!
//! Owns: what the copy carries. The broker's own dead-lettering (`basic.reject` without requeue)
//! cannot add headers, so notify-backbone publishes the copy itself, with publisher confirms, to
//! the dead-letter exchange, and acks the original only once the broker confirmed the copy. The
//! copy keeps the original body, routing key and properties, so replaying it to the producers'
//! exchange is a plain move.

use lapin::{
    BasicProperties, Channel, PublisherConfirm,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};

use crate::schema::DecodeError;

use super::session::Message;

/// The header with the stable reason code, e.g. `missing_field` (see `DecodeError::reason`).
pub const ERROR_HEADER: &str = "x-notify-error";
/// The header naming the field at fault, e.g. `payload.userId`, where there is one.
pub const ERROR_FIELD_HEADER: &str = "x-notify-error-field";
/// The header with the full, human-readable reason.
pub const ERROR_DETAIL_HEADER: &str = "x-notify-error-detail";
/// The exchange the message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-notify-original-exchange";
/// The node that refused it.
pub const NODE_HEADER: &str = "x-notify-node";
/// The original routing key (the event type). Replaying a dead letter straight into a node's
/// queue goes through the default exchange, which replaces the routing key with the queue's
/// name; the ingest reads the event type from this header instead when it is present.
pub const ROUTING_KEY_HEADER: &str = "x-notify-routing-key";

/// Publishes the dead-letter copy of `message`; the returned confirm resolves when the broker
/// has it.
pub(super) async fn publish(
    channel: &Channel,
    exchange: &str,
    node_id: &str,
    message: &Message,
    error: &DecodeError,
) -> lapin::Result<PublisherConfirm> {
    let properties = properties(message, node_id, error);
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

/// The original properties, persistent, with the reason headers added to the original ones.
fn properties(message: &Message, node_id: &str, error: &DecodeError) -> BasicProperties {
    let original = &message.properties;
    let mut headers = original.headers().clone().unwrap_or_default();
    let mut text = |key: &str, value: &str| {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    };
    text(ERROR_HEADER, error.reason());
    text(ERROR_DETAIL_HEADER, &error.to_string());
    if let Some(field) = error.field() {
        text(ERROR_FIELD_HEADER, field);
    }
    text(ORIGINAL_EXCHANGE_HEADER, &message.exchange);
    text(ROUTING_KEY_HEADER, &message.routing_key);
    text(NODE_HEADER, node_id);
    original
        .clone()
        .with_headers(headers)
        .with_delivery_mode(PERSISTENT)
}

/// AMQP `delivery_mode` 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The event type a replayed dead letter carries in [`ROUTING_KEY_HEADER`], if any.
pub(super) fn replayed_routing_key(properties: &BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    let key = header_text(headers, ROUTING_KEY_HEADER)?;
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
        let copy = properties(&message, "node-1", &error);
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
    }

    #[test]
    fn no_field_header_when_no_field_is_at_fault() {
        let message = Message::for_test("x", "device.started", BasicProperties::default());
        let copy = properties(&message, "n", &DecodeError::NotUtf8);
        let headers = copy.headers().clone().unwrap_or_default();
        assert_eq!(header_text(&headers, ERROR_HEADER), Some(&b"not_utf8"[..]));
        assert_eq!(header_text(&headers, ERROR_FIELD_HEADER), None);
    }
}
