//! The decoder takes anything a producer (or an attacker) can put on the wire and answers with a
//! typed event or a typed error: never a panic. Property tests feed it arbitrary bytes and
//! arbitrary JSON built from the catalog's own field names, under every routing key.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

use std::time::SystemTime;

use notify_backbone::schema::{self, DecodeError, DecodeSettings, Properties};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Every routing key the producers use, aliases included, plus keys the catalog does not know.
const ROUTING_KEYS: &[&str] = &[
    "quota.updated",
    "quota.exceeded",
    "quota.renewed",
    "quota.alert",
    "billing.low_balance",
    "billing.payment_success",
    "billing.invoice_generated",
    "billing.order.completed",
    "billing.order.cancelled",
    "app.installed",
    "app.install.completed",
    "app.install.failed",
    "app.install_failed",
    "app.updated",
    "device.created",
    "device.started",
    "device.stopped",
    "device.deleted",
    "device.error",
    "device.brand_new",
    "system.error.x",
    "",
];

/// The field names the decoder reads (`docs/wire-format.md` "Event catalog"), so generated
/// bodies reach deep into it.
const FIELDS: &[&str] = &[
    "type",
    "eventType",
    "eventId",
    "timestamp",
    "payload",
    "_trace",
    "traceparent",
    "tracestate",
    "userId",
    "deviceId",
    "deviceName",
    "quotaId",
    "limits",
    "usage",
    "status",
    "usagePercent",
    "percentage",
    "severity",
    "alertLevel",
    "warnings",
    "planName",
    "validUntil",
    "extensionDays",
    "maxDevices",
    "currentDevices",
    "usedMemoryGB",
    "lastUpdatedAt",
    "currentBalance",
    "threshold",
    "daysRemaining",
    "detectedAt",
    "amount",
    "newBalance",
    "paymentId",
    "paymentMethod",
    "paidAt",
    "invoiceId",
    "dueDate",
    "generatedAt",
    "orderId",
    "reason",
    "appId",
    "applicationId",
    "installationId",
    "appName",
    "version",
    "error",
    "errorMessage",
    "errorType",
    "occurredAt",
    "startedAt",
    "stoppedAt",
    "duration",
    "providerType",
    "tenantId",
    "updatedFields",
    "oldValues",
    "newValues",
    "priority",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        // Text that looks like what the decoder parses: dates, decimals, trace context.
        prop_oneof![
            Just("2025-11-20T10:00:00.000Z".to_owned()),
            Just("2025-13-45T99:00:00Z".to_owned()),
            Just("99.90".to_owned()),
            Just("1e400".to_owned()),
            Just("-0".to_owned()),
            Just("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
            "[a-z0-9._-]{0,12}",
            any::<String>(),
        ]
        .prop_map(Value::String),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(|pairs| {
                let map: Map<String, Value> =
                    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                Value::Object(map)
            }),
        ]
    })
}

/// A body that is an object at the top, as producers send, built from the catalog's fields.
fn body() -> impl Strategy<Value = Value> {
    prop::collection::vec((prop::sample::select(FIELDS), json()), 0..12).prop_map(|pairs| {
        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

/// The wire fixtures, (routing key, body): real producer messages to mutate.
fn fixtures() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some((key, _variant)) = name.trim_end_matches(".json").rsplit_once('.') else {
            continue;
        };
        let body = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        out.push((key.to_owned(), body));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A real producer message with some of its fields replaced, removed or added (at the top or
/// inside `payload`): near-valid input, where a decoder's edge cases live.
fn mutated_fixture() -> impl Strategy<Value = (String, Value)> {
    let fixtures = fixtures();
    let mutation = (
        any::<bool>(),
        prop::sample::select(FIELDS),
        prop::option::of(leaf()),
    );
    (
        prop::sample::select(fixtures),
        prop::collection::vec(mutation, 0..4),
    )
        .prop_map(|((key, mut body), mutations)| {
            for (in_payload, field, value) in mutations {
                let target = match body.get_mut("payload") {
                    Some(Value::Object(payload)) if in_payload => payload,
                    _ => match &mut body {
                        Value::Object(top) => top,
                        _ => continue,
                    },
                };
                match value {
                    Some(value) => target.insert(field.to_owned(), value),
                    None => target.remove(field),
                };
            }
            (key, body)
        })
}

fn props() -> Properties {
    Properties {
        timestamp_ms: Some(1_732_096_800_000),
        received_at: SystemTime::now(),
    }
}

/// What every answer must look like: a complete event, or an error with a known reason.
fn check(routing_key: &str, result: Result<schema::Decoded, DecodeError>) {
    match result {
        Ok(decoded) => {
            let event = decoded.event;
            assert!(!event.id.is_empty(), "{routing_key}: no id");
            assert!(!event.r#type.is_empty(), "{routing_key}: no type");
            assert!(event.occurred_at.is_some() && event.received_at.is_some());
            assert!(event.payload.is_some(), "{routing_key}: no payload");
            assert!(event.cursor.is_empty(), "the journal assigns cursors");
            // Every accepted event stays within what a subscriber can name and store.
            assert!(schema::is_event_type(&event.r#type), "{routing_key}");
            for id in [&event.id, &event.user_id, &event.device_id] {
                assert!(id.len() <= schema::MAX_ID_BYTES, "{routing_key}: {id}");
            }
            let per_user = ["quota.", "billing.", "device."]
                .iter()
                .any(|family| event.r#type.starts_with(family));
            assert!(
                !per_user || !event.user_id.is_empty(),
                "{routing_key}: a per-user event without a user"
            );
        }
        Err(error) => {
            let known = [
                "empty_body",
                "not_utf8",
                "not_json",
                "not_object",
                "invalid_routing_key",
                "unknown_routing_key",
                "too_large",
                "untyped_strict",
                "missing_field",
                "invalid_field",
                "payload_mismatch",
            ];
            assert!(known.contains(&error.reason()), "{error:?}");
            assert!(!error.to_string().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_get_a_typed_answer(
        key in prop::sample::select(ROUTING_KEYS),
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        strict in any::<bool>(),
    ) {
        let options = DecodeSettings {
            strict_schema: strict,
            ..DecodeSettings::default()
        };
        check(key, schema::decode(key, &bytes, &props(), options));
    }

    #[test]
    fn arbitrary_json_with_the_catalogs_fields_gets_a_typed_answer(
        key in prop::sample::select(ROUTING_KEYS),
        body in body(),
        strict in any::<bool>(),
    ) {
        let options = DecodeSettings {
            strict_schema: strict,
            ..DecodeSettings::default()
        };
        let bytes = serde_json::to_vec(&body).unwrap();
        check(key, schema::decode(key, &bytes, &props(), options));
    }

    #[test]
    fn mutated_producer_messages_get_a_typed_answer((key, body) in mutated_fixture()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        check(&key, schema::decode(&key, &bytes, &props(), DecodeSettings::default()));
    }

    #[test]
    fn arbitrary_json_of_any_shape_gets_a_typed_answer(
        key in prop::sample::select(ROUTING_KEYS),
        value in json(),
    ) {
        let bytes = serde_json::to_vec(&value).unwrap();
        check(key, schema::decode(key, &bytes, &props(), DecodeSettings::default()));
    }
}

#[test]
fn deeply_nested_input_is_refused_without_exhausting_the_stack() {
    for depth in [1_000, 100_000] {
        let mut body = String::from(r#"{"userId":"u1","deviceId":"d1","x":"#);
        body.push_str(&"[".repeat(depth));
        body.push_str(&"]".repeat(depth));
        body.push('}');
        let result = schema::decode(
            "device.started",
            body.as_bytes(),
            &props(),
            DecodeSettings::default(),
        );
        assert!(
            matches!(result, Err(DecodeError::NotJson(_))),
            "depth {depth}: {result:?}"
        );
    }
}

#[test]
fn mutation_reaches_both_events_and_errors() {
    // The property above is only worth something if it exercises both answers.
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let strategy = mutated_fixture();
    let (mut events, mut errors) = (0, 0);
    for _ in 0..500 {
        let (key, body) = strategy.new_tree(&mut runner).unwrap().current();
        let bytes = serde_json::to_vec(&body).unwrap();
        match schema::decode(&key, &bytes, &props(), DecodeSettings::default()) {
            Ok(_) => events += 1,
            Err(_) => errors += 1,
        }
    }
    assert!(
        events > 100 && errors > 20,
        "events {events}, errors {errors}"
    );
}
