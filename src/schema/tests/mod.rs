//! Tests of the whole module through its public functions: the wire fixtures
//! (`tests/fixtures/wire/`, the shapes of `docs/wire-format.md`), decoding rules, errors, admin
//! notices and typed events. Small pure parts (money, dates, fields) are tested next to their code.

mod admin;
mod decode;
mod errors;
mod fixtures;
mod nesting;
mod typed;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;

use super::{DecodeError, DecodeSettings, Decoded, Properties, decode};

/// The traceparent most fixtures carry.
const TRACE_1: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The traceparent of the fixtures that also carry a tracestate.
const TRACE_2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// When the tests' server receives every message.
const RECEIVED: &str = "2027-01-15T08:00:00Z";

/// The time `RECEIVED` names.
fn received_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Properties of a message without an AMQP timestamp, received at `RECEIVED`.
fn props() -> Properties {
    Properties {
        timestamp_ms: None,
        received_at: received_at(),
    }
}

/// The timestamp of an RFC 3339 text.
fn at(text: &str) -> Timestamp {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).expect("a valid test date");
    Timestamp {
        seconds: parsed.timestamp(),
        nanos: i32::try_from(parsed.timestamp_subsec_nanos()).expect("nanos fit"),
    }
}

/// Decodes `json` published under `routing_key`, leniently.
fn decode_json(routing_key: &str, json: &str) -> Result<Decoded, DecodeError> {
    decode(
        routing_key,
        json.as_bytes(),
        &props(),
        DecodeSettings::default(),
    )
}

/// Decodes `json`, which the test expects to succeed.
fn decoded(routing_key: &str, json: &str) -> Decoded {
    match decode_json(routing_key, json) {
        Ok(decoded) => decoded,
        Err(error) => panic!("{routing_key}: {error}"),
    }
}

/// The directory of the wire fixtures.
fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire")
}

/// The text of fixture `file`.
fn fixture(file: &str) -> String {
    let path = fixture_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The routing key a fixture is published under: its name without `.<variant>.json`.
fn routing_key_of(file: &str) -> &str {
    file.strip_suffix(".json")
        .and_then(|stem| stem.rsplit_once('.'))
        .map_or(file, |(key, _variant)| key)
}

/// Decodes fixture `file` under its routing key.
fn decoded_fixture(file: &str) -> Decoded {
    decoded(routing_key_of(file), &fixture(file))
}

/// A fixture's body as a JSON object, for tests that change one field.
fn fixture_object(file: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(&fixture(file)) {
        Ok(serde_json::Value::Object(map)) => map,
        other => panic!("{file} is not an object: {other:?}"),
    }
}

/// Serializes an edited body back to JSON text.
fn to_json(map: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(map.clone()).to_string()
}
