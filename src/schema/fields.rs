//! Reading typed values out of a producer's JSON object, leniently where the producers are.
//!
//! Owns the value rules shared by every event: a number sent for a string id is stringified, a
//! numeric string (`"99.90"`, how TypeORM sends decimals) is a number, `null` is absent, and any
//! other mismatch is an `InvalidField` naming the producer's field (`payload.limits.maxDevices`).
//! Does not own which fields an event has (see `catalog`).

use prost_types::Timestamp;
use serde_json::{Map, Number, Value};

use super::{DecodeError, dates, money};
use crate::pb;

/// A JSON object plus the path that leads to it, so every error names the producer's field.
#[derive(Debug, Clone)]
pub(super) struct Fields<'a> {
    /// The object read from.
    map: &'a Map<String, Value>,
    /// Prepended to field names in errors: `""`, `"payload."`, `"payload.limits."`.
    prefix: String,
}

impl<'a> Fields<'a> {
    /// Reads `map`, whose fields are named `prefix` + name in errors.
    pub(super) fn new(map: &'a Map<String, Value>, prefix: impl Into<String>) -> Self {
        Self {
            map,
            prefix: prefix.into(),
        }
    }

    /// The producer's full name of field `name`, e.g. `payload.userId`.
    pub(super) fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The object read from.
    pub(super) fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    /// The value of `name`, treating `null` as absent (that is how `JSON.stringify` writes
    /// `undefined` members of arrays, `NaN` and `Infinity`).
    pub(super) fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    /// The first of `names` that is present, else the first name: which spelling of an aliased
    /// field to read (and to name in an error).
    pub(super) fn alias<'n>(&self, names: &[&'n str]) -> &'n str {
        let present = names.iter().find(|name| self.get(name).is_some());
        present.or(names.first()).copied().unwrap_or_default()
    }

    /// A string field; a number is accepted and kept as written (`123` → `"123"`).
    pub(super) fn string(&self, name: &str) -> Result<Option<String>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => Err(self.invalid(name, expected("a string", other))),
        }
    }

    /// An optional string field, empty when absent.
    pub(super) fn text(&self, name: &str) -> Result<String, DecodeError> {
        Ok(self.string(name)?.unwrap_or_default())
    }

    /// A required string field: absent, `null` or `""` is a `MissingField`.
    pub(super) fn required_string(&self, name: &str) -> Result<String, DecodeError> {
        match self.string(name)? {
            Some(text) if !text.is_empty() => Ok(text),
            _ => Err(DecodeError::missing(self.path(name))),
        }
    }

    /// A number field; a numeric string is accepted. Unset when absent or `null`.
    pub(super) fn number(&self, name: &str) -> Result<Option<f64>, DecodeError> {
        let parsed = match self.get(name) {
            None => return Ok(None),
            Some(Value::Number(number)) => number_from_json(number),
            Some(Value::String(text)) => number_from_text(text),
            Some(other) => Err(expected("a number", other)),
        };
        parsed
            .map(Some)
            .map_err(|problem| self.invalid(name, problem))
    }

    /// A date field (see `dates` for the accepted forms). Unset when absent or `null`.
    pub(super) fn date(&self, name: &str) -> Result<Option<Timestamp>, DecodeError> {
        let parsed = match self.get(name) {
            None => return Ok(None),
            Some(Value::String(text)) => dates::parse_text(text),
            Some(Value::Number(number)) => dates::parse_epoch_ms(number),
            Some(other) => Err(expected("a date", other)),
        };
        parsed
            .map(Some)
            .map_err(|problem| self.invalid(name, problem))
    }

    /// An amount of money, exact (see `money`). Unset when absent or `null`.
    pub(super) fn money(&self, name: &str) -> Result<Option<pb::Decimal>, DecodeError> {
        let text = match self.get(name) {
            None => return Ok(None),
            // With serde_json's `arbitrary_precision` this is the number exactly as written.
            Some(Value::Number(number)) => number.as_str(),
            Some(Value::String(text)) => text.as_str(),
            Some(other) => return Err(self.invalid(name, expected("an amount", other))),
        };
        money::normalize_decimal(text)
            .map(|value| Some(pb::Decimal { value }))
            .map_err(|problem| self.invalid(name, problem))
    }

    /// A required amount of money: absent or `null` is a `MissingField`.
    pub(super) fn required_money(&self, name: &str) -> Result<pb::Decimal, DecodeError> {
        self.money(name)?
            .ok_or_else(|| DecodeError::missing(self.path(name)))
    }

    /// A nested object, read with its own path (`limits.`). Unset when absent or `null`.
    pub(super) fn object(&self, name: &str) -> Result<Option<Fields<'a>>, DecodeError> {
        Ok(self
            .raw_object(name)?
            .map(|map| Fields::new(map, format!("{}.", self.path(name)))))
    }

    /// A nested object as plain JSON. Unset when absent or `null`.
    pub(super) fn raw_object(
        &self,
        name: &str,
    ) -> Result<Option<&'a Map<String, Value>>, DecodeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(self.invalid(name, expected("an object", other))),
        }
    }

    /// An array of strings (numbers stringified). Empty when absent or `null`.
    pub(super) fn strings(&self, name: &str) -> Result<Vec<String>, DecodeError> {
        let items = match self.get(name) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.invalid(name, expected("an array", other))),
        };
        items
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(text.clone()),
                Value::Number(number) => Ok(number.to_string()),
                other => {
                    Err(self.invalid(&format!("{name}[{index}]"), expected("a string", other)))
                }
            })
            .collect()
    }

    /// An `InvalidField` error for field `name` of this object.
    pub(super) fn invalid(&self, name: &str, problem: String) -> DecodeError {
        DecodeError::InvalidField {
            field: self.path(name),
            problem,
        }
    }
}

/// A JSON number as a finite double.
fn number_from_json(number: &Number) -> Result<f64, String> {
    number
        .as_f64()
        .ok_or_else(|| format!("number out of range: {}", short(number.as_str())))
}

/// A numeric string as a double. The decimal grammar is checked first because Rust's float
/// parser also takes `inf`, `NaN` and `+1`, which no producer means as a number.
fn number_from_text(text: &str) -> Result<f64, String> {
    money::normalize_decimal(text)
        .map_err(|_| format!("expected a number, got the string {:?}", short(text)))?;
    text.parse::<f64>()
        .ok()
        .filter(|float| float.is_finite())
        .ok_or_else(|| format!("number out of range: {}", short(text)))
}

/// The problem text for a value of the wrong JSON type.
pub(super) fn expected(what: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("expected {what}, got {kind}")
}

/// The start of a producer's text, so that error messages stay short.
fn short(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json) {
            Ok(Value::Object(map)) => map,
            other => panic!("not an object: {other:?}"),
        }
    }

    #[test]
    fn numbers_are_read_from_numbers_and_numeric_strings() {
        let map = object(r#"{"a": 12.5, "b": "99.90", "c": null, "d": "1e2"}"#);
        let fields = Fields::new(&map, "");
        assert_eq!(fields.number("a"), Ok(Some(12.5)));
        assert_eq!(fields.number("b"), Ok(Some(99.9)));
        assert_eq!(fields.number("c"), Ok(None));
        assert_eq!(fields.number("d"), Ok(Some(100.0)));
        assert_eq!(fields.number("absent"), Ok(None));
    }

    #[test]
    fn wrong_types_for_numbers_name_the_field_and_the_problem() {
        let map = object(r#"{"o": {}, "b": true, "s": "lots", "n": "NaN", "x": 1e400}"#);
        let fields = Fields::new(&map, "payload.");
        for (name, problem) in [
            ("o", "expected a number, got an object"),
            ("b", "expected a number, got a boolean"),
            ("s", "expected a number, got the string \"lots\""),
            ("n", "expected a number, got the string \"NaN\""),
            ("x", "number out of range: 1e+400"),
        ] {
            assert_eq!(
                fields.number(name),
                Err(DecodeError::InvalidField {
                    field: format!("payload.{name}"),
                    problem: problem.into()
                })
            );
        }
    }

    #[test]
    fn string_ids_accept_numbers_and_refuse_objects() {
        let map = object(r#"{"id": 42, "name": "x", "bad": [1], "empty": ""}"#);
        let fields = Fields::new(&map, "");
        assert_eq!(fields.string("id"), Ok(Some("42".into())));
        assert_eq!(fields.text("name"), Ok("x".into()));
        assert_eq!(fields.text("absent"), Ok(String::new()));
        assert_eq!(
            fields.string("bad").map_err(|error| error.reason()),
            Err("invalid_field")
        );
        assert_eq!(
            fields.required_string("empty"),
            Err(DecodeError::MissingField {
                field: "empty".into()
            })
        );
    }

    #[test]
    fn nested_objects_carry_their_path_into_errors() {
        let map = object(r#"{"limits": {"maxDevices": "many"}}"#);
        let fields = Fields::new(&map, "payload.");
        let limits = fields
            .object("limits")
            .expect("an object")
            .expect("present");
        assert_eq!(
            limits
                .number("maxDevices")
                .map_err(|error| error.field().map(String::from)),
            Err(Some("payload.limits.maxDevices".into()))
        );
    }

    #[test]
    fn string_arrays_name_the_bad_element() {
        let map = object(r#"{"w": ["a", 2, {"x": 1}]}"#);
        let fields = Fields::new(&map, "");
        assert_eq!(
            fields
                .strings("w")
                .map_err(|error| error.field().map(String::from)),
            Err(Some("w[2]".into()))
        );
    }

    #[test]
    fn aliases_pick_the_first_spelling_present() {
        let map = object(r#"{"errorMessage": "boom", "error": null}"#);
        let fields = Fields::new(&map, "");
        assert_eq!(
            fields.alias(&["error", "errorMessage", "reason"]),
            "errorMessage"
        );
        assert_eq!(fields.alias(&["appId", "applicationId"]), "appId");
    }
}
