//! Producer bodies the tests publish, in the platform's wire shapes (docs/wire-format.md): one
//! builder for each shape several tests send, so that a test says what it sends (a device
//! started for a user, a refund) rather than how the JSON is spelled.
//!
//! Not here: a body one test alone sends, or a body whose spelling is the point of its test
//! (a fixture, a malformed field, exact money values): those stay in the test.

use serde_json::json;

/// The date every built body carries where its shape has one.
const AT: &str = "2025-11-20T10:00:00.000Z";

/// A device.error envelope (shape D) for `user` about `device`, of a routine priority (an
/// urgent one also makes an admin notice, which the tests of notices send themselves).
pub fn device_error(id: &str, user: &str, device: &str) -> String {
    json!({
        "eventId": id,
        "eventType": "device.error",
        "timestamp": AT,
        "priority": "normal",
        "payload": {
            "deviceId": device, "deviceName": "phone-1", "userId": user,
            "errorType": "adb_disconnected", "errorMessage": "adb went away",
            "occurredAt": AT
        },
        "_trace": {}
    })
    .to_string()
}

/// A `device.started` outbox body (shape C: no id, no type) for `user` about `device`; its id
/// is derived from the content, so the device names the event.
pub fn device_started(device: &str, user: &str) -> String {
    json!({
        "deviceId": device,
        "userId": user,
        "startedAt": AT,
        "providerType": "redroid",
        "_trace": {}
    })
    .to_string()
}

/// A `billing.refund_issued` body: an event type with no typed schema (refused under
/// `--strict-schema`, delivered untyped otherwise).
pub fn refund_issued(user: &str, refund: &str) -> String {
    json!({"userId": user, "refundId": refund, "_trace": {}}).to_string()
}

/// A `billing.payment_success` body for `user`: 1 paid, 2 the new balance.
pub fn payment_success(user: &str, payment: &str) -> String {
    json!({
        "userId": user,
        "paymentId": payment,
        "paymentMethod": "alipay",
        "amount": 1,
        "newBalance": 2,
        "_trace": {}
    })
    .to_string()
}

/// A `quota.updated` body for `user` about quota `quota`.
pub fn quota_updated(user: &str, quota: &str) -> String {
    json!({
        "userId": user,
        "quotaId": quota,
        "type": "updated",
        "limits": {},
        "usage": {},
        "status": "active",
        "timestamp": AT,
        "_trace": {}
    })
    .to_string()
}

/// A body for `u1` whose field `x` is `depth` arrays nested in one another (`[[[...]]]`): with
/// 60, far deeper than the body depth allowed (`schema::MAX_BODY_DEPTH`).
pub fn nested_arrays(depth: usize) -> String {
    format!(
        r#"{{"userId":"u1","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}
