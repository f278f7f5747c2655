//! Admin notices: what administrators are told about an important event (`docs/wire-format.md`
//! "Admin notices").
//!
//! Owns the rules that pick those events and the wording of each notice. Does not own who
//! receives notices (the hub routes them to the admin feed), nor `quota.updated`, which the hub
//! puts on the admin feed as it is.

use super::ADMIN_NOTICE_TYPE;
use crate::pb::{self, event::Payload};

/// A quota alert at or above this usage, in percent, is critical whatever its stated severity:
/// admins have always been told at 95 %.
const CRITICAL_PERCENT: f64 = 95.0;

/// Suffix of a notice's id after its source event's id: deterministic, so a re-sent event's
/// notice deduplicates like the event itself.
const NOTICE_ID_SUFFIX: &str = "/admin";

/// The notice's content before it is wrapped in an event.
struct Notice {
    severity: pb::NoticeSeverity,
    title: &'static str,
    message: String,
    /// What the notice is about within its source type (a device error's `errorType`).
    cause: String,
}

/// The admin notice `event` implies, if any.
pub(super) fn derive(event: &pb::Event) -> Option<pb::Event> {
    let notice = match event.payload.as_ref()? {
        Payload::QuotaExceeded(exceeded) => quota_exceeded(event, exceeded),
        Payload::QuotaAlert(alert) => quota_alert(event, alert)?,
        Payload::BillingLowBalance(low) => low_balance(event, low),
        Payload::DeviceError(error) if is_urgent(&error.priority) => device_error(event, error),
        _ => return None,
    };
    Some(wrap(event, notice))
}

/// The priorities of a `device.error` that admins are told of: what the producer marked as
/// needing attention (a host failure). Routine errors, and those sent without a priority, are
/// for the user alone.
const URGENT_PRIORITIES: [&str; 3] = ["high", "critical", "urgent"];

fn is_urgent(priority: &str) -> bool {
    URGENT_PRIORITIES
        .iter()
        .any(|urgent| priority.eq_ignore_ascii_case(urgent))
}

/// `device.error` of an urgent priority: an error naming the device and what went wrong. A host failure sends
/// hundreds at once; a `conflate` admin stream coalesces them by `errorType`.
fn device_error(event: &pb::Event, error: &pb::DeviceError) -> Notice {
    let device = if error.device_name.is_empty() {
        event.device_id.clone()
    } else {
        format!("{} ({})", error.device_name, event.device_id)
    };
    let what = if error.error_message.is_empty() {
        error.error_type.clone()
    } else {
        error.error_message.clone()
    };
    Notice {
        severity: pb::NoticeSeverity::Error,
        title: "Device error",
        message: format!("Device {device} of user {} failed: {what}.", event.user_id),
        cause: error.error_type.clone(),
    }
}

/// `quota.exceeded`: always an error.
fn quota_exceeded(event: &pb::Event, exceeded: &pb::QuotaExceeded) -> Notice {
    let usage = exceeded
        .usage_percent
        .map(|percent| format!(" ({} % used)", percent_text(percent)))
        .unwrap_or_default();
    Notice {
        severity: pb::NoticeSeverity::Error,
        title: "Quota exceeded",
        message: format!(
            "User {} exceeded quota {}{usage}.",
            event.user_id, exceeded.quota_id
        ),
        cause: String::new(),
    }
}

/// `quota.alert`: critical when the producer says so or usage reached `CRITICAL_PERCENT`;
/// warnings below that are for the user alone.
fn quota_alert(event: &pb::Event, alert: &pb::QuotaAlert) -> Option<Notice> {
    let highest = alert
        .max_percent
        .into_iter()
        .chain(percentages(alert))
        .reduce(f64::max);
    let critical = alert.severity == pb::AlertSeverity::Critical as i32
        || highest.is_some_and(|percent| percent >= CRITICAL_PERCENT);
    if !critical {
        return None;
    }
    let plan = if alert.plan_name.is_empty() {
        String::new()
    } else {
        format!(" (plan {})", alert.plan_name)
    };
    let usage = highest
        .map(|percent| format!(": {} % used", percent_text(percent)))
        .unwrap_or_default();
    Some(Notice {
        severity: pb::NoticeSeverity::Critical,
        title: "Quota usage critical",
        message: format!(
            "User {} reached critical usage of quota {}{plan}{usage}.",
            event.user_id, alert.quota_id
        ),
        cause: String::new(),
    })
}

/// `billing.low_balance`: a warning naming the user as admins know them.
fn low_balance(event: &pb::Event, low: &pb::BillingLowBalance) -> Notice {
    let who = if low.username.is_empty() {
        event.user_id.clone()
    } else {
        format!("{} ({})", low.username, event.user_id)
    };
    let amount = |decimal: &Option<pb::Decimal>| {
        decimal
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |decimal| decimal.value.clone())
    };
    Notice {
        severity: pb::NoticeSeverity::Warning,
        title: "Low balance",
        message: format!(
            "User {who} has a balance of {} (threshold {}).",
            amount(&low.current_balance),
            amount(&low.threshold)
        ),
        cause: String::new(),
    }
}

/// The per-resource percentages an alert carries.
fn percentages(alert: &pb::QuotaAlert) -> impl Iterator<Item = f64> {
    alert
        .percentage
        .iter()
        .flat_map(|percentage| {
            [
                percentage.devices,
                percentage.cpu,
                percentage.memory,
                percentage.storage,
                percentage.traffic,
            ]
        })
        .flatten()
}

/// A percentage for a sentence, to two decimals at most: `97`, `95.5`, `33.33`.
fn percent_text(percent: f64) -> String {
    format!("{}", (percent * 100.0).round() / 100.0)
}

/// The notice as an event of its own, carrying its source's device, times and trace. Its
/// `user_id` stays empty so it reaches the admin feed and never the user's own stream.
fn wrap(source: &pb::Event, notice: Notice) -> pb::Event {
    pb::Event {
        id: format!("{}{NOTICE_ID_SUFFIX}", source.id),
        cursor: String::new(),
        r#type: ADMIN_NOTICE_TYPE.to_owned(),
        user_id: String::new(),
        device_id: source.device_id.clone(),
        occurred_at: source.occurred_at,
        received_at: source.received_at,
        traceparent: source.traceparent.clone(),
        tracestate: source.tracestate.clone(),
        payload: Some(Payload::AdminNotice(pb::AdminNotice {
            severity: notice.severity as i32,
            title: notice.title.to_owned(),
            message: notice.message,
            subject_user_id: source.user_id.clone(),
            source_event_type: source.r#type.clone(),
            source_event_id: source.id.clone(),
            cause: notice.cause,
            count: 0,
            sample_event_ids: Vec::new(),
        })),
    }
}
