//! Every wire fixture decodes to the right typed event, and no fixture goes unchecked.
//!
//! Why one file past 600 lines: it is one table, an entry per file in `tests/fixtures/wire/`
//! (what each must decode to), and the test that checks the table covers the folder exactly.
//! Split by family, a fixture could fall between two tables unnoticed; read in one place, a
//! missing or extra entry is one assertion.

use std::collections::BTreeSet;

use super::{RECEIVED, TRACE_1, TRACE_2, at, decoded_fixture, fixture_dir};
use crate::pb::{self, event::Payload};

/// What one fixture must decode to.
struct Expected {
    /// The fixture's file name.
    file: &'static str,
    /// The canonical event type.
    event_type: &'static str,
    user_id: &'static str,
    device_id: &'static str,
    /// RFC 3339.
    occurred_at: &'static str,
    traceparent: &'static str,
    /// Checks the payload's variant and key values; panics on a mismatch.
    payload: fn(&Payload),
}

/// The value of a decimal, or `""` when unset.
fn money(decimal: &Option<pb::Decimal>) -> &str {
    decimal
        .as_ref()
        .map_or("", |decimal| decimal.value.as_str())
}

/// One entry per file in `tests/fixtures/wire/`.
const EXPECTED: &[Expected] = &[
    Expected {
        file: "quota.updated.shape-b.json",
        event_type: "quota.updated",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:00:00.000Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::QuotaUpdated(quota) = payload else {
                panic!("not QuotaUpdated: {payload:?}");
            };
            assert_eq!(quota.quota_id, "q-2001");
            assert_eq!(quota.status, pb::QuotaStatus::Active as i32);
            assert_eq!(quota.status_text, "active");
            let limits = quota.limits.expect("limits");
            assert_eq!(limits.max_devices, Some(10.0));
            assert_eq!(limits.max_memory_mb_per_device, Some(4096.0));
            assert_eq!(limits.max_usage_hours_per_month, Some(720.0));
            let usage = quota.usage.expect("usage");
            assert_eq!(usage.used_memory_gb, Some(12.5));
            assert_eq!(usage.used_storage_gb, Some(120.25), "numeric string");
            assert_eq!(usage.monthly_usage_hours, Some(41.0));
            assert_eq!(usage.last_updated_at, Some(at("2025-11-20T09:58:00Z")));
        },
    },
    Expected {
        file: "quota.exceeded.shape-b.json",
        event_type: "quota.exceeded",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:05:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::QuotaExceeded(quota) = payload else {
                panic!("not QuotaExceeded: {payload:?}");
            };
            assert_eq!(quota.quota_id, "q-2001");
            assert_eq!(quota.usage_percent, Some(105.0));
            let limits = quota.limits.expect("limits");
            assert_eq!(limits.total_cpu_cores, Some(40.0));
            assert_eq!(limits.max_concurrent_devices, None);
            assert_eq!(quota.usage.expect("usage").used_cpu_cores, Some(42.0));
        },
    },
    Expected {
        file: "quota.exceeded.zero-limit.json",
        event_type: "quota.exceeded",
        user_id: "u-1002",
        device_id: "",
        occurred_at: "2025-11-20T10:06:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::QuotaExceeded(quota) = payload else {
                panic!("not QuotaExceeded: {payload:?}");
            };
            assert_eq!(quota.quota_id, "q-2002");
            assert_eq!(quota.usage_percent, None, "null usagePercent");
            assert_eq!(quota.limits.expect("limits").max_devices, Some(0.0));
        },
    },
    Expected {
        file: "quota.renewed.shape-b.json",
        event_type: "quota.renewed",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:10:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::QuotaRenewed(quota) = payload else {
                panic!("not QuotaRenewed: {payload:?}");
            };
            assert_eq!(quota.quota_id, "q-2001");
            assert_eq!(quota.valid_until, Some(at("2025-12-31T23:59:59Z")));
            assert_eq!(quota.extension_days, Some(30.0));
            assert_eq!(quota.limits.expect("limits").max_devices, Some(10.0));
        },
    },
    Expected {
        file: "quota.alert.critical.json",
        event_type: "quota.alert",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:15:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::QuotaAlert(alert) = payload else {
                panic!("not QuotaAlert: {payload:?}");
            };
            assert_eq!(alert.quota_id, "q-2001");
            assert_eq!(alert.plan_name, "Pro");
            assert_eq!(alert.severity, pb::AlertSeverity::Critical as i32);
            let percentage = alert.percentage.expect("percentage");
            assert_eq!(percentage.cpu, Some(97.5));
            assert_eq!(percentage.traffic, Some(12.0));
            assert_eq!(alert.max_percent, Some(97.5));
            assert_eq!(
                alert.warnings,
                ["CPU usage at 97.5%", "Device count at 90%"]
            );
        },
    },
    Expected {
        file: "quota.alert.warning.json",
        event_type: "quota.alert",
        user_id: "u-1003",
        device_id: "",
        occurred_at: "2025-11-20T10:16:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::QuotaAlert(alert) = payload else {
                panic!("not QuotaAlert: {payload:?}");
            };
            assert_eq!(alert.severity, pb::AlertSeverity::Warning as i32);
            let percentage = alert.percentage.expect("percentage");
            assert_eq!(percentage.traffic, None, "null percentage");
            assert_eq!(alert.max_percent, Some(94.9));
        },
    },
    Expected {
        file: "quota.alert.legacy-aliases.json",
        event_type: "quota.alert",
        user_id: "u-1004",
        device_id: "",
        occurred_at: "2025-11-20T10:17:00Z",
        traceparent: TRACE_2,
        payload: |payload| {
            let Payload::QuotaAlert(alert) = payload else {
                panic!("not QuotaAlert: {payload:?}");
            };
            assert_eq!(alert.quota_id, "q-2004");
            assert_eq!(
                alert.severity,
                pb::AlertSeverity::Warning as i32,
                "alertLevel"
            );
            let percentage = alert.percentage.expect("usagePercent as percentage");
            assert_eq!(percentage.cpu, Some(95.0));
            assert_eq!(percentage.devices, Some(50.0));
            assert_eq!(alert.max_percent, Some(95.0));
            assert!(alert.warnings.is_empty());
        },
    },
    Expected {
        file: "quota.alert.legacy-single-percent.json",
        event_type: "quota.alert",
        user_id: "u-1005",
        device_id: "",
        occurred_at: "2025-11-20T10:18:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::QuotaAlert(alert) = payload else {
                panic!("not QuotaAlert: {payload:?}");
            };
            assert_eq!(alert.plan_name, "Enterprise");
            assert_eq!(alert.percentage, None);
            assert_eq!(alert.max_percent, Some(88.0), "single-figure usagePercent");
        },
    },
    Expected {
        file: "billing.low_balance.envelope.json",
        event_type: "billing.low_balance",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:19:30Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::BillingLowBalance(low) = payload else {
                panic!("not BillingLowBalance: {payload:?}");
            };
            assert_eq!(low.username, "alice");
            assert_eq!(low.email, "alice@example.com");
            assert_eq!(money(&low.current_balance), "9.5");
            assert_eq!(money(&low.threshold), "10");
            assert_eq!(low.days_remaining, Some(2.0));
            assert_eq!(low.detected_at, Some(at("2025-11-20T10:19:30Z")));
        },
    },
    Expected {
        file: "billing.low_balance.flat.json",
        event_type: "billing.low_balance",
        user_id: "u-1006",
        device_id: "",
        occurred_at: "2025-11-20T10:21:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::BillingLowBalance(low) = payload else {
                panic!("not BillingLowBalance: {payload:?}");
            };
            assert_eq!(low.username, "");
            assert_eq!(low.email, "bob@example.com");
            assert_eq!(money(&low.current_balance), "4.80");
            assert_eq!(money(&low.threshold), "10.00");
            assert_eq!(low.days_remaining, None, "null daysRemaining");
        },
    },
    Expected {
        file: "billing.payment_success.envelope.json",
        event_type: "billing.payment_success",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:24:50Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::BillingPaymentSuccess(payment) = payload else {
                panic!("not BillingPaymentSuccess: {payload:?}");
            };
            assert_eq!(money(&payment.amount), "99.9");
            assert_eq!(money(&payment.new_balance), "109.40");
            assert_eq!(payment.email, "alice@example.com", "userEmail");
            assert_eq!(payment.username, "alice");
            assert_eq!(payment.order_id, "o-4001");
            assert_eq!(payment.payment_id, "p-3001");
            assert_eq!(payment.payment_method, "alipay");
            assert_eq!(payment.paid_at, Some(at("2025-11-20T10:24:50Z")));
        },
    },
    Expected {
        file: "billing.payment_success.flat.json",
        event_type: "billing.payment_success",
        user_id: "u-1007",
        device_id: "",
        occurred_at: "2025-11-20T10:26:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::BillingPaymentSuccess(payment) = payload else {
                panic!("not BillingPaymentSuccess: {payload:?}");
            };
            assert_eq!(money(&payment.amount), "99.90");
            assert_eq!(money(&payment.new_balance), "1000");
            assert_eq!(payment.email, "carol@example.com");
            assert_eq!(payment.order_id, "");
            assert_eq!(payment.paid_at, None);
        },
    },
    Expected {
        file: "billing.invoice_generated.envelope.json",
        event_type: "billing.invoice_generated",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-12-01T00:00:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::BillingInvoiceGenerated(invoice) = payload else {
                panic!("not BillingInvoiceGenerated: {payload:?}");
            };
            assert_eq!(invoice.invoice_id, "inv-5001");
            assert_eq!(money(&invoice.amount), "250.00");
            assert_eq!(invoice.month, "2025-11");
            assert_eq!(invoice.due_date, Some(at("2025-12-15T00:00:00Z")));
            assert_eq!(invoice.username, "alice");
        },
    },
    Expected {
        file: "billing.invoice_generated.flat.json",
        event_type: "billing.invoice_generated",
        user_id: "u-1008",
        device_id: "",
        occurred_at: "2025-12-01T00:00:01Z",
        traceparent: "",
        payload: |payload| {
            let Payload::BillingInvoiceGenerated(invoice) = payload else {
                panic!("not BillingInvoiceGenerated: {payload:?}");
            };
            assert_eq!(invoice.invoice_id, "inv-5002");
            assert_eq!(money(&invoice.amount), "12.30");
            assert_eq!(invoice.email, "");
        },
    },
    Expected {
        file: "billing.order.completed.flat.json",
        event_type: "billing.order.completed",
        user_id: "u-1001",
        device_id: "d-7001",
        occurred_at: "2025-11-20T10:30:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::BillingOrderCompleted(order) = payload else {
                panic!("not BillingOrderCompleted: {payload:?}");
            };
            assert_eq!(order.order_id, "o-4002");
            assert_eq!(money(&order.amount), "29.99");
        },
    },
    Expected {
        file: "billing.order.cancelled.flat.json",
        event_type: "billing.order.cancelled",
        user_id: "u-1001",
        device_id: "",
        occurred_at: "2025-11-20T10:31:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::BillingOrderCancelled(order) = payload else {
                panic!("not BillingOrderCancelled: {payload:?}");
            };
            assert_eq!(order.order_id, "o-4003");
            assert_eq!(order.reason, "payment timeout");
        },
    },
    Expected {
        file: "app.installed.shape-a.json",
        event_type: "app.installed",
        user_id: "u-1001",
        device_id: "d-7001",
        occurred_at: "2025-11-20T09:59:58Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::AppInstalled(app) = payload else {
                panic!("not AppInstalled: {payload:?}");
            };
            assert_eq!(app.installation_id, "i-6001");
            assert_eq!(app.app_id, "a-8001", "applicationId");
            assert_eq!(app.app_name, "WeChat");
            assert_eq!(app.device_name, "phone-1");
            assert_eq!(app.version, "8.0.50");
        },
    },
    Expected {
        file: "app.install.completed.shape-a.json",
        event_type: "app.installed",
        user_id: "u-1002",
        device_id: "d-7002",
        occurred_at: "2025-11-20T10:01:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::AppInstalled(app) = payload else {
                panic!("not AppInstalled: {payload:?}");
            };
            assert_eq!(app.app_id, "a-8002", "appId");
            assert_eq!(app.installation_id, "i-6002");
            assert_eq!(app.version, "");
        },
    },
    Expected {
        file: "app.install.failed.error.json",
        event_type: "app.install_failed",
        user_id: "u-1001",
        device_id: "d-7001",
        occurred_at: "2025-11-20T10:01:59Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::AppInstallFailed(app) = payload else {
                panic!("not AppInstallFailed: {payload:?}");
            };
            assert_eq!(app.app_id, "a-8003");
            assert_eq!(app.error, "INSTALL_FAILED_INSUFFICIENT_STORAGE");
            assert_eq!(app.app_name, "Douyin");
        },
    },
    Expected {
        file: "app.install.failed.reason.json",
        event_type: "app.install_failed",
        user_id: "u-1003",
        device_id: "d-7003",
        occurred_at: "2025-11-20T10:03:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::AppInstallFailed(app) = payload else {
                panic!("not AppInstallFailed: {payload:?}");
            };
            assert_eq!(app.error, "device offline", "reason");
        },
    },
    Expected {
        file: "app.install_failed.error-message.json",
        event_type: "app.install_failed",
        user_id: "",
        device_id: "d-7004",
        occurred_at: "2025-11-20T10:03:58Z",
        traceparent: TRACE_2,
        payload: |payload| {
            let Payload::AppInstallFailed(app) = payload else {
                panic!("not AppInstallFailed: {payload:?}");
            };
            assert_eq!(app.app_id, "a-8005");
            assert_eq!(app.error, "APK signature mismatch", "errorMessage");
        },
    },
    Expected {
        file: "app.install_failed.reason.json",
        event_type: "app.install_failed",
        user_id: "u-1005",
        device_id: "d-7005",
        occurred_at: RECEIVED,
        traceparent: "",
        payload: |payload| {
            let Payload::AppInstallFailed(app) = payload else {
                panic!("not AppInstallFailed: {payload:?}");
            };
            assert_eq!(app.error, "download aborted", "reason");
        },
    },
    Expected {
        file: "app.updated.catalog.json",
        event_type: "app.updated",
        user_id: "",
        device_id: "",
        occurred_at: "2025-11-20T11:00:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::AppUpdated(app) = payload else {
                panic!("not AppUpdated: {payload:?}");
            };
            assert_eq!(app.app_id, "a-8001");
            assert_eq!(app.package_name, "com.tencent.mm");
            assert_eq!(app.version_name, "8.0.51");
            assert_eq!(app.updated_fields, ["versionName", "description"]);
            let old = app.old_values.as_ref().expect("oldValues");
            assert_eq!(
                old.fields.get("size").and_then(|value| value.kind.clone()),
                Some(prost_types::value::Kind::NumberValue(123_456.0))
            );
            let new = app.new_values.as_ref().expect("newValues");
            assert_eq!(
                new.fields
                    .get("versionName")
                    .and_then(|value| value.kind.clone()),
                Some(prost_types::value::Kind::StringValue("8.0.51".into()))
            );
            assert_eq!(app.old_version, "");
        },
    },
    Expected {
        file: "app.updated.per-device.json",
        event_type: "app.updated",
        user_id: "u-1001",
        device_id: "d-7001",
        occurred_at: "2025-11-20T11:05:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::AppUpdated(app) = payload else {
                panic!("not AppUpdated: {payload:?}");
            };
            assert_eq!(app.app_id, "");
            assert_eq!(app.app_name, "WeChat");
            assert_eq!(app.old_version, "8.0.50");
            assert_eq!(app.new_version, "8.0.51");
            assert_eq!(app.old_values, None);
        },
    },
    Expected {
        file: "device.created.outbox.json",
        event_type: "device.created",
        user_id: "u-1001",
        device_id: "d-7010",
        occurred_at: "2025-11-20T12:00:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::DeviceCreated(device) = payload else {
                panic!("not DeviceCreated: {payload:?}");
            };
            assert_eq!(device.device_name, "phone-10");
            assert_eq!(device.status, "creating");
            assert_eq!(device.tenant_id, "", "null tenantId");
            assert_eq!(device.provider_type, "redroid");
            assert_eq!(device.saga_id, "saga-9001");
        },
    },
    Expected {
        file: "device.created.no-timestamp.json",
        event_type: "device.created",
        user_id: "u-1002",
        device_id: "d-7011",
        occurred_at: RECEIVED,
        traceparent: "",
        payload: |payload| {
            let Payload::DeviceCreated(device) = payload else {
                panic!("not DeviceCreated: {payload:?}");
            };
            assert_eq!(device.tenant_id, "t-1");
            assert_eq!(device.provider_type, "huawei_cph");
            assert_eq!(device.saga_id, "");
        },
    },
    Expected {
        file: "device.started.outbox.json",
        event_type: "device.started",
        user_id: "u-1001",
        device_id: "d-7010",
        occurred_at: "2025-11-20T12:01:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::DeviceStarted(device) = payload else {
                panic!("not DeviceStarted: {payload:?}");
            };
            assert_eq!(device.provider_type, "redroid");
            assert_eq!(device.tenant_id, "");
        },
    },
    Expected {
        file: "device.stopped.outbox.json",
        event_type: "device.stopped",
        user_id: "u-1001",
        device_id: "d-7010",
        occurred_at: "2025-11-20T13:01:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::DeviceStopped(device) = payload else {
                panic!("not DeviceStopped: {payload:?}");
            };
            assert_eq!(device.duration_seconds, Some(3600.0));
            assert_eq!(device.provider_type, "redroid");
        },
    },
    Expected {
        file: "device.deleted.outbox.json",
        event_type: "device.deleted",
        user_id: "u-1001",
        device_id: "d-7010",
        occurred_at: "2025-11-20T14:00:00Z",
        traceparent: "",
        payload: |payload| {
            let Payload::DeviceDeleted(device) = payload else {
                panic!("not DeviceDeleted: {payload:?}");
            };
            assert_eq!(device.device_name, "phone-10");
            assert_eq!(device.provider_type, "redroid");
        },
    },
    Expected {
        file: "device.deleted.no-timestamp.json",
        event_type: "device.deleted",
        user_id: "u-1003",
        device_id: "d-7012",
        occurred_at: RECEIVED,
        traceparent: TRACE_2,
        payload: |payload| {
            let Payload::DeviceDeleted(device) = payload else {
                panic!("not DeviceDeleted: {payload:?}");
            };
            assert_eq!(device.device_name, "");
            assert_eq!(device.provider_type, "");
        },
    },
    Expected {
        file: "device.error.envelope.json",
        event_type: "device.error",
        user_id: "u-1001",
        device_id: "d-7010",
        occurred_at: "2025-11-20T10:00:00Z",
        traceparent: TRACE_1,
        payload: |payload| {
            let Payload::DeviceError(device) = payload else {
                panic!("not DeviceError: {payload:?}");
            };
            assert_eq!(device.device_name, "phone-10");
            assert_eq!(device.error_type, "adb_disconnected");
            assert_eq!(device.error_message, "ADB connection lost");
            assert_eq!(device.priority, "high", "envelope priority");
        },
    },
];

#[test]
fn every_fixture_decodes_to_its_typed_event() {
    for expected in EXPECTED {
        let event = decoded_fixture(expected.file).event;
        let file = expected.file;
        assert_eq!(event.r#type, expected.event_type, "{file}");
        assert_eq!(event.user_id, expected.user_id, "{file}");
        assert_eq!(event.device_id, expected.device_id, "{file}");
        assert_eq!(event.occurred_at, Some(at(expected.occurred_at)), "{file}");
        assert_eq!(event.received_at, Some(at(RECEIVED)), "{file}");
        assert_eq!(event.traceparent, expected.traceparent, "{file}");
        assert!(event.cursor.is_empty(), "{file}");
        assert!(!event.id.is_empty(), "{file}");
        let payload = event.payload.as_ref().expect("a payload");
        (expected.payload)(payload);
    }
}

#[test]
fn every_fixture_file_has_an_expectation_and_every_expectation_a_file() {
    let files: BTreeSet<String> = std::fs::read_dir(fixture_dir())
        .expect("the fixture directory")
        .map(|entry| entry.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let expected: BTreeSet<String> = EXPECTED.iter().map(|e| e.file.to_owned()).collect();
    assert_eq!(expected.len(), EXPECTED.len(), "a fixture is listed twice");
    let unchecked: Vec<_> = files.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&files).collect();
    assert!(
        unchecked.is_empty(),
        "fixtures without expectations: {unchecked:?}"
    );
    assert!(
        missing.is_empty(),
        "expectations without fixtures: {missing:?}"
    );
}

#[test]
fn every_catalog_routing_key_has_a_fixture() {
    let keys: BTreeSet<&str> = EXPECTED
        .iter()
        .map(|expected| super::routing_key_of(expected.file))
        .collect();
    for key in [
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
    ] {
        assert!(keys.contains(key), "no fixture for {key}");
    }
}

#[test]
fn trace_state_is_carried_with_the_trace_parent() {
    let event = decoded_fixture("quota.alert.legacy-aliases.json").event;
    assert_eq!(event.traceparent, TRACE_2);
    assert_eq!(event.tracestate, "congo=t61rcWkgMzE");
    let without = decoded_fixture("quota.updated.shape-b.json").event;
    assert_eq!(without.tracestate, "");
}

#[test]
fn envelope_event_ids_are_the_producers() {
    for (file, id) in [
        (
            "device.error.envelope.json",
            "device-error-d-7010-1732096800000",
        ),
        (
            "billing.payment_success.envelope.json",
            "payment-success-p-3001",
        ),
    ] {
        assert_eq!(decoded_fixture(file).event.id, id, "{file}");
    }
}

/// Decoding must never panic, whatever the bytes: every prefix of every fixture, and every
/// top-level field replaced by a value of each JSON type.
#[test]
fn no_truncated_or_retyped_fixture_panics() {
    let replacements = [
        "null",
        "true",
        "0",
        "-1e999",
        "\"\"",
        "\"x\"",
        "[]",
        "[1,{}]",
        "{}",
        "{\"a\":[null]}",
    ];
    for expected in EXPECTED {
        let key = super::routing_key_of(expected.file);
        let text = super::fixture(expected.file);
        for end in 0..text.len() {
            let _ = super::decode(
                key,
                &text.as_bytes()[..end],
                &super::props(),
                Default::default(),
            );
        }
        let object = super::fixture_object(expected.file);
        for field in object.keys() {
            for replacement in replacements {
                let mut edited = object.clone();
                let value = serde_json::from_str(replacement).expect("valid replacement");
                edited.insert(field.clone(), value);
                let _ = super::decode_json(key, &super::to_json(&edited));
            }
        }
    }
}
