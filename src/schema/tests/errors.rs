//! Every `DecodeError` a body can cause, with its stable reason code and the field at fault.

use super::{decode_json, fixture_object, props, to_json};
use crate::schema::{DecodeError, DecodeSettings, decode};

/// Decodes raw bytes under `routing_key` and returns the error, which the test expects.
fn error_of(routing_key: &str, body: &[u8]) -> DecodeError {
    decode(routing_key, body, &props(), DecodeSettings::default())
        .expect_err("decoding should fail")
}

/// The error of a JSON body, which the test expects.
fn json_error(routing_key: &str, json: &str) -> DecodeError {
    decode_json(routing_key, json).expect_err(json)
}

#[test]
fn body_errors_have_their_reasons() {
    let cases: [(&[u8], DecodeError, &str); 5] = [
        (b"", DecodeError::Empty, "empty_body"),
        (b"{\"userId\":\"\xff\"}", DecodeError::NotUtf8, "not_utf8"),
        (b"[1, 2]", DecodeError::NotObject, "not_object"),
        (b"\"text\"", DecodeError::NotObject, "not_object"),
        (b"null", DecodeError::NotObject, "not_object"),
    ];
    for (body, expected, reason) in cases {
        let error = error_of("quota.updated", body);
        assert_eq!(error, expected);
        assert_eq!(error.reason(), reason);
        assert_eq!(error.field(), None);
    }
}

#[test]
fn text_that_is_not_json_says_where_parsing_failed() {
    for body in ["{", "not json", "{\"a\":NaN}", "{\"a\":1}}"] {
        let error = error_of("quota.updated", body.as_bytes());
        let DecodeError::NotJson(message) = &error else {
            panic!("{body}: {error:?}");
        };
        assert!(message.contains("line 1"), "{message}");
        assert_eq!(error.reason(), "not_json");
    }
}

#[test]
fn keys_outside_the_families_are_unknown_routing_keys() {
    for key in ["quota", "system.error.db", "user.created", "admin.notice"] {
        let error = error_of(key, br#"{"userId":"u"}"#);
        assert_eq!(error, DecodeError::UnknownRoutingKey(key.into()), "{key:?}");
        assert_eq!(error.reason(), "unknown_routing_key");
        assert_eq!(error.field(), None);
    }
}

/// One grammar for every event type: lowercase segments of `[a-z0-9_-]`, dots between, at most
/// 128 bytes. Keys that break it were once stored and delivered under types no subscriber
/// pattern can name (`billing.#`, a NUL, a right-to-left override, 10 KB of key).
#[test]
fn routing_keys_outside_the_grammar_are_invalid_whatever_their_prefix() {
    let long = format!("billing.{}", "a".repeat(10_000));
    for key in [
        "",
        "quota.",
        ".quota",
        "billing..x",
        "Quota.updated",
        "billing.#",
        "billing.*",
        "billing.a\0b",
        "billing.\u{202e}evil",
        "billing.a b",
        "billing.ü",
        &long,
    ] {
        let error = error_of(key, br#"{"userId":"u"}"#);
        assert!(
            matches!(&error, DecodeError::InvalidRoutingKey(shown) if shown.len() <= 128),
            "{key:?}: {error:?}"
        );
        assert_eq!(error.reason(), "invalid_routing_key");
    }
    // The longest allowed key is fine as far as the grammar goes (its family decides the rest).
    let longest = format!("billing.{}", "a".repeat(128 - "billing.".len()));
    let decoded = decode(
        &longest,
        br#"{"userId":"u"}"#,
        &props(),
        DecodeSettings::default(),
    );
    assert!(decoded.is_ok(), "{decoded:?}");
    // The platform's own keys all follow it.
    for key in [
        "app.install.failed",
        "billing.order.completed",
        "app.install_failed",
    ] {
        assert!(crate::schema::is_event_type(key), "{key}");
    }
}

#[test]
fn bodies_and_events_over_the_size_limit_are_too_large() {
    let tight = DecodeSettings {
        max_event_bytes: 2048,
        ..DecodeSettings::default()
    };
    // The body itself: refused before it is parsed (it is not even JSON here).
    let big = vec![b'x'; 4096];
    let error = decode("device.error", &big, &props(), tight).expect_err("too large");
    assert!(
        matches!(
            error,
            DecodeError::TooLarge {
                what: "body",
                size: 4096,
                limit: 2048
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.reason(), "too_large");
    // A body under the limit whose event, encoded, is over it: a protobuf `Struct` of many small
    // numbers is about twice the size of their JSON.
    let numbers: Vec<String> = (0..300).map(|i| format!(r#""k{i}":1"#)).collect();
    let body = format!(r#"{{"userId":"u","deviceId":"d",{}}}"#, numbers.join(","));
    assert!(
        body.len() < 2048 * 2 && body.len() > 2048 / 2,
        "{}",
        body.len()
    );
    let roomy = DecodeSettings {
        max_event_bytes: body.len(),
        ..DecodeSettings::default()
    };
    let error = decode("device.rebooted", body.as_bytes(), &props(), roomy).expect_err("too large");
    assert!(
        matches!(error, DecodeError::TooLarge { what: "event", .. }),
        "{error:?}"
    );
}

#[test]
fn ids_longer_than_a_filter_can_name_are_invalid() {
    let long = "i".repeat(257);
    let body = format!(
        r#"{{"eventId":"{long}","eventType":"device.error","payload":{{"deviceId":"d","userId":"u"}}}}"#
    );
    let error = error_of("device.error", body.as_bytes());
    assert_eq!(error.field(), Some("eventId"), "{error:?}");
    assert_eq!(error.reason(), "invalid_field");
    let body = format!(r#"{{"deviceId":"d","userId":"{long}"}}"#);
    let error = error_of("device.started", body.as_bytes());
    assert_eq!(error.field(), Some("userId"), "{error:?}");
    let body = format!(r#"{{"payload":{{"deviceId":"{long}","userId":"u"}}}}"#);
    let error = error_of("device.error", body.as_bytes());
    assert_eq!(error.field(), Some("payload.deviceId"), "{error:?}");
    // 256 bytes are fine.
    let fits = "i".repeat(256);
    let body = format!(r#"{{"deviceId":"{fits}","userId":"{fits}"}}"#);
    assert!(
        decode(
            "device.started",
            body.as_bytes(),
            &props(),
            DecodeSettings::default()
        )
        .is_ok()
    );
}

/// `*` is the firehose's word in a subscription: an event for that "user" could not be asked
/// for by its user id, and would reach a token whose subject is `*`. Every shape, every family,
/// untyped events and `app.*` (where a user is optional) alike.
#[test]
fn the_firehose_selector_is_not_a_user_id() {
    for (key, body, field) in [
        (
            "device.started",
            r#"{"deviceId":"d","userId":"*"}"#,
            "userId",
        ),
        (
            "device.error",
            r#"{"payload":{"deviceId":"d","userId":"*","errorType":"x"}}"#,
            "payload.userId",
        ),
        ("billing.anything", r#"{"userId":"*"}"#, "userId"),
        (
            "app.installed",
            r#"{"userId":"*","deviceId":"d","appId":"a"}"#,
            "userId",
        ),
        (
            "quota.exceeded",
            r#"{"userId":"*","quotaId":"q"}"#,
            "userId",
        ),
    ] {
        let error = json_error(key, body);
        assert_eq!(error.reason(), "invalid_field", "{key}: {error:?}");
        assert_eq!(error.field(), Some(field), "{key}: {error:?}");
        assert!(error.to_string().contains("not a user id"), "{error}");
    }
    // Only the whole word: ids that merely contain it are ids.
    for user in ["**", "u*", " *"] {
        let body = format!(r#"{{"deviceId":"d","userId":"{user}"}}"#);
        assert!(decode_json("device.started", &body).is_ok(), "{user:?}");
    }
}

#[test]
fn strict_untyped_has_its_reason() {
    let strict = DecodeSettings {
        strict_schema: true,
        ..DecodeSettings::default()
    };
    let error = decode("quota.frozen", br#"{"userId":"u"}"#, &props(), strict)
        .expect_err("strict refuses untyped");
    assert_eq!(error.reason(), "untyped_strict");
    assert_eq!(error.field(), None);
}

#[test]
fn per_user_events_without_a_user_are_missing_user_id() {
    for file in [
        "quota.updated.shape-b.json",
        "billing.order.cancelled.flat.json",
        "device.started.outbox.json",
    ] {
        let key = super::routing_key_of(file);
        for absent in [
            None,
            Some(serde_json::Value::Null),
            Some(serde_json::json!("")),
        ] {
            let mut body = fixture_object(file);
            body.remove("userId");
            if let Some(value) = absent.clone() {
                body.insert("userId".into(), value);
            }
            let error = json_error(key, &to_json(&body));
            assert_eq!(error.reason(), "missing_field", "{file} {absent:?}");
            assert_eq!(error.field(), Some("userId"), "{file} {absent:?}");
        }
    }
}

#[test]
fn envelope_fields_are_named_with_their_payload_path() {
    let json = r#"{"eventId":"e","payload":{"deviceId":"d","errorType":"x"}}"#;
    let error = json_error("device.error", json);
    assert_eq!(error.field(), Some("payload.userId"));
    let json = r#"{"eventId":"e","payload":{"userId":"u","errorType":"x"}}"#;
    assert_eq!(
        json_error("device.error", json).field(),
        Some("payload.deviceId")
    );
    let json = r#"{"payload":{"userId":"u","paymentId":"p","amount":"x","newBalance":1}}"#;
    let error = json_error("billing.payment_success", json);
    assert_eq!(error.reason(), "invalid_field");
    assert_eq!(error.field(), Some("payload.amount"));
}

#[test]
fn required_catalog_fields_are_missing_fields() {
    for (key, file, field) in [
        ("quota.updated", "quota.updated.shape-b.json", "quotaId"),
        ("quota.exceeded", "quota.exceeded.shape-b.json", "quotaId"),
        ("quota.renewed", "quota.renewed.shape-b.json", "quotaId"),
        ("quota.alert", "quota.alert.critical.json", "quotaId"),
        ("device.created", "device.created.outbox.json", "deviceId"),
        ("device.stopped", "device.stopped.outbox.json", "deviceId"),
        (
            "billing.payment_success",
            "billing.payment_success.flat.json",
            "paymentId",
        ),
        (
            "billing.payment_success",
            "billing.payment_success.flat.json",
            "amount",
        ),
        (
            "billing.payment_success",
            "billing.payment_success.flat.json",
            "newBalance",
        ),
        (
            "billing.invoice_generated",
            "billing.invoice_generated.flat.json",
            "invoiceId",
        ),
        (
            "billing.low_balance",
            "billing.low_balance.flat.json",
            "currentBalance",
        ),
        (
            "billing.order.completed",
            "billing.order.completed.flat.json",
            "orderId",
        ),
        (
            "billing.order.cancelled",
            "billing.order.cancelled.flat.json",
            "orderId",
        ),
        ("app.installed", "app.installed.shape-a.json", "deviceId"),
        (
            "app.installed",
            "app.installed.shape-a.json",
            "applicationId",
        ),
        (
            "app.install_failed",
            "app.install.failed.error.json",
            "appId",
        ),
        ("app.updated", "app.updated.catalog.json", "appId"),
    ] {
        let mut body = fixture_object(file);
        assert!(body.remove(field).is_some(), "{file} has no {field}");
        let error = json_error(key, &to_json(&body));
        assert_eq!(
            error,
            DecodeError::MissingField {
                field: field.into()
            },
            "{file}"
        );
        body.insert(field.into(), serde_json::Value::Null);
        assert_eq!(
            json_error(key, &to_json(&body)).field(),
            Some(field),
            "{file} null"
        );
    }
}

#[test]
fn optional_catalog_fields_may_be_absent() {
    for (key, file, field) in [
        (
            "billing.payment_success",
            "billing.payment_success.envelope.json",
            "orderId",
        ),
        ("device.deleted", "device.deleted.outbox.json", "deviceName"),
        ("app.installed", "app.installed.shape-a.json", "userId"),
    ] {
        let mut body = fixture_object(file);
        let removed = match body.get_mut("payload").and_then(|p| p.as_object_mut()) {
            Some(payload) => payload.remove(field),
            None => body.remove(field),
        };
        assert!(removed.is_some(), "{file} has no {field}");
        assert!(
            decode_json(key, &to_json(&body)).is_ok(),
            "{file} without {field}"
        );
    }
}

#[test]
fn values_of_the_wrong_type_are_invalid_fields_with_a_problem() {
    for (key, json, field, problem) in [
        (
            "device.deleted",
            r#"{"userId":{"id":"u"},"deviceId":"d"}"#,
            "userId",
            "expected a string, got an object",
        ),
        (
            "device.deleted",
            r#"{"userId":"u","deviceId":true}"#,
            "deviceId",
            "expected a string, got a boolean",
        ),
        (
            "quota.updated",
            r#"{"userId":"u","quotaId":"q","limits":[1]}"#,
            "limits",
            "expected an object, got an array",
        ),
        (
            "quota.updated",
            r#"{"userId":"u","quotaId":"q","usage":{"usedCpuCores":"lots"}}"#,
            "usage.usedCpuCores",
            "expected a number, got the string \"lots\"",
        ),
        (
            "quota.alert",
            r#"{"userId":"u","quotaId":"q","warnings":"full"}"#,
            "warnings",
            "expected an array, got a string",
        ),
        (
            "quota.alert",
            r#"{"userId":"u","quotaId":"q","percentage":97}"#,
            "percentage",
            "expected an object, got a number",
        ),
        (
            "device.started",
            r#"{"userId":"u","deviceId":"d","startedAt":"yesterday"}"#,
            "startedAt",
            "expected an ISO-8601 date, got \"yesterday\"",
        ),
        (
            "device.started",
            r#"{"userId":"u","deviceId":"d","timestamp":{}}"#,
            "timestamp",
            "expected a date, got an object",
        ),
        (
            "app.updated",
            r#"{"appId":"a","oldValues":"v1"}"#,
            "oldValues",
            "expected an object, got a string",
        ),
        (
            "device.deleted",
            r#"{"userId":"u","deviceId":"d","eventId":["x"]}"#,
            "eventId",
            "expected a string, got an array",
        ),
    ] {
        assert_eq!(
            json_error(key, json),
            DecodeError::InvalidField {
                field: field.into(),
                problem: problem.into()
            },
            "{json}"
        );
    }
}

#[test]
fn reason_codes_are_distinct_and_snake_case() {
    let errors = [
        DecodeError::Empty,
        DecodeError::NotUtf8,
        DecodeError::NotJson(String::new()),
        DecodeError::NotObject,
        DecodeError::UnknownRoutingKey(String::new()),
        DecodeError::InvalidRoutingKey(String::new()),
        DecodeError::TooLarge {
            what: "body",
            size: 2,
            limit: 1,
        },
        DecodeError::Untyped(String::new()),
        DecodeError::MissingField { field: "f".into() },
        DecodeError::InvalidField {
            field: "g".into(),
            problem: String::new(),
        },
        DecodeError::PayloadMismatch {
            event_type: String::new(),
        },
        DecodeError::TooDeep {
            field: "h".into(),
            what: "levels",
            depth: 2,
            limit: 1,
        },
    ];
    let reasons: std::collections::BTreeSet<&str> =
        errors.iter().map(DecodeError::reason).collect();
    assert_eq!(reasons.len(), errors.len());
    assert!(reasons.iter().all(|reason| {
        reason
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }));
    let fields: Vec<Option<&str>> = errors.iter().map(DecodeError::field).collect();
    assert_eq!(
        fields.iter().flatten().copied().collect::<Vec<_>>(),
        ["f", "g", "h"]
    );
}
