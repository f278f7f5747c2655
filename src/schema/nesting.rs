//! How deep an event nests, and the bound that keeps every stored event decodable by every client.
//!
//! Owns: the JSON depth of a body ([`MAX_BODY_DEPTH`]) and the protobuf nesting of an event's
//! `Struct` fields ([`MAX_EVENT_NESTING`]). Does not own the conversion itself (`json_struct`).
//!
//! Why: prost, protobuf's C++/Java/Python (upb) runtimes and most others refuse a message that
//! nests more than [`DECODER_NESTING_LIMIT`] messages deep. A body that serde_json parses (it
//! allows 128 levels) can nest far deeper than that once it is a `Struct`, and a stored event that
//! a client cannot decode stops that client at every resume and every history page, for good.
//!
//! The arithmetic, with the `SubscribeResponse` (or `ListEventsResponse`) at level 0 and
//! `Event` at 1: an untyped event's `Struct` is at level 2 (`app.updated`'s `old_values` and
//! `new_values` at 3, below `AppUpdated`). Inside a `Struct`, each JSON object costs three
//! messages (a `Struct`, the map entry of its key, the `Value`), each array two (a `ListValue`,
//! the `Value` of its item), and a scalar the one or two messages that hold it. So a body whose
//! objects and arrays nest `d` deep reaches at most level `3 d + 1` (objects all the way down,
//! a scalar at the bottom); arrays alone reach `2 d + 1`.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::Map;

use super::DecodeError;
use crate::pb::{self, event::Payload};

/// How deep protobuf decoders let messages nest: prost's `RECURSION_LIMIT`, and the default
/// recursion limit of protobuf's C++, Java and Python runtimes. A message may have this many
/// levels of messages below it, no more.
pub const DECODER_NESTING_LIMIT: usize = 100;

/// The deepest a body's objects and arrays may nest, its top-level object being level 1: far
/// more than any producer's event (three or four levels), and low enough that the event, encoded,
/// stays well within [`DECODER_NESTING_LIMIT`] (see [`MAX_EVENT_NESTING`]).
pub const MAX_BODY_DEPTH: usize = 24;

/// The deepest level any message of an accepted event reaches in the `SubscribeResponse` that
/// carries it: what a body of [`MAX_BODY_DEPTH`] reaches at worst (objects all the way down),
/// `3 × 24 + 1 = 73`. The 27 levels up to [`DECODER_NESTING_LIMIT`] are the margin for a client
/// that wraps events in messages of its own, and for envelopes this contract may add. Also the
/// bound on a typed event's `Struct` fields (`Publish` with an `Event`).
pub const MAX_EVENT_NESTING: usize = 3 * MAX_BODY_DEPTH + 1;

const _: () = assert!(MAX_EVENT_NESTING + 16 <= DECODER_NESTING_LIMIT);

/// The level of an untyped event's `Struct` in a `SubscribeResponse`: response 0, `Event` 1.
const UNTYPED_LEVEL: usize = 2;
/// The level of `AppUpdated.old_values` and `new_values`: below `AppUpdated`, at 2.
const APP_UPDATED_VALUES_LEVEL: usize = 3;

/// The longest field path a [`DecodeError::TooDeep`] names, in bytes: paths are built from the
/// producer's keys, which may be long.
const MAX_PATH_BYTES: usize = 256;

/// What [`DecodeError::TooDeep`] counts for a JSON body.
const JSON_LEVELS: &str = "objects and arrays, the body's top level being 1";
/// What [`DecodeError::TooDeep`] counts for a typed event.
const MESSAGE_LEVELS: &str = "protobuf messages below the SubscribeResponse";

/// Refuses a body whose objects and arrays nest deeper than [`MAX_BODY_DEPTH`], naming the
/// path of the first value past the limit (`x[0][0]`, `payload.extra.a`). The parser bounds the
/// recursion here (serde_json nests at most 128 levels).
pub(super) fn check_body(root: &Map<String, serde_json::Value>) -> Result<(), DecodeError> {
    let depth = 1 + root.values().map(depth_of).max().unwrap_or(0);
    if depth <= MAX_BODY_DEPTH {
        return Ok(());
    }
    let mut path = String::new();
    let found = root
        .iter()
        .any(|(key, value)| path_past_limit(key_segment(key, ""), value, 2, &mut path));
    debug_assert!(found, "a body deeper than the limit has a value past it");
    Err(DecodeError::TooDeep {
        field: clip(path),
        what: JSON_LEVELS,
        depth,
        limit: MAX_BODY_DEPTH,
    })
}

/// Levels of objects and arrays in `value`: 0 for a scalar, 1 for an empty object or array.
fn depth_of(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth_of).max().unwrap_or(0),
        serde_json::Value::Object(map) => 1 + map.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `value`, at `level` and reached by `segment`, is or holds an object or array past
/// [`MAX_BODY_DEPTH`]; if so, `path` ends up as the path to the first one.
fn path_past_limit(
    segment: String,
    value: &serde_json::Value,
    level: usize,
    path: &mut String,
) -> bool {
    let is_container = matches!(
        value,
        serde_json::Value::Array(_) | serde_json::Value::Object(_)
    );
    if !is_container {
        return false;
    }
    let start = path.len();
    path.push_str(&segment);
    if level > MAX_BODY_DEPTH {
        return true;
    }
    let found = match value {
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .any(|(index, item)| path_past_limit(format!("[{index}]"), item, level + 1, path)),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(key, item)| path_past_limit(key_segment(key, "."), item, level + 1, path)),
        _ => false,
    };
    if !found {
        path.truncate(start);
    }
    found
}

/// A key as a path segment after `separator`.
fn key_segment(key: &str, separator: &str) -> String {
    format!("{separator}{key}")
}

/// `path`, cut to [`MAX_PATH_BYTES`] on a character boundary (marked with `…`).
fn clip(mut path: String) -> String {
    if path.len() > MAX_PATH_BYTES {
        let mut end = MAX_PATH_BYTES;
        while !path.is_char_boundary(end) {
            end -= 1;
        }
        path.truncate(end);
        path.push('…');
    }
    path
}

/// Refuses an event whose `Struct` fields reach deeper than [`MAX_EVENT_NESTING`] in its
/// `SubscribeResponse`. A body within [`MAX_BODY_DEPTH`] always passes; this is the bound for
/// typed events (a `Publish` with an `Event`, a forwarded event), which no JSON check saw; the
/// field is named by its proto name (`untyped`, `app_updated.old_values`).
pub(super) fn check_event(event: &pb::Event) -> Result<(), DecodeError> {
    let structs: Vec<(&str, usize, &Struct)> = match &event.payload {
        Some(Payload::Untyped(untyped)) => vec![("untyped", UNTYPED_LEVEL, untyped)],
        Some(Payload::AppUpdated(updated)) => [
            ("app_updated.old_values", &updated.old_values),
            ("app_updated.new_values", &updated.new_values),
        ]
        .into_iter()
        .filter_map(|(field, value)| Some((field, APP_UPDATED_VALUES_LEVEL, value.as_ref()?)))
        .collect(),
        _ => Vec::new(),
    };
    for (field, level, value) in structs {
        let deepest = struct_reach(value, level, MAX_EVENT_NESTING);
        if deepest > MAX_EVENT_NESTING {
            return Err(DecodeError::TooDeep {
                field: field.to_owned(),
                what: MESSAGE_LEVELS,
                depth: deepest,
                limit: MAX_EVENT_NESTING,
            });
        }
    }
    Ok(())
}

/// The level of the deepest message of `value`, itself at `level`. Stops descending past level
/// `cap`, so the recursion is bounded whatever the value: the answer is exact up to `cap`, and
/// some level past `cap` beyond it.
pub(super) fn struct_reach(value: &Struct, level: usize, cap: usize) -> usize {
    if level > cap {
        return level;
    }
    value
        .fields
        .values()
        // The map entry, then its value.
        .map(|item| value_reach(item, level + 2, cap))
        .max()
        .unwrap_or(level)
}

/// The level of the deepest message of `value`, itself at `level` (see [`struct_reach`]).
fn value_reach(value: &Value, level: usize, cap: usize) -> usize {
    match &value.kind {
        Some(Kind::StructValue(inner)) => struct_reach(inner, level + 1, cap),
        Some(Kind::ListValue(list)) => list_reach(list, level + 1, cap),
        _ => level,
    }
}

/// The level of the deepest message of `list`, itself at `level` (see [`struct_reach`]).
fn list_reach(list: &ListValue, level: usize, cap: usize) -> usize {
    if level > cap {
        return level;
    }
    list.values
        .iter()
        .map(|item| value_reach(item, level + 1, cap))
        .max()
        .unwrap_or(level)
}
