//! One delivery as the ingest keeps it until it is acked, and what its properties say: a probe,
//! a forwarded `Publish`, the producer's timestamp.
//!
//! Owns: [`Message`] and the reading of its properties. Does not own: what becomes of it (the
//! session settles it, `dead_letter` copies it). Its own module so that the session and the
//! dead-letter code both read it without importing each other, and the dead-letter tools read
//! a timestamp the same way the ingest does.

use lapin::BasicProperties;

/// One delivery, kept until it is acked so it can be re-decoded and resubmitted if the writer
/// fails (the body is in memory anyway; the prefetch bounds how many there are).
pub(super) struct Message {
    /// The delivery tag, for the ack.
    pub tag: u64,
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    /// The broker delivered it before.
    pub redelivered: bool,
}

impl Message {
    #[cfg(test)]
    pub(super) fn for_test(exchange: &str, routing_key: &str, properties: BasicProperties) -> Self {
        Self {
            tag: 1,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: Vec::new(),
            properties,
            redelivered: false,
        }
    }

    /// A probe ([`super::PROBE_TYPE`]), not an event.
    pub(super) fn is_probe(&self) -> bool {
        self.properties
            .kind()
            .as_ref()
            .is_some_and(|kind| kind.as_str() == super::PROBE_TYPE)
    }

    /// An event forwarded by another node's `Publish` (cluster mode), not a producer's JSON.
    pub(super) fn is_forwarded(&self) -> bool {
        let text = |value: &Option<lapin::types::ShortString>| {
            value.as_ref().map(|v| v.as_str().to_owned())
        };
        text(self.properties.content_type()).as_deref() == Some(super::FORWARDED_CONTENT_TYPE)
            && text(self.properties.kind()).as_deref() == Some(super::FORWARDED_TYPE)
    }

    /// An inbox command forwarded by another node (cluster mode), not an event.
    pub(super) fn is_forwarded_inbox(&self) -> bool {
        self.properties
            .kind()
            .as_ref()
            .is_some_and(|kind| kind.as_str() == super::FORWARDED_INBOX_TYPE)
    }

    /// The AMQP `timestamp` property in milliseconds (see [`amqp_timestamp_ms`]).
    pub(super) fn timestamp_ms(&self) -> Option<i64> {
        self.properties.timestamp().and_then(amqp_timestamp_ms)
    }
}

/// Below this, an AMQP `timestamp` is taken for seconds: as seconds it is the year 5138, as
/// milliseconds March 1973, so no real value of either kind falls on the wrong side.
const SECONDS_BELOW: u64 = 100_000_000_000;

/// An AMQP `timestamp` as milliseconds since the epoch. The platform's producers send
/// milliseconds (`Date.now()`); the AMQP spec, and pika, amqplib and others by default, mean
/// seconds. The magnitude tells them apart (see [`SECONDS_BELOW`]); `None` beyond `i64`.
pub(super) fn amqp_timestamp_ms(raw: u64) -> Option<i64> {
    let ms = if raw < SECONDS_BELOW {
        raw.checked_mul(1000)?
    } else {
        raw
    };
    i64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn amqp_timestamps_in_seconds_and_in_milliseconds_are_both_read() {
        use super::amqp_timestamp_ms;
        // The platform's producers: milliseconds.
        assert_eq!(
            amqp_timestamp_ms(1_732_096_800_123),
            Some(1_732_096_800_123)
        );
        // The AMQP spec (pika, amqplib, ...): seconds.
        assert_eq!(amqp_timestamp_ms(1_732_096_800), Some(1_732_096_800_000));
        // Either side of the line: the year 5138 in seconds, March 1973 in milliseconds.
        assert_eq!(amqp_timestamp_ms(99_999_999_999), Some(99_999_999_999_000));
        assert_eq!(amqp_timestamp_ms(100_000_000_000), Some(100_000_000_000));
        assert_eq!(amqp_timestamp_ms(0), Some(0));
        assert_eq!(amqp_timestamp_ms(u64::MAX), None);
    }
}
