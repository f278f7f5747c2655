#![allow(clippy::unwrap_used)]

use super::*;

fn prefs(types: &[(&str, bool)], quiet: Option<(&str, &str, &str)>) -> pb::Preferences {
    pb::Preferences {
        types: types
            .iter()
            .map(|(t, enabled)| pb::TypePreference {
                event_type: (*t).into(),
                enabled: *enabled,
                channels: vec!["email".into()],
            })
            .collect(),
        quiet_hours: quiet.map(|(start, end, zone)| pb::QuietHours {
            start: start.into(),
            end: end.into(),
            time_zone: zone.into(),
        }),
        critical_types: Vec::new(),
    }
}

/// Unix milliseconds of a UTC time on 2026-12-07.
fn utc(hour: i64, minute: i64) -> i64 {
    let midnight = 1_796_601_600_000_i64; // 2026-12-07T00:00:00Z
    midnight + (hour * 60 + minute) * 60_000
}

#[test]
fn the_counts_follow_every_transition_and_archived_items_count_nowhere() {
    let mut counts = Counts::default();
    counts.count(Family::Billing, ItemState::NEW, true);
    counts.count(Family::Billing, ItemState::NEW, true);
    counts.count(Family::Device, ItemState::NEW, true);
    assert_eq!(
        counts.total(),
        FamilyCounts {
            total: 3,
            unread: 3,
            unseen: 3
        }
    );
    let seen = ItemState::NEW.marked(Mark::Seen);
    counts.change(Family::Billing, ItemState::NEW, seen);
    let read = seen.marked(Mark::Read);
    counts.change(Family::Billing, seen, read);
    assert_eq!(
        counts.family(Family::Billing),
        FamilyCounts {
            total: 2,
            unread: 1,
            unseen: 1
        }
    );
    let unread = read.marked(Mark::Unread);
    assert!(unread.seen() && !unread.read());
    counts.change(Family::Billing, read, unread);
    let archived = unread.marked(Mark::Archived);
    counts.change(Family::Billing, unread, archived);
    assert_eq!(
        counts.family(Family::Billing),
        FamilyCounts {
            total: 1,
            unread: 1,
            unseen: 1
        }
    );
    counts.change(Family::Billing, archived, archived.marked(Mark::Unarchived));
    assert_eq!(counts.family(Family::Billing).unread, 2);
    assert_eq!(Counts::decode(&counts.encode()), counts);
    let pb = counts.to_pb();
    assert_eq!((pb.total, pb.unread, pb.unseen), (3, 3, 2));
    assert_eq!(pb.families.len(), 4);
}

#[test]
fn a_filter_selects_by_state() {
    let read = ItemState::NEW.marked(Mark::Read);
    let archived = read.marked(Mark::Archived);
    assert!(ItemState::NEW.passes(pb::InboxFilter::Unread));
    assert!(!read.passes(pb::InboxFilter::Unread));
    assert!(read.passes(pb::InboxFilter::Read));
    assert!(!archived.passes(pb::InboxFilter::Unspecified));
    assert!(archived.passes(pb::InboxFilter::Archived));
    assert!(archived.passes(pb::InboxFilter::All));
}

#[test]
fn families_come_from_the_type_or_the_notice_source() {
    assert_eq!(
        Family::of_type("billing.low_balance"),
        Some(Family::Billing)
    );
    assert_eq!(Family::of_type("admin.notice"), None);
    let notice = pb::Event {
        r#type: "admin.notice".into(),
        payload: Some(pb::event::Payload::AdminNotice(pb::AdminNotice {
            source_event_type: "device.error".into(),
            ..pb::AdminNotice::default()
        })),
        ..pb::Event::default()
    };
    assert_eq!(Family::of_event(&notice), Some(Family::Device));
}

#[test]
fn inbox_types_include_families_and_exclude_state_types_by_default() {
    let settings = InboxSettings::default();
    assert!(settings.includes("billing.payment_success"));
    assert!(settings.includes("device.error"));
    assert!(!settings.includes("quota.updated"));
    assert!(!settings.includes("device.status.changed"));
    assert!(!settings.includes("admin.notice"));
    let only = InboxSettings::parse("billing.*, device.error").unwrap();
    assert!(only.includes("device.error") && !only.includes("device.started"));
    assert!(InboxSettings::parse("billing").is_err());
    assert!(InboxSettings::parse("Billing.*").is_err());
}

#[test]
fn an_exact_type_wins_over_its_family_and_critical_types_cannot_be_disabled() {
    let p = Preferences::from_pb(prefs(
        &[("billing.*", false), ("billing.payment_success", true)],
        None,
    ));
    assert!(
        matches!(p, Err(PreferencesError::Critical { critical, .. }) if critical == "billing.low_balance")
    );
    let p =
        Preferences::from_pb(prefs(&[("app.*", false), ("app.installed", true)], None)).unwrap();
    assert!(p.enabled("app.installed"));
    assert!(!p.enabled("app.install_failed"));
    assert!(p.enabled("billing.payment_success"));
    assert!(matches!(
        Preferences::from_pb(prefs(&[("app", false)], None)),
        Err(PreferencesError::BadType { index: 0, .. })
    ));
    assert!(matches!(
        Preferences::from_pb(prefs(&[("app.*", false), ("app.*", true)], None)),
        Err(PreferencesError::Duplicate { index: 1, .. })
    ));
}

#[test]
fn quiet_hours_wrap_midnight_in_the_users_time_zone_and_spare_critical_types() {
    // 22:00–07:00 in Shanghai (UTC+8) is 14:00–23:00 UTC.
    let p = Preferences::from_pb(prefs(&[], Some(("22:00", "07:00", "Asia/Shanghai")))).unwrap();
    assert!(!p.quiet_at("app.installed", utc(13, 59)));
    assert!(p.quiet_at("app.installed", utc(14, 0)));
    assert!(p.quiet_at("app.installed", utc(16, 0))); // 00:00 local
    assert!(p.quiet_at("app.installed", utc(22, 59))); // 06:59 local
    assert!(!p.quiet_at("app.installed", utc(23, 0))); // 07:00 local: over
    assert!(!p.quiet_at("device.error", utc(16, 0)));
    let day = Preferences::from_pb(prefs(&[], Some(("09:00", "17:00", "UTC")))).unwrap();
    assert!(day.quiet_at("app.installed", utc(9, 0)) && !day.quiet_at("app.installed", utc(17, 0)));
    for (start, end, zone) in [
        ("24:00", "07:00", "UTC"),
        ("7:00", "08:00", "UTC"),
        ("07:00", "07:00", "UTC"),
        ("07:00", "08:00", "Mars/Olympus"),
    ] {
        assert!(
            Preferences::from_pb(prefs(&[], Some((start, end, zone)))).is_err(),
            "{start}-{end} {zone}"
        );
    }
}

#[test]
fn commands_survive_their_encoding() {
    let commands = [
        Command::Mark {
            inbox: InboxKey::user("u1"),
            mark: Mark::Read,
            target: Target::Ids(vec!["a".into(), "b".into()]),
        },
        Command::Mark {
            inbox: InboxKey::admin("root"),
            mark: Mark::Seen,
            target: Target::UpTo(42),
        },
        Command::Mark {
            inbox: InboxKey::user("u1"),
            mark: Mark::Read,
            target: Target::All,
        },
        Command::SetPreferences {
            user: "u1".into(),
            preferences: Box::new(
                Preferences::from_pb(prefs(&[("app.*", false)], Some(("22:00", "07:00", "UTC"))))
                    .unwrap(),
            ),
        },
        Command::JoinAdmin {
            admin: "root".into(),
        },
    ];
    for command in commands {
        assert_eq!(Command::decode(&command.encode()).unwrap(), command);
    }
    assert!(Command::decode(b"\x08\x09").is_err());
}
