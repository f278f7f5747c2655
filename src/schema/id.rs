//! Event ids: the producer's `eventId`, or a deterministic hash of what the producer sent.
//!
//! The hash is what makes outbox re-sends (shape C, same body after a crash) deduplicate in the
//! journal: it covers the canonical type and the body with its keys sorted, and leaves out
//! `_trace`, which differs between two sends of the same event.

use prost::Message;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::body::TRACE_KEY;
use crate::pb;

/// Prefix of hashed ids, so they never collide with a producer's `eventId` by accident.
const HASH_ID_PREFIX: &str = "h-";

/// Hex digits of the digest kept in an id: 128 bits, plenty against accidental collisions.
const HASH_ID_HEX_LEN: usize = 32;

/// The id of a JSON body without `eventId`: a hash of `event_type` and the body without
/// `_trace`, serialized compactly with sorted keys.
pub(super) fn from_body(event_type: &str, root: &Map<String, Value>) -> String {
    let mut canonical = String::new();
    write_object(&mut canonical, root, true);
    hash(event_type, canonical.as_bytes())
}

/// The id of a typed event without one: a hash of `event_type` and the encoded event with every
/// field the server assigns cleared, and the trace context too (as for JSON bodies).
pub(super) fn from_typed(event_type: &str, event: &pb::Event) -> String {
    let content = pb::Event {
        id: String::new(),
        cursor: String::new(),
        received_at: None,
        traceparent: String::new(),
        tracestate: String::new(),
        ..event.clone()
    };
    hash(event_type, &content.encode_to_vec())
}

/// `h-` and the start of the hex SHA-256 of `event_type`, a newline and `content`.
fn hash(event_type: &str, content: &[u8]) -> String {
    let mut digest = Sha256::new();
    digest.update(event_type.as_bytes());
    digest.update(b"\n");
    digest.update(content);
    let hex: String = digest
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!(
        "{HASH_ID_PREFIX}{}",
        hex.get(..HASH_ID_HEX_LEN).unwrap_or_default()
    )
}

/// Writes `map` as compact JSON with sorted keys, the same text `serde_json::to_vec` gives for a
/// `BTreeMap`-backed map. Written out rather than relying on that, because the map type changes
/// if any crate in the build turns on serde_json's `preserve_order`.
fn write_object(out: &mut String, map: &Map<String, Value>, skip_trace: bool) {
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(key, _)| !(skip_trace && key.as_str() == TRACE_KEY))
        .collect();
    entries.sort_by(|left, right| left.0.cmp(right.0));
    out.push('{');
    for (index, (key, value)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key.clone()).to_string());
        out.push(':');
        write_value(out, value);
    }
    out.push('}');
}

/// Writes any value as compact JSON with sorted keys. Numbers keep their text exactly
/// (`arbitrary_precision`), so `99.90` and `99.9` hash differently, as they are written.
fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map, false),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
