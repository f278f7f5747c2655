//! Decoding rules across events: aliases, dates and their fallbacks, lenient values, ids,
//! untyped events.

use prost_types::value::Kind;
use sha2::{Digest, Sha256};

use super::{
    RECEIVED, at, decode_json, decoded, decoded_fixture, fixture, fixture_object, props,
    received_at, to_json,
};
use crate::pb::event::Payload;
use crate::schema::{DecodeError, DecodeSettings, Properties, decode};

fn install_failed_error(routing_key: &str, alias: &str) -> String {
    let json = format!(r#"{{"appId":"a-1","deviceId":"d-1","{alias}":"disk full","_trace":{{}}}}"#);
    match decoded(routing_key, &json).event.payload {
        Some(Payload::AppInstallFailed(app)) => app.error,
        other => panic!("not AppInstallFailed: {other:?}"),
    }
}

#[test]
fn routing_key_aliases_resolve_to_the_canonical_type() {
    let body = r#"{"appId":"a-1","deviceId":"d-1","error":"x","_trace":{}}"#;
    assert_eq!(
        decoded("app.install.failed", body).event.r#type,
        "app.install_failed"
    );
    assert_eq!(
        decoded("app.install_failed", body).event.r#type,
        "app.install_failed"
    );
    assert_eq!(
        decoded("app.install.completed", body).event.r#type,
        "app.installed"
    );
}

#[test]
fn every_spelling_of_an_install_failure_is_read() {
    for routing_key in ["app.install.failed", "app.install_failed"] {
        for alias in ["error", "errorMessage", "reason"] {
            assert_eq!(
                install_failed_error(routing_key, alias),
                "disk full",
                "{alias}"
            );
        }
    }
}

#[test]
fn the_preferred_error_spelling_wins_when_several_are_sent() {
    let json = r#"{"appId":"a","deviceId":"d","reason":"r","errorMessage":"m","error":"e"}"#;
    let Some(Payload::AppInstallFailed(app)) = decoded("app.install_failed", json).event.payload
    else {
        panic!("not AppInstallFailed");
    };
    assert_eq!(app.error, "e");
}

#[test]
fn both_spellings_of_the_app_id_are_read() {
    for field in ["applicationId", "appId"] {
        let json = format!(r#"{{"{field}":"a-9","deviceId":"d-1"}}"#);
        let Some(Payload::AppInstalled(app)) = decoded("app.installed", &json).event.payload else {
            panic!("not AppInstalled");
        };
        assert_eq!(app.app_id, "a-9", "{field}");
    }
}

#[test]
fn payment_email_is_read_from_user_email_or_email() {
    for field in ["userEmail", "email"] {
        let json = format!(
            r#"{{"userId":"u","paymentId":"p","amount":1,"newBalance":2,"{field}":"e@x.io"}}"#
        );
        let Some(Payload::BillingPaymentSuccess(payment)) =
            decoded("billing.payment_success", &json).event.payload
        else {
            panic!("not BillingPaymentSuccess");
        };
        assert_eq!(payment.email, "e@x.io", "{field}");
    }
}

#[test]
fn quota_alert_reads_alert_level_and_a_usage_percent_object_for_older_producers() {
    let json = r#"{"userId":"u","quotaId":"q","alertLevel":"critical","usagePercent":{"cpu":40}}"#;
    let Some(Payload::QuotaAlert(alert)) = decoded("quota.alert", json).event.payload else {
        panic!("not QuotaAlert");
    };
    assert_eq!(alert.severity, crate::pb::AlertSeverity::Critical as i32);
    assert_eq!(alert.percentage.and_then(|p| p.cpu), Some(40.0));
    assert_eq!(alert.max_percent, Some(40.0));
}

#[test]
fn a_single_usage_percent_beats_the_highest_percentage() {
    let json = r#"{"userId":"u","quotaId":"q","percentage":{"cpu":99},"usagePercent":"60"}"#;
    let Some(Payload::QuotaAlert(alert)) = decoded("quota.alert", json).event.payload else {
        panic!("not QuotaAlert");
    };
    assert_eq!(alert.percentage.and_then(|p| p.cpu), Some(99.0));
    assert_eq!(alert.max_percent, Some(60.0));
}

#[test]
fn unknown_statuses_and_severities_are_unspecified_but_kept_as_text() {
    let json = r#"{"userId":"u","quotaId":"q","status":"frozen"}"#;
    let Some(Payload::QuotaUpdated(quota)) = decoded("quota.updated", json).event.payload else {
        panic!("not QuotaUpdated");
    };
    assert_eq!(quota.status, crate::pb::QuotaStatus::Unspecified as i32);
    assert_eq!(quota.status_text, "frozen");
    let json = r#"{"userId":"u","quotaId":"q","severity":"info"}"#;
    let Some(Payload::QuotaAlert(alert)) = decoded("quota.alert", json).event.payload else {
        panic!("not QuotaAlert");
    };
    assert_eq!(alert.severity, crate::pb::AlertSeverity::Unspecified as i32);
}

#[test]
fn the_amqp_timestamp_in_milliseconds_is_used_when_the_body_has_no_date() {
    let props = Properties {
        timestamp_ms: Some(1_732_096_800_123),
        received_at: received_at(),
    };
    let body = fixture("device.deleted.no-timestamp.json");
    let event = decode(
        "device.deleted",
        body.as_bytes(),
        &props,
        DecodeSettings::default(),
    )
    .expect("decodes")
    .event;
    assert_eq!(event.occurred_at, Some(at("2024-11-20T10:00:00.123Z")));
    assert_eq!(event.received_at, Some(at(RECEIVED)));
}

#[test]
fn the_body_timestamp_beats_the_amqp_timestamp_and_the_own_date_beats_both() {
    let props = Properties {
        timestamp_ms: Some(1_732_096_800_123),
        received_at: received_at(),
    };
    let decode_with = |key: &str, file: &str| {
        let body = fixture(file);
        decode(key, body.as_bytes(), &props, DecodeSettings::default())
            .expect("decodes")
            .event
            .occurred_at
    };
    assert_eq!(
        decode_with("device.deleted", "device.deleted.outbox.json"),
        Some(at("2025-11-20T14:00:00Z"))
    );
    assert_eq!(
        decode_with("device.started", "device.started.outbox.json"),
        Some(at("2025-11-20T12:01:00Z"))
    );
}

#[test]
fn received_at_is_the_fallback_when_nothing_dates_the_event() {
    let event = decoded("device.deleted", r#"{"deviceId":"d","userId":"u"}"#).event;
    assert_eq!(event.occurred_at, Some(at(RECEIVED)));
    assert_eq!(event.received_at, Some(at(RECEIVED)));
}

#[test]
fn an_envelope_timestamp_dates_a_payload_without_one() {
    let json = r#"{"timestamp":"2025-11-20T10:00:00Z","payload":{"deviceId":"d","userId":"u"}}"#;
    let event = decoded("device.deleted", json).event;
    assert_eq!(event.occurred_at, Some(at("2025-11-20T10:00:00Z")));
}

#[test]
fn dates_may_be_date_only_offsets_or_epoch_milliseconds() {
    for (date, expected) in [
        (r#""2025-12-01""#, "2025-12-01T00:00:00Z"),
        (r#""2025-11-20T18:00:00+08:00""#, "2025-11-20T10:00:00Z"),
        ("1732096800000", "2024-11-20T10:00:00Z"),
    ] {
        let json = format!(r#"{{"deviceId":"d","userId":"u","startedAt":{date}}}"#);
        let event = decoded("device.started", &json).event;
        assert_eq!(event.occurred_at, Some(at(expected)), "{date}");
    }
}

#[test]
fn null_numbers_and_dates_are_unset() {
    let json = r#"{"userId":"u","quotaId":"q","limits":{"maxDevices":null},"usage":null,
        "validUntil":null,"extensionDays":null}"#;
    let Some(Payload::QuotaRenewed(quota)) = decoded("quota.renewed", json).event.payload else {
        panic!("not QuotaRenewed");
    };
    assert_eq!(quota.limits.expect("limits").max_devices, None);
    assert_eq!(quota.valid_until, None);
    assert_eq!(quota.extension_days, None);
}

#[test]
fn numeric_strings_are_numbers_and_numbers_are_string_ids() {
    let json =
        r#"{"userId":1001,"deviceId":7001,"duration":"3600.5","stoppedAt":"2025-11-20T10:00:00Z"}"#;
    let event = decoded("device.stopped", json).event;
    assert_eq!(event.user_id, "1001");
    assert_eq!(event.device_id, "7001");
    let Some(Payload::DeviceStopped(device)) = event.payload else {
        panic!("not DeviceStopped");
    };
    assert_eq!(device.duration_seconds, Some(3600.5));
}

#[test]
fn unknown_extra_keys_are_tolerated() {
    let mut body = fixture_object("quota.updated.shape-b.json");
    let plain = decoded("quota.updated", &to_json(&body)).event;
    body.insert(
        "schemaVersion".into(),
        serde_json::json!({"major": 2, "tags": [1, "x"]}),
    );
    body.insert("payloadSize".into(), serde_json::json!(12));
    let extended = decoded("quota.updated", &to_json(&body)).event;
    assert_eq!(extended.payload, plain.payload);
    assert_eq!(extended.user_id, plain.user_id);
}

#[test]
fn money_amounts_stay_exact_through_decoding() {
    for (amount, expected) in [
        ("99.9", "99.9"),
        ("99.90", "99.90"),
        ("100", "100"),
        ("1e3", "1000"),
        ("2.5E-2", "0.025"),
        ("-0.5", "-0.5"),
        (r#""12.30""#, "12.30"),
        (r#""1.5e2""#, "150"),
        ("0.1", "0.1"),
        (
            "12345678901234567890.123456789",
            "12345678901234567890.123456789",
        ),
    ] {
        let json = format!(r#"{{"userId":"u","orderId":"o","amount":{amount}}}"#);
        let Some(Payload::BillingOrderCompleted(order)) =
            decoded("billing.order.completed", &json).event.payload
        else {
            panic!("not BillingOrderCompleted");
        };
        assert_eq!(
            order.amount.map(|d| d.value).as_deref(),
            Some(expected),
            "{amount}"
        );
    }
}

#[test]
fn bad_amounts_are_invalid_fields() {
    for amount in [
        r#""12,30""#,
        r#""ten""#,
        r#""""#,
        r#""1e999999999""#,
        "1e999999999",
        "true",
        "[1]",
        "{}",
    ] {
        let json = format!(r#"{{"userId":"u","orderId":"o","amount":{amount}}}"#);
        let error = decode_json("billing.order.completed", &json).expect_err(amount);
        assert_eq!(error.reason(), "invalid_field", "{amount}: {error}");
        assert_eq!(error.field(), Some("amount"), "{amount}");
    }
}

/// The documented id formula, written out independently of the implementation.
fn expected_hash_id(event_type: &str, body: &serde_json::Map<String, serde_json::Value>) -> String {
    let mut without_trace = body.clone();
    without_trace.remove("_trace");
    let serialized =
        serde_json::to_vec(&serde_json::Value::Object(without_trace)).expect("serializes");
    let mut digest = Sha256::new();
    digest.update(format!("{event_type}\n").as_bytes());
    digest.update(&serialized);
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("h-{}", &hex[..32])
}

#[test]
fn bodies_without_event_id_get_the_documented_hash_id() {
    let body = fixture_object("device.started.outbox.json");
    let event = decoded("device.started", &to_json(&body)).event;
    assert_eq!(event.id, expected_hash_id("device.started", &body));
    assert_eq!(event.id.len(), 34);
}

#[test]
fn an_outbox_resend_with_another_trace_keeps_its_id() {
    let mut body = fixture_object("device.started.outbox.json");
    let first = decoded("device.started", &to_json(&body)).event;
    body.insert(
        "_trace".into(),
        serde_json::json!({"traceparent": "00-11111111111111111111111111111111-2222222222222222-01"}),
    );
    let resent = decoded("device.started", &to_json(&body)).event;
    assert_ne!(first.traceparent, resent.traceparent);
    assert_eq!(first.id, resent.id);
    body.remove("_trace");
    assert_eq!(
        decoded("device.started", &to_json(&body)).event.id,
        first.id
    );
}

#[test]
fn key_order_does_not_change_the_id_but_content_and_type_do() {
    let a = decoded(
        "device.deleted",
        r#"{"deviceId":"d","userId":"u","x":{"b":1,"a":2}}"#,
    );
    let b = decoded(
        "device.deleted",
        r#"{"x":{"a":2,"b":1},"userId":"u","deviceId":"d"}"#,
    );
    assert_eq!(a.event.id, b.event.id);
    let other = decoded("device.deleted", r#"{"deviceId":"d2","userId":"u"}"#);
    assert_ne!(a.event.id, other.event.id);
    let other_type = decoded(
        "device.created",
        r#"{"deviceId":"d","userId":"u","x":{"b":1,"a":2}}"#,
    );
    assert_ne!(a.event.id, other_type.event.id);
}

#[test]
fn a_routing_key_alias_hashes_like_its_canonical_type() {
    let body = fixture("app.install.failed.reason.json");
    assert_eq!(
        decoded("app.install.failed", &body).event.id,
        decoded("app.install_failed", &body).event.id
    );
}

#[test]
fn the_producers_event_id_is_used_when_present_and_not_empty() {
    let with_id = r#"{"eventId":"evt-1","deviceId":"d","userId":"u"}"#;
    assert_eq!(decoded("device.deleted", with_id).event.id, "evt-1");
    let numeric_id = r#"{"eventId":42,"deviceId":"d","userId":"u"}"#;
    assert_eq!(decoded("device.deleted", numeric_id).event.id, "42");
    let empty_id = r#"{"eventId":"","deviceId":"d","userId":"u"}"#;
    assert!(
        decoded("device.deleted", empty_id)
            .event
            .id
            .starts_with("h-")
    );
}

#[test]
fn untyped_family_events_carry_the_body_without_trace() {
    let json = r#"{"deviceId":"d-1","userId":"u-1","reason":"kernel panic","attempt":2,
        "_trace":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}"#;
    let event = decoded("device.rebooted", json).event;
    assert_eq!(event.r#type, "device.rebooted");
    assert_eq!(event.user_id, "u-1");
    assert_eq!(event.device_id, "d-1");
    assert!(!event.traceparent.is_empty());
    let Some(Payload::Untyped(untyped)) = event.payload else {
        panic!("not Untyped");
    };
    assert!(!untyped.fields.contains_key("_trace"));
    assert_eq!(
        untyped.fields.get("reason").and_then(|v| v.kind.clone()),
        Some(Kind::StringValue("kernel panic".into()))
    );
    assert_eq!(
        untyped.fields.get("attempt").and_then(|v| v.kind.clone()),
        Some(Kind::NumberValue(2.0))
    );
}

#[test]
fn strict_schema_refuses_untyped_events_and_keeps_typed_ones() {
    let strict = DecodeSettings {
        strict_schema: true,
        ..DecodeSettings::default()
    };
    let body = br#"{"deviceId":"d-1","userId":"u-1"}"#;
    assert_eq!(
        decode("device.rebooted", body, &props(), strict),
        Err(DecodeError::Untyped("device.rebooted".into()))
    );
    assert!(decode("device.deleted", body, &props(), strict).is_ok());
    assert!(decode("device.rebooted", body, &props(), DecodeSettings::default()).is_ok());
}

#[test]
fn untyped_app_events_need_no_user_but_other_families_do() {
    let event = decoded("app.uninstalled", r#"{"appId":"a"}"#).event;
    assert_eq!(event.user_id, "");
    assert_eq!(
        decode_json("billing.refunded", r#"{"amount":1}"#),
        Err(DecodeError::MissingField {
            field: "userId".into()
        })
    );
}

#[test]
fn the_catalog_app_update_has_no_user_and_the_app_install_may_have_none() {
    let catalog = decoded_fixture("app.updated.catalog.json").event;
    assert_eq!(catalog.user_id, "");
    assert!(catalog.occurred_at.is_some());
    let install = decoded_fixture("app.install_failed.error-message.json").event;
    assert_eq!(install.user_id, "");
}

#[test]
fn events_that_admins_need_not_hear_of_derive_no_notice() {
    for file in [
        "quota.updated.shape-b.json",
        "billing.payment_success.envelope.json",
        "app.updated.catalog.json",
    ] {
        assert_eq!(decoded_fixture(file).admin_notice, None, "{file}");
    }
}
