//! Which events are *state* and which are *changes*: the conflation keys of the catalog
//! (`docs/wire-format.md` "Conflation keys") and the coalescing key of admin notices.
//!
//! Owns: the rule that a later event of the same key supersedes an earlier one (the latest
//! quota of a quota, the latest status of a device), and which notices form a burst (one source
//! type and cause). Does not own when a stream skips or coalesces (`hub`, a stream's storm
//! control): these are pure functions of one event.
//!
//! Only events whose every field is restated by the next one of the same key are state: a
//! `quota.updated` carries the quota's whole limits, usage and status, so the latest is all a
//! console needs; `device.started`, `device.stopped` and `device.status.changed` each say what
//! state a device is in now. Payments, errors, installs, alerts are changes: each one matters on
//! its own and none is ever skipped.

use crate::pb::{self, event::Payload};

/// An event's conflation key: a later event with an equal key supersedes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConflationKey {
    /// What kind of state (`quota`, `device`): a device's started, stopped and status events
    /// share it, so the latest of any of them supersedes the others.
    pub kind: &'static str,
    /// Whose state: the event's user (a quota's id is unique per user, not known to be unique
    /// across users).
    pub user_id: String,
    /// Which one: the quota's or the device's id.
    pub id: String,
}

/// The event types that are state, each with the kind of state it is; everything else is a
/// change, never conflated.
const STATE_TYPES: &[(&str, &str)] = &[
    ("quota.updated", "quota"),
    ("device.started", "device"),
    ("device.stopped", "device"),
    ("device.status.changed", "device"),
];

/// Whether events of `event_type` are state (may be superseded), without decoding one.
pub fn is_state_type(event_type: &str) -> bool {
    STATE_TYPES.iter().any(|(t, _)| *t == event_type)
}

/// The conflation key of `event`, or `None` for a change event (and for a state event that
/// lacks the id its key needs: without it nothing can say which later event supersedes it).
pub fn conflation_key(event: &pb::Event) -> Option<ConflationKey> {
    let kind = STATE_TYPES
        .iter()
        .find(|(t, _)| *t == event.r#type)
        .map(|(_, kind)| *kind)?;
    let id = match (kind, &event.payload) {
        ("quota", Some(Payload::QuotaUpdated(updated))) => updated.quota_id.clone(),
        ("quota", _) => return None,
        _ => event.device_id.clone(),
    };
    (!id.is_empty()).then(|| ConflationKey {
        kind,
        user_id: event.user_id.clone(),
        id,
    })
}

/// What admin notices of one burst share: their source type and cause.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NoticeKind {
    /// `AdminNotice.source_event_type`.
    pub source_type: String,
    /// `AdminNotice.cause` (a device error's `errorType`).
    pub cause: String,
}

/// The burst an admin notice belongs to, or `None` when `event` is not a single admin notice
/// (a coalesced one never joins another burst).
pub fn notice_kind(event: &pb::Event) -> Option<NoticeKind> {
    match &event.payload {
        Some(Payload::AdminNotice(notice)) if notice.count == 0 => Some(NoticeKind {
            source_type: notice.source_event_type.clone(),
            cause: notice.cause.clone(),
        }),
        _ => None,
    }
}

/// The most source ids a coalesced notice lists.
pub const NOTICE_SAMPLE_IDS: usize = 10;

/// One notice standing for a burst of `count` notices of one kind: the burst's first notice
/// (its id, its cursor, its times) saying how many there were, with the first
/// [`NOTICE_SAMPLE_IDS`] source ids.
pub fn coalesced_notice(first: &pb::Event, count: u32, sample_ids: Vec<String>) -> pb::Event {
    let mut event = first.clone();
    if let Some(Payload::AdminNotice(notice)) = &mut event.payload {
        let what = if notice.cause.is_empty() {
            notice.source_event_type.clone()
        } else {
            format!("{} ({})", notice.source_event_type, notice.cause)
        };
        notice.title = format!("{count} × {}", notice.title);
        notice.message = format!(
            "{count} {what} notices in a burst; the first: {}",
            notice.message
        );
        notice.count = count;
        notice.sample_event_ids = sample_ids;
        // The first source's user would misname a burst about many.
        notice.subject_user_id.clear();
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, user: &str, device: &str, payload: Option<Payload>) -> pb::Event {
        pb::Event {
            r#type: event_type.into(),
            user_id: user.into(),
            device_id: device.into(),
            payload,
            ..pb::Event::default()
        }
    }

    fn quota(user: &str, quota_id: &str) -> pb::Event {
        event(
            "quota.updated",
            user,
            "",
            Some(Payload::QuotaUpdated(pb::QuotaUpdated {
                quota_id: quota_id.into(),
                ..pb::QuotaUpdated::default()
            })),
        )
    }

    #[test]
    fn a_quota_is_keyed_by_user_and_quota_and_a_device_by_its_id_across_its_state_types() {
        assert_eq!(
            conflation_key(&quota("u1", "q1")),
            conflation_key(&quota("u1", "q1"))
        );
        assert_ne!(
            conflation_key(&quota("u1", "q1")),
            conflation_key(&quota("u1", "q2"))
        );
        assert_ne!(
            conflation_key(&quota("u1", "q1")),
            conflation_key(&quota("u2", "q1"))
        );
        let started = conflation_key(&event("device.started", "u1", "d1", None));
        assert!(started.is_some());
        assert_eq!(
            started,
            conflation_key(&event("device.stopped", "u1", "d1", None))
        );
        assert_eq!(
            started,
            conflation_key(&event("device.status.changed", "u1", "d1", None))
        );
        assert_ne!(
            started,
            conflation_key(&event("device.started", "u1", "d2", None))
        );
    }

    #[test]
    fn changes_and_state_without_an_id_are_never_conflated() {
        for t in [
            "billing.payment_success",
            "device.error",
            "app.installed",
            "quota.alert",
            "quota.exceeded",
            "admin.notice",
        ] {
            assert_eq!(conflation_key(&event(t, "u1", "d1", None)), None, "{t}");
            assert!(!is_state_type(t));
        }
        assert_eq!(conflation_key(&quota("u1", "")), None);
        assert_eq!(
            conflation_key(&event("quota.updated", "u1", "d1", None)),
            None
        );
        assert_eq!(
            conflation_key(&event("device.stopped", "u1", "", None)),
            None
        );
    }

    #[test]
    fn a_coalesced_notice_counts_and_samples_and_joins_no_burst() {
        let single = event(
            "admin.notice",
            "",
            "d9",
            Some(Payload::AdminNotice(pb::AdminNotice {
                title: "Device error".into(),
                message: "Device d9 failed.".into(),
                source_event_type: "device.error".into(),
                cause: "host_down".into(),
                subject_user_id: "u9".into(),
                ..pb::AdminNotice::default()
            })),
        );
        let kind = notice_kind(&single).unwrap();
        assert_eq!(
            (kind.source_type.as_str(), kind.cause.as_str()),
            ("device.error", "host_down")
        );
        let coalesced = coalesced_notice(&single, 400, vec!["a".into(), "b".into()]);
        let Some(Payload::AdminNotice(notice)) = &coalesced.payload else {
            panic!("a notice");
        };
        assert_eq!(notice.count, 400);
        assert_eq!(notice.sample_event_ids, ["a", "b"]);
        assert!(notice.title.starts_with("400"), "{}", notice.title);
        assert!(notice.message.contains("host_down"), "{}", notice.message);
        assert_eq!(notice_kind(&coalesced), None);
    }
}
