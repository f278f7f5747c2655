//! JSON objects as `google.protobuf.Struct`, for the parts of an event that have no fixed schema
//! (`app.updated` old/new values, untyped events).
//!
//! `Struct` numbers are doubles by definition, so numbers go through `f64` here. That is why
//! money never goes through this module: typed amounts use `money` instead.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::Map;

/// Converts a JSON object. Recursion is bounded by serde_json's nesting limit (128) at parse time.
pub(super) fn from_object(object: &Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: object
            .iter()
            .map(|(key, value)| (key.clone(), from_value(value)))
            .collect(),
    }
}

/// Converts any JSON value.
fn from_value(value: &serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(*flag),
        // A number too large for a double (`1e400`) keeps its text rather than becoming
        // infinity, which `Struct` cannot carry in JSON form.
        serde_json::Value::Number(number) => match number.as_f64() {
            Some(float) => Kind::NumberValue(float),
            None => Kind::StringValue(number.to_string()),
        },
        serde_json::Value::String(text) => Kind::StringValue(text.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(from_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(from_object(object)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_json_kind_maps_to_its_struct_kind() {
        let json = serde_json::json!({
            "n": null, "b": true, "x": 1.5, "s": "t", "l": [1, "a"], "o": {"k": 2}
        });
        let object = json.as_object().expect("an object");
        let converted = from_object(object);
        let kind = |key: &str| {
            converted
                .fields
                .get(key)
                .and_then(|value| value.kind.clone())
        };
        assert_eq!(kind("n"), Some(Kind::NullValue(0)));
        assert_eq!(kind("b"), Some(Kind::BoolValue(true)));
        assert_eq!(kind("x"), Some(Kind::NumberValue(1.5)));
        assert_eq!(kind("s"), Some(Kind::StringValue("t".into())));
        let Some(Kind::ListValue(list)) = kind("l") else {
            panic!("l is not a list");
        };
        assert_eq!(list.values.len(), 2);
        let Some(Kind::StructValue(inner)) = kind("o") else {
            panic!("o is not a struct");
        };
        assert_eq!(
            inner.fields.get("k").and_then(|value| value.kind.clone()),
            Some(Kind::NumberValue(2.0))
        );
    }

    /// serde_json keeps a number's digits but writes its exponent as `e+400`.
    #[test]
    fn numbers_beyond_a_double_keep_their_text() {
        let json: serde_json::Value =
            serde_json::from_str(r#"{"big": 1e400}"#).expect("valid JSON");
        let converted = from_object(json.as_object().expect("an object"));
        assert_eq!(
            converted
                .fields
                .get("big")
                .and_then(|value| value.kind.clone()),
            Some(Kind::StringValue("1e+400".into()))
        );
    }
}
