//! One dead letter as the operator's tools read it back: its story out of its headers (ours,
//! `x-notify-*`, or the broker's own `x-death` for a message the broker dead-lettered), and the
//! [`Selection`] that chooses letters by reason, routing key and refusing node.
//!
//! Owns: [`DeadLetter`], [`RefusedBy`], [`Selection`], AMQP topic matching. Does not own:
//! walking the queue, replaying or discarding (`dead_letter_queue`, which re-exports these
//! types), or writing the headers (`dead_letter`).

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

use super::{
    dead_letter::{
        DEAD_LETTERED_AT_HEADER, ERROR_DETAIL_HEADER, ERROR_FIELD_HEADER, ERROR_HEADER,
        HEADERS_DROPPED_HEADER, NODE_HEADER, ORIGINAL_EXCHANGE_HEADER, REPLAYS_HEADER,
        ROUTING_KEY_HEADER, header_text,
    },
    message::amqp_timestamp_ms,
};

/// Who refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusedBy {
    /// A notify-backbone node (`x-notify-node`).
    Node(String),
    /// The broker itself (`x-death`): a reject without requeue, an expiry, a length limit, a
    /// delivery limit, in this queue.
    Broker {
        /// The queue the message died in.
        queue: String,
    },
    /// Nobody said: the message carries neither header (published here by hand?).
    Unknown,
}

/// One dead letter as read from the queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its place in this walk, from 1 (the head of the queue).
    pub position: u64,
    /// The stable reason code (`missing_field`, `too_large`, ...), or the broker's (`rejected`,
    /// `expired`, `maxlen`, `delivery_limit`).
    pub reason: Option<String>,
    /// Who refused it.
    pub refused_by: RefusedBy,
    /// The field at fault, where there is one.
    pub field: Option<String>,
    /// The full reason, for people.
    pub detail: Option<String>,
    /// The event type it was published under.
    pub routing_key: String,
    /// The exchange it was first published to, where known.
    pub exchange: Option<String>,
    /// When it was dead-lettered (ms since the epoch), where known.
    pub dead_lettered_at_ms: Option<i64>,
    /// The producer's AMQP `timestamp` (ms since the epoch; seconds are converted).
    pub published_at_ms: Option<i64>,
    /// How often it was replayed before.
    pub replays: u64,
    /// Bytes of the original headers its copy had to leave out, if any.
    pub headers_dropped: Option<u64>,
    /// The body as the producer sent it.
    pub body: Vec<u8>,
}

/// Which dead letters a command acts on: every one whose reason is one of `reasons` (any, if
/// empty), whose routing key matches one of `routing_keys` (any, if empty) and that one of
/// `nodes` refused (any, if empty).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Reason codes, compared exactly.
    pub reasons: Vec<String>,
    /// AMQP topic patterns: `*` is one word, `#` zero or more, words separated by dots.
    pub routing_keys: Vec<String>,
    /// Node ids (`x-notify-node`), compared exactly. A message the broker dead-lettered by
    /// itself names no node, so no node selects it.
    pub nodes: Vec<String>,
}

impl Selection {
    /// Whether `letter` is chosen.
    pub fn selects(&self, letter: &DeadLetter) -> bool {
        let reason_ok = self.reasons.is_empty()
            || letter
                .reason
                .as_deref()
                .is_some_and(|reason| self.reasons.iter().any(|r| r == reason));
        let key_ok = self.routing_keys.is_empty()
            || self
                .routing_keys
                .iter()
                .any(|pattern| topic_matches(pattern, &letter.routing_key));
        let node_ok = self.nodes.is_empty()
            || matches!(&letter.refused_by, RefusedBy::Node(node) if self.nodes.contains(node));
        reason_ok && key_ok && node_ok
    }
}

/// Reads what the headers say about a message.
pub(super) fn read_letter(
    position: u64,
    routing_key: &str,
    properties: &BasicProperties,
    body: Vec<u8>,
) -> DeadLetter {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    let text = |key: &str| {
        header_text(headers, key).map(|value| String::from_utf8_lossy(value).into_owned())
    };
    let death = newest_death(headers);
    let refused_by = match (text(NODE_HEADER), &death) {
        (Some(node), _) => RefusedBy::Node(node),
        (None, Some(death)) => RefusedBy::Broker {
            queue: death.queue.clone().unwrap_or_default(),
        },
        (None, None) => RefusedBy::Unknown,
    };
    // Ours first: a message a node refused and the broker later expired keeps our reason.
    let reason = text(ERROR_HEADER).or_else(|| death.as_ref().and_then(|d| d.reason.clone()));
    // Empty: it came through the default exchange (a replay into a node's queue), which names
    // no exchange to go back to; the producers' exchange is the fallback then.
    let exchange = text(ORIGINAL_EXCHANGE_HEADER)
        .filter(|exchange| !exchange.is_empty())
        .or_else(|| death.as_ref().and_then(|d| d.exchange.clone()));
    let dead_lettered_at_ms = integer(headers, DEAD_LETTERED_AT_HEADER)
        .or_else(|| death.as_ref().and_then(|d| d.time_ms));
    DeadLetter {
        position,
        reason,
        refused_by,
        field: text(ERROR_FIELD_HEADER),
        detail: text(ERROR_DETAIL_HEADER),
        routing_key: text(ROUTING_KEY_HEADER)
            .or_else(|| death.as_ref().and_then(|d| d.routing_key.clone()))
            .unwrap_or_else(|| routing_key.to_owned()),
        exchange,
        dead_lettered_at_ms,
        published_at_ms: (*properties.timestamp()).and_then(amqp_timestamp_ms),
        replays: integer(headers, REPLAYS_HEADER)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        headers_dropped: integer(headers, HEADERS_DROPPED_HEADER)
            .and_then(|n| u64::try_from(n).ok()),
        body,
    }
}

/// The newest entry of the broker's `x-death` list.
struct Death {
    reason: Option<String>,
    queue: Option<String>,
    exchange: Option<String>,
    routing_key: Option<String>,
    time_ms: Option<i64>,
}

fn newest_death(headers: &FieldTable) -> Option<Death> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    let Some(AMQPValue::FieldTable(death)) = deaths.as_slice().first() else {
        return None;
    };
    let text = |key: &str| match death.inner().get(key) {
        Some(AMQPValue::LongString(value)) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        Some(AMQPValue::ShortString(value)) => Some(value.as_str().to_owned()),
        _ => None,
    };
    let routing_key = match death.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().find_map(|key| match key {
            AMQPValue::LongString(key) => {
                Some(String::from_utf8_lossy(key.as_bytes()).into_owned())
            }
            _ => None,
        }),
        _ => None,
    };
    let time_ms = match death.inner().get("time") {
        // AMQP timestamps are seconds.
        Some(AMQPValue::Timestamp(seconds)) => seconds
            .checked_mul(1000)
            .and_then(|ms| i64::try_from(ms).ok()),
        _ => None,
    };
    Some(Death {
        reason: text("reason"),
        queue: text("queue"),
        exchange: text("exchange").filter(|exchange| !exchange.is_empty()),
        routing_key,
        time_ms,
    })
}

fn integer(headers: &FieldTable, key: &str) -> Option<i64> {
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

/// Whether `key` matches the AMQP topic `pattern` (`*` one word, `#` zero or more words).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn words(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => {
                // `#` takes zero words, or one and stays.
                words(rest, key) || (!key.is_empty() && words(pattern, &key[1..]))
            }
            (Some((&word, rest)), Some((&first, key_rest))) => {
                (word == "*" || word == first) && words(rest, key_rest)
            }
            _ => false,
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let key: Vec<&str> = key.split('.').collect();
    words(&pattern, &key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_as_rabbitmq_does() {
        assert!(topic_matches("billing.#", "billing.payment_success"));
        assert!(topic_matches("billing.#", "billing"));
        assert!(topic_matches("#", "device.started"));
        assert!(topic_matches("*.started", "device.started"));
        assert!(topic_matches("device.*", "device.started"));
        assert!(topic_matches("#.started", "a.b.started"));
        assert!(topic_matches(
            "billing.payment_success",
            "billing.payment_success"
        ));
        assert!(!topic_matches("device.*", "device.status.changed"));
        assert!(!topic_matches("billing.*", "billing"));
        assert!(!topic_matches("quota.#", "billing.payment_success"));
        assert!(!topic_matches("billing.payment", "billing.payment_success"));
    }

    fn letter(reason: Option<&str>, routing_key: &str) -> DeadLetter {
        DeadLetter {
            position: 1,
            reason: reason.map(str::to_owned),
            refused_by: RefusedBy::Unknown,
            field: None,
            detail: None,
            routing_key: routing_key.into(),
            exchange: None,
            dead_lettered_at_ms: None,
            published_at_ms: None,
            replays: 0,
            headers_dropped: None,
            body: Vec::new(),
        }
    }

    #[test]
    fn a_selection_ands_its_kinds_and_ors_within_one() {
        let any = Selection::default();
        assert!(any.selects(&letter(None, "x")));
        let by_reason = Selection {
            reasons: vec!["too_large".into(), "missing_field".into()],
            ..Selection::default()
        };
        assert!(by_reason.selects(&letter(Some("missing_field"), "x")));
        assert!(!by_reason.selects(&letter(Some("not_json"), "x")));
        assert!(!by_reason.selects(&letter(None, "x")));
        let both = Selection {
            reasons: vec!["too_large".into()],
            routing_keys: vec!["billing.#".into()],
            ..Selection::default()
        };
        assert!(both.selects(&letter(Some("too_large"), "billing.refund_issued")));
        assert!(!both.selects(&letter(Some("too_large"), "device.started")));
        assert!(!both.selects(&letter(Some("not_json"), "billing.refund_issued")));
    }

    #[test]
    fn a_node_selects_what_that_node_refused_and_nothing_the_broker_did() {
        let by_node = Selection {
            nodes: vec!["a".into(), "b".into()],
            ..Selection::default()
        };
        let refused_by = |by: RefusedBy| DeadLetter {
            refused_by: by,
            ..letter(Some("not_json"), "x")
        };
        assert!(by_node.selects(&refused_by(RefusedBy::Node("b".into()))));
        assert!(!by_node.selects(&refused_by(RefusedBy::Node("c".into()))));
        assert!(!by_node.selects(&refused_by(RefusedBy::Broker { queue: "a".into() })));
        assert!(!by_node.selects(&refused_by(RefusedBy::Unknown)));
        let node_and_reason = Selection {
            reasons: vec!["too_large".into()],
            ..by_node
        };
        assert!(!node_and_reason.selects(&refused_by(RefusedBy::Node("a".into()))));
    }

    #[test]
    fn the_broker_s_own_dead_letters_are_read_from_x_death() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        death.insert(
            "queue".into(),
            AMQPValue::LongString("notify-backbone.a".into()),
        );
        death.insert(
            "exchange".into(),
            AMQPValue::LongString("cloudphone.events".into()),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_764_000_000));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("device.started".into())].into()),
        );
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        let letter = read_letter(1, "ignored", &properties, b"{}".to_vec());
        assert_eq!(letter.reason.as_deref(), Some("rejected"));
        assert_eq!(
            letter.refused_by,
            RefusedBy::Broker {
                queue: "notify-backbone.a".into()
            }
        );
        assert_eq!(letter.exchange.as_deref(), Some("cloudphone.events"));
        assert_eq!(letter.routing_key, "device.started");
        assert_eq!(letter.dead_lettered_at_ms, Some(1_764_000_000_000));
    }

    /// A message replayed into a queue came through the default exchange: refused again, its
    /// copy names the exchange `""`, which is no place to replay it to.
    #[test]
    fn an_empty_original_exchange_is_no_exchange() {
        let mut headers = FieldTable::default();
        headers.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            AMQPValue::LongString("".into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(read_letter(1, "k", &properties, Vec::new()).exchange, None);
    }
}
