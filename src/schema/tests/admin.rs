//! Admin notices derived from decoded events (`docs/wire-format.md` "Admin notices").

use super::decoded_fixture;
use crate::pb::{self, event::Payload};
use crate::schema::{ADMIN_NOTICE_TYPE, Decoded};

/// The notice of a decoded event and its content, which the test expects to exist.
fn notice_of(decoded: &Decoded) -> (&pb::Event, &pb::AdminNotice) {
    let notice = decoded.admin_notice.as_ref().expect("an admin notice");
    let Some(Payload::AdminNotice(content)) = &notice.payload else {
        panic!("not an AdminNotice: {notice:?}");
    };
    (notice, content)
}

/// A quota alert with the given severity and percentages.
fn alert(severity: &str, percentage: &str) -> Decoded {
    let json = format!(
        r#"{{"userId":"u-9","quotaId":"q-9","planName":"Pro","severity":"{severity}","percentage":{percentage}}}"#
    );
    super::decoded("quota.alert", &json)
}

#[test]
fn quota_exceeded_is_an_error_naming_user_and_quota() {
    let decoded = decoded_fixture("quota.exceeded.shape-b.json");
    let (_, notice) = notice_of(&decoded);
    assert_eq!(notice.severity, pb::NoticeSeverity::Error as i32);
    assert_eq!(notice.title, "Quota exceeded");
    assert!(notice.message.contains("u-1001"), "{}", notice.message);
    assert!(notice.message.contains("q-2001"), "{}", notice.message);
    assert!(notice.message.contains("105"), "{}", notice.message);
}

#[test]
fn a_notice_is_an_event_of_its_own_that_points_at_its_source() {
    let decoded = decoded_fixture("quota.exceeded.shape-b.json");
    let source = &decoded.event;
    let (event, notice) = notice_of(&decoded);
    assert_eq!(event.id, format!("{}/admin", source.id));
    assert_eq!(event.r#type, ADMIN_NOTICE_TYPE);
    assert_eq!(
        event.user_id, "",
        "a notice must not reach the user's own stream"
    );
    assert_eq!(event.device_id, source.device_id);
    assert_eq!(event.occurred_at, source.occurred_at);
    assert_eq!(event.received_at, source.received_at);
    assert_eq!(event.traceparent, source.traceparent);
    assert_eq!(event.tracestate, source.tracestate);
    assert!(event.cursor.is_empty());
    assert_eq!(notice.subject_user_id, "u-1001");
    assert_eq!(notice.source_event_type, "quota.exceeded");
    assert_eq!(notice.source_event_id, source.id);
}

#[test]
fn a_critical_quota_alert_is_critical_with_its_usage() {
    let decoded = decoded_fixture("quota.alert.critical.json");
    let (_, notice) = notice_of(&decoded);
    assert_eq!(notice.severity, pb::NoticeSeverity::Critical as i32);
    assert!(notice.message.contains("97.5 %"), "{}", notice.message);
    assert!(notice.message.contains("u-1001"), "{}", notice.message);
}

#[test]
fn a_warning_at_95_percent_or_more_is_critical_for_admins() {
    for percentage in [r#"{"cpu":95}"#, r#"{"devices":10,"traffic":99.99}"#] {
        let decoded = alert("warning", percentage);
        let (_, notice) = notice_of(&decoded);
        assert_eq!(
            notice.severity,
            pb::NoticeSeverity::Critical as i32,
            "{percentage}"
        );
    }
    let legacy = decoded_fixture("quota.alert.legacy-aliases.json");
    assert!(notice_of(&legacy).1.message.contains("95 %"));
}

#[test]
fn a_single_figure_usage_percent_of_95_or_more_is_critical() {
    let json = r#"{"userId":"u","quotaId":"q","alertLevel":"warning","usagePercent":96}"#;
    let decoded = super::decoded("quota.alert", json);
    assert!(notice_of(&decoded).1.message.contains("96 %"));
}

#[test]
fn warnings_below_95_percent_are_not_told_to_admins() {
    assert_eq!(
        alert("warning", r#"{"cpu":94.99,"memory":50}"#).admin_notice,
        None
    );
    assert_eq!(alert("warning", "{}").admin_notice, None);
    assert_eq!(
        decoded_fixture("quota.alert.warning.json").admin_notice,
        None
    );
    assert_eq!(
        decoded_fixture("quota.alert.legacy-single-percent.json").admin_notice,
        None
    );
}

#[test]
fn a_critical_alert_without_percentages_is_still_critical() {
    let decoded = alert("critical", "null");
    let (_, notice) = notice_of(&decoded);
    assert_eq!(notice.severity, pb::NoticeSeverity::Critical as i32);
    assert!(notice.message.contains("q-9"), "{}", notice.message);
}

#[test]
fn low_balance_is_a_warning_with_name_and_balance() {
    let decoded = decoded_fixture("billing.low_balance.envelope.json");
    let (event, notice) = notice_of(&decoded);
    assert_eq!(notice.severity, pb::NoticeSeverity::Warning as i32);
    assert_eq!(notice.title, "Low balance");
    assert!(notice.message.contains("alice"), "{}", notice.message);
    assert!(notice.message.contains("9.5"), "{}", notice.message);
    assert_eq!(event.id, "billing-low-balance-u-1001-1732096800000/admin");
}

#[test]
fn low_balance_without_a_username_names_the_user_id() {
    let decoded = decoded_fixture("billing.low_balance.flat.json");
    let (_, notice) = notice_of(&decoded);
    assert!(notice.message.contains("u-1006"), "{}", notice.message);
    assert!(notice.message.contains("4.80"), "{}", notice.message);
}

#[test]
fn an_urgent_device_error_is_an_error_notice_with_its_error_type_as_cause() {
    let decoded = decoded_fixture("device.error.envelope.json");
    let (event, notice) = notice_of(&decoded);
    assert_eq!(notice.severity, pb::NoticeSeverity::Error as i32);
    assert_eq!(notice.title, "Device error");
    assert_eq!(notice.cause, "adb_disconnected");
    assert_eq!(event.device_id, "d-7010");
    assert!(
        notice.message.contains("phone-10 (d-7010)"),
        "{}",
        notice.message
    );
    assert!(
        notice.message.contains("ADB connection lost"),
        "{}",
        notice.message
    );
    assert_eq!(notice.count, 0, "a single notice");
}

#[test]
fn a_routine_device_error_is_for_the_user_alone() {
    for priority in [r#""priority":"normal","#, r#""priority":"low","#, ""] {
        let json = format!(
            r#"{{"eventId":"e1","eventType":"device.error",{priority}"payload":{{"deviceId":"d1","userId":"u1","errorType":"x"}}}}"#
        );
        let decoded = super::decoded("device.error", &json);
        assert_eq!(decoded.admin_notice, None, "{priority}");
    }
    let json = r#"{"eventId":"e2","eventType":"device.error","priority":"CRITICAL","payload":{"deviceId":"d1","userId":"u1","errorType":"x"}}"#;
    assert!(super::decoded("device.error", json).admin_notice.is_some());
}
