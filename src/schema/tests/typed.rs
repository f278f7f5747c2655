//! `accept_typed`: typed events sent through `Publish`.

use prost_types::Timestamp;

use super::{RECEIVED, at, props, received_at};
use crate::pb::{self, event::Payload};
use crate::schema::{
    ADMIN_NOTICE_TYPE, DecodeError, DecodeSettings, Decoded, Properties, accept_typed,
};

/// A valid typed `quota.exceeded` event as a service would send it.
fn quota_exceeded() -> pb::Event {
    pb::Event {
        r#type: "quota.exceeded".into(),
        user_id: "u-1".into(),
        payload: Some(Payload::QuotaExceeded(pb::QuotaExceeded {
            quota_id: "q-1".into(),
            usage_percent: Some(101.0),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A typed `billing.payment_success` event with the given amount.
fn payment(amount: &str) -> pb::Event {
    pb::Event {
        user_id: "u-1".into(),
        payload: Some(Payload::BillingPaymentSuccess(pb::BillingPaymentSuccess {
            payment_id: "p-1".into(),
            amount: Some(pb::Decimal {
                value: amount.into(),
            }),
            new_balance: Some(pb::Decimal { value: "10".into() }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn accept(routing_key: &str, event: pb::Event) -> Result<Decoded, DecodeError> {
    accept_typed(routing_key, event, &props(), DecodeSettings::default())
}

#[test]
fn a_typed_event_gets_what_the_server_assigns() {
    let mut event = quota_exceeded();
    event.cursor = "stale-cursor".into();
    let accepted = accept("", event).expect("accepted").event;
    assert_eq!(accepted.r#type, "quota.exceeded");
    assert!(accepted.cursor.is_empty());
    assert_eq!(accepted.received_at, Some(at(RECEIVED)));
    assert_eq!(accepted.occurred_at, Some(at(RECEIVED)));
    assert!(accepted.id.starts_with("h-"), "{}", accepted.id);
    assert_eq!(accepted.id.len(), 34);
}

#[test]
fn the_routing_key_alone_names_the_type_and_aliases_are_resolved() {
    let mut event = pb::Event {
        user_id: String::new(),
        device_id: "d-1".into(),
        payload: Some(Payload::AppInstallFailed(pb::AppInstallFailed {
            app_id: "a-1".into(),
            error: "disk full".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let accepted = accept("app.install.failed", event.clone()).expect("accepted");
    assert_eq!(accepted.event.r#type, "app.install_failed");
    event.r#type = "app.install.failed".into();
    let by_type = accept("app.install_failed", event).expect("aliases agree");
    assert_eq!(by_type.event.r#type, "app.install_failed");
}

#[test]
fn given_ids_and_dates_are_kept() {
    let mut event = quota_exceeded();
    event.id = "evt-7".into();
    event.occurred_at = Some(Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    let accepted = accept("quota.exceeded", event).expect("accepted").event;
    assert_eq!(accepted.id, "evt-7");
    assert_eq!(accepted.occurred_at.map(|t| t.seconds), Some(1_700_000_000));
}

#[test]
fn the_computed_id_ignores_receipt_time_trace_and_cursor_but_not_content() {
    let first = accept("", quota_exceeded()).expect("accepted").event;
    let mut again = quota_exceeded();
    again.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    again.cursor = "c".into();
    let later = Properties {
        timestamp_ms: None,
        received_at: received_at() + std::time::Duration::from_secs(60),
    };
    let second = accept_typed("", again, &later, DecodeSettings::default())
        .expect("accepted")
        .event;
    assert_eq!(first.id, second.id);
    let mut other = quota_exceeded();
    other.user_id = "u-2".into();
    assert_ne!(first.id, accept("", other).expect("accepted").event.id);
}

#[test]
fn typed_events_derive_admin_notices_too() {
    let decoded = accept("", quota_exceeded()).expect("accepted");
    let notice = decoded.admin_notice.expect("a notice");
    assert_eq!(notice.r#type, ADMIN_NOTICE_TYPE);
    assert_eq!(notice.id, format!("{}/admin", decoded.event.id));
    let Some(Payload::AdminNotice(content)) = notice.payload else {
        panic!("not an AdminNotice");
    };
    assert_eq!(content.severity, pb::NoticeSeverity::Error as i32);
    assert_eq!(content.subject_user_id, "u-1");
}

#[test]
fn typed_amounts_are_normalized_and_bad_ones_refused() {
    let accepted = accept("billing.payment_success", payment("1e3")).expect("accepted");
    let Some(Payload::BillingPaymentSuccess(paid)) = accepted.event.payload else {
        panic!("not BillingPaymentSuccess");
    };
    assert_eq!(paid.amount.map(|d| d.value).as_deref(), Some("1000"));
    let error = accept("billing.payment_success", payment("12,30")).expect_err("bad amount");
    assert_eq!(error.reason(), "invalid_field");
    assert_eq!(error.field(), Some("billing_payment_success.amount"));
}

#[test]
fn types_must_be_named_and_agree() {
    let mut unnamed = quota_exceeded();
    unnamed.r#type.clear();
    assert_eq!(
        accept("", unnamed),
        Err(DecodeError::MissingField {
            field: "type".into()
        })
    );
    let error = accept("quota.updated", quota_exceeded()).expect_err("types differ");
    assert_eq!(error.reason(), "invalid_field");
    assert_eq!(error.field(), Some("type"));
}

#[test]
fn payloads_must_match_their_type() {
    let mut missing = quota_exceeded();
    missing.payload = None;
    let mut wrong = quota_exceeded();
    wrong.r#type = "quota.updated".into();
    let mut notice = quota_exceeded();
    notice.payload = Some(Payload::AdminNotice(pb::AdminNotice::default()));
    let mut untyped = quota_exceeded();
    untyped.payload = Some(Payload::Untyped(prost_types::Struct::default()));
    for event in [missing, wrong, notice, untyped] {
        let event_type = event.r#type.clone();
        assert_eq!(
            accept("", event),
            Err(DecodeError::PayloadMismatch { event_type }),
        );
    }
}

#[test]
fn admin_notices_cannot_be_published() {
    let notice = pb::Event {
        r#type: ADMIN_NOTICE_TYPE.into(),
        payload: Some(Payload::AdminNotice(pb::AdminNotice::default())),
        ..Default::default()
    };
    let error = accept("", notice).expect_err("refused");
    assert_eq!(error.reason(), "unknown_routing_key");
}

#[test]
fn untyped_payloads_only_for_keys_without_a_message_and_not_when_strict() {
    let untyped = pb::Event {
        user_id: "u-1".into(),
        payload: Some(Payload::Untyped(prost_types::Struct::default())),
        ..Default::default()
    };
    assert!(accept("billing.refunded", untyped.clone()).is_ok());
    let strict = DecodeSettings {
        strict_schema: true,
        ..DecodeSettings::default()
    };
    assert_eq!(
        accept_typed("billing.refunded", untyped, &props(), strict),
        Err(DecodeError::Untyped("billing.refunded".into()))
    );
    let mut typed_under_untyped_key = quota_exceeded();
    typed_under_untyped_key.r#type.clear();
    assert_eq!(
        accept("quota.frozen", typed_under_untyped_key).map_err(|e| e.reason()),
        Err("payload_mismatch")
    );
    let mut unknown = quota_exceeded();
    unknown.r#type = "weather.rain".into();
    assert_eq!(
        accept("", unknown).map_err(|e| e.reason()),
        Err("unknown_routing_key")
    );
}

/// The firehose's selector is refused as a typed event's user too, and so derives no admin
/// notice about "user `*`".
#[test]
fn a_typed_event_for_the_firehose_selector_is_refused() {
    let mut event = quota_exceeded();
    event.user_id = "*".into();
    let error = accept("", event).expect_err("refused");
    assert_eq!(error.reason(), "invalid_field");
    assert_eq!(error.field(), Some("user_id"));
}

#[test]
fn per_user_and_per_device_events_need_their_ids() {
    let mut no_user = quota_exceeded();
    no_user.user_id.clear();
    assert_eq!(
        accept("", no_user),
        Err(DecodeError::MissingField {
            field: "user_id".into()
        })
    );
    let started = pb::Event {
        r#type: "device.started".into(),
        user_id: "u-1".into(),
        payload: Some(Payload::DeviceStarted(pb::DeviceStarted::default())),
        ..Default::default()
    };
    assert_eq!(
        accept("", started.clone()).map_err(|e| e.field().map(String::from)),
        Err(Some("device_id".into()))
    );
    let mut with_device = started;
    with_device.device_id = "d-1".into();
    assert!(accept("", with_device).is_ok());
}

#[test]
fn typed_payloads_need_their_required_ids() {
    let mut no_quota = quota_exceeded();
    if let Some(Payload::QuotaExceeded(quota)) = &mut no_quota.payload {
        quota.quota_id.clear();
    }
    assert_eq!(
        accept("", no_quota).map_err(|e| e.field().map(String::from)),
        Err(Some("quota_exceeded.quota_id".into()))
    );
    let mut no_payment_id = payment("1");
    if let Some(Payload::BillingPaymentSuccess(paid)) = &mut no_payment_id.payload {
        paid.payment_id.clear();
    }
    assert_eq!(
        accept("billing.payment_success", no_payment_id).map_err(|e| e.field().map(String::from)),
        Err(Some("billing_payment_success.payment_id".into()))
    );
}

#[test]
fn the_amqp_timestamp_dates_a_typed_event_without_a_date() {
    let props = Properties {
        timestamp_ms: Some(1_732_096_800_123),
        received_at: received_at(),
    };
    let accepted = accept_typed("", quota_exceeded(), &props, DecodeSettings::default())
        .expect("accepted")
        .event;
    assert_eq!(accepted.occurred_at, Some(at("2024-11-20T10:00:00.123Z")));
}

#[test]
fn timestamps_json_cannot_write_are_refused_with_their_field() {
    let far = |seconds| Some(Timestamp { seconds, nanos: 0 });
    let mut event = quota_exceeded();
    event.occurred_at = far(253_402_300_800); // 10000-01-01
    let error = accept("", event).expect_err("refused");
    assert_eq!(error.field(), Some("occurred_at"), "{error}");

    let mut event = payment("9.9");
    if let Some(Payload::BillingPaymentSuccess(p)) = &mut event.payload {
        p.paid_at = far(-62_135_596_801); // just before 0001-01-01
    }
    let error = accept("billing.payment_success", event).expect_err("refused");
    assert_eq!(
        error.field(),
        Some("billing_payment_success.paid_at"),
        "{error}"
    );

    let mut event = payment("9.9");
    event.occurred_at = Some(Timestamp {
        seconds: 0,
        nanos: 1_000_000_000,
    });
    assert!(accept("billing.payment_success", event).is_err());

    // The edges themselves are fine.
    let mut event = quota_exceeded();
    event.occurred_at = far(253_402_300_799);
    accept("", event).expect("9999-12-31T23:59:59Z is accepted");
}
