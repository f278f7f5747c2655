//! The inbox's state in the journal: items and counts as events arrive, marks, pages,
//! retention, admins, preferences, and all of it across a reopen.
#![allow(clippy::unwrap_used)]

use super::test_support::*;
use crate::{
    inbox::{Applied, Command, Family, InboxKey, Mark, Marked, Preferences, Reason, Target},
    pb,
    store::{InboxReader, Journal as _, PageQuery, RetentionSettings},
};

fn typed(id: &str, event_type: &str, user: &str) -> pb::Event {
    pb::Event {
        r#type: event_type.into(),
        ..event(id, user)
    }
}

fn notice(id: &str, source: &str) -> pb::Event {
    pb::Event {
        id: id.into(),
        r#type: "admin.notice".into(),
        payload: Some(pb::event::Payload::AdminNotice(pb::AdminNotice {
            source_event_type: source.into(),
            ..pb::AdminNotice::default()
        })),
        ..pb::Event::default()
    }
}

fn mark(inbox: InboxKey, mark: Mark, target: Target) -> Command {
    Command::Mark {
        inbox,
        mark,
        target,
    }
}

fn marked(applied: &Applied) -> &Marked {
    match applied {
        Applied::Marked(marked) => marked,
        other => panic!("not a mark: {other:?}"),
    }
}

fn page(reader: &dyn InboxReader, inbox: &InboxKey, filter: pb::InboxFilter) -> Vec<u64> {
    let query = PageQuery {
        filter,
        families: Vec::new(),
        before: None,
        limit: 100,
        max_scanned: 10_000,
    };
    reader
        .page(inbox, &query)
        .unwrap()
        .items
        .iter()
        .map(|item| item.position)
        .collect()
}

#[test]
fn events_become_items_and_marks_move_the_exact_counts() {
    let dir = TestDir::new();
    let mut journal = dir.open();
    let written = journal
        .write(
            &mut [
                typed("b1", "billing.payment_success", "u1"),
                typed("q1", "quota.updated", "u1"),
                typed("d1", "device.error", "u1"),
                typed("a1", "app.installed", "u2"),
                typed("b2", "billing.low_balance", "u1"),
            ],
            &[],
        )
        .unwrap();
    // quota.updated is not an inbox type by default; four items, three of them u1's.
    assert_eq!(written.updates.len(), 4);
    assert!(written.updates.iter().all(|u| u.reason == Reason::NewItems));
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    let u1 = InboxKey::user("u1");
    let counts = inbox.counts(&u1).unwrap();
    assert_eq!(counts.total().unread, 3);
    assert_eq!(counts.family(Family::Billing).unread, 2);
    assert_eq!(counts.family(Family::Quota).total, 0);
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Unspecified), [5, 3, 1]);

    // By ids: u2's id is unknown to u1, exactly like an id that never existed.
    let written = journal
        .write(
            &mut [],
            &[mark(
                u1.clone(),
                Mark::Read,
                Target::Ids(vec!["b1".into(), "a1".into(), "nope".into()]),
            )],
        )
        .unwrap();
    let result = marked(&written.applied[0]);
    assert_eq!(result.changed, 1);
    assert_eq!(result.unknown_ids, ["a1", "nope"]);
    assert_eq!(result.counts.total().unread, 2);
    assert_eq!(result.counts.total().unseen, 2);
    assert_eq!(written.updates.len(), 1);
    assert_eq!(written.updates[0].ids, ["b1"]);
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Unread), [5, 3]);
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Read), [1]);

    // Seen up to a position, then archive, unread, all read.
    let written = journal
        .write(
            &mut [],
            &[
                mark(u1.clone(), Mark::Seen, Target::UpTo(3)),
                mark(u1.clone(), Mark::Archived, Target::Ids(vec!["d1".into()])),
                mark(u1.clone(), Mark::Unread, Target::Ids(vec!["b1".into()])),
            ],
        )
        .unwrap();
    let counts = marked(&written.applied[2]).counts;
    // b1 unread again (seen), d1 archived (out of every count), b2 new.
    assert_eq!(
        (
            counts.total().total,
            counts.total().unread,
            counts.total().unseen
        ),
        (2, 2, 1)
    );
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Archived), [3]);
    let written = journal
        .write(&mut [], &[mark(u1.clone(), Mark::Read, Target::All)])
        .unwrap();
    assert_eq!(marked(&written.applied[0]).counts.total().unread, 0);
    assert!(written.updates[0].all);
    // A mark that changes nothing is no update.
    let written = journal
        .write(&mut [], &[mark(u1.clone(), Mark::Read, Target::All)])
        .unwrap();
    assert_eq!(marked(&written.applied[0]).changed, 0);
    assert!(written.updates.is_empty());
    assert_eq!(
        inbox.counts(&InboxKey::user("u2")).unwrap().total().unread,
        1
    );

    // Everything survives a reopen.
    drop(reader);
    drop(journal);
    let journal = dir.open();
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    let counts = inbox.counts(&u1).unwrap();
    assert_eq!((counts.total().total, counts.total().unread), (2, 0));
    assert_eq!(page(inbox, &u1, pb::InboxFilter::All), [5, 3, 1]);
}

#[test]
fn pages_go_newest_first_by_family_and_continue_before_the_last() {
    let dir = TestDir::new();
    let mut journal = dir.open();
    let mut events: Vec<_> = (0..30)
        .map(|n| {
            let t = if n % 3 == 0 {
                "app.installed"
            } else {
                "device.error"
            };
            typed(&format!("e{n}"), t, "u1")
        })
        .collect();
    journal.write(&mut events, &[]).unwrap();
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    let mut query = PageQuery {
        filter: pb::InboxFilter::Unspecified,
        families: vec![Family::App],
        before: None,
        limit: 4,
        max_scanned: 10_000,
    };
    let first = inbox.page(&InboxKey::user("u1"), &query).unwrap();
    let positions: Vec<u64> = first.items.iter().map(|i| i.position).collect();
    assert_eq!(positions, [28, 25, 22, 19]);
    assert!(!first.end);
    query.before = Some(first.next_before);
    let second = inbox.page(&InboxKey::user("u1"), &query).unwrap();
    let positions: Vec<u64> = second.items.iter().map(|i| i.position).collect();
    assert_eq!(positions, [16, 13, 10, 7]);
    query.before = Some(second.next_before);
    let last = inbox.page(&InboxKey::user("u1"), &query).unwrap();
    assert_eq!(last.items.len(), 2);
    assert!(last.end);
    // The frame is the stored event.
    let decoded =
        <pb::SubscribeResponse as prost::Message>::decode(last.items[1].frame.clone()).unwrap();
    assert!(matches!(decoded.kind, Some(pb::subscribe_response::Kind::Event(e)) if e.id == "e0"));
}

#[test]
fn retention_removes_an_events_state_with_the_event() {
    let dir = TestDir::new();
    let mut journal = dir.open();
    let t0 = crate::store::unix_millis();
    journal
        .append_at(&mut [typed("old", "device.error", "u1")], t0 - 10_000)
        .unwrap();
    journal
        .write(
            &mut [
                typed("new", "device.error", "u1"),
                notice("n1", "device.error"),
            ],
            &[Command::JoinAdmin {
                admin: "root".into(),
            }],
        )
        .unwrap();
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    let u1 = InboxKey::user("u1");
    let root = InboxKey::admin("root");
    assert_eq!(inbox.counts(&u1).unwrap().total().unread, 2);
    assert_eq!(inbox.counts(&root).unwrap().total().unread, 1);
    let pruner = journal.pruner(RetentionSettings {
        max_age: std::time::Duration::from_secs(5),
        max_bytes: u64::MAX,
    });
    assert_eq!(pruner.prune_once(t0).unwrap(), 1);
    assert_eq!(inbox.counts(&u1).unwrap().total().unread, 1);
    assert_eq!(page(inbox, &u1, pb::InboxFilter::All), [2]);
    // Its id is gone too: a mark of it is a mark of an unknown id.
    let written = journal
        .write(
            &mut [],
            &[mark(
                u1.clone(),
                Mark::Read,
                Target::Ids(vec!["old".into()]),
            )],
        )
        .unwrap();
    assert_eq!(marked(&written.applied[0]).unknown_ids, ["old"]);
    // Everything else goes too, the admin's notice included.
    let pruner = journal.pruner(RetentionSettings {
        max_age: std::time::Duration::ZERO,
        max_bytes: u64::MAX,
    });
    assert_eq!(pruner.prune_once(t0 + 60_000).unwrap(), 2);
    assert_eq!(inbox.counts(&u1).unwrap().total().total, 0);
    assert_eq!(inbox.counts(&root).unwrap().total().total, 0);
}

#[test]
fn each_admin_keeps_their_own_state_of_the_notices() {
    let dir = TestDir::new();
    let mut journal = dir.open();
    journal
        .write(
            &mut [notice("n1", "quota.exceeded"), notice("n2", "device.error")],
            &[],
        )
        .unwrap();
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    assert!(!inbox.admin_known("root").unwrap());
    // Joining finds the notices retained before.
    let written = journal
        .write(
            &mut [],
            &[
                Command::JoinAdmin {
                    admin: "root".into(),
                },
                Command::JoinAdmin {
                    admin: "ops".into(),
                },
            ],
        )
        .unwrap();
    assert_eq!(written.applied, [Applied::Joined, Applied::Joined]);
    assert!(inbox.admin_known("root").unwrap());
    let root = InboxKey::admin("root");
    let ops = InboxKey::admin("ops");
    let counts = inbox.counts(&root).unwrap();
    assert_eq!(counts.total().unread, 2);
    assert_eq!(counts.family(Family::Quota).unread, 1);
    // A new notice is an item of each; one admin's marks are theirs alone.
    let written = journal
        .write(
            &mut [notice("n3", "billing.low_balance")],
            &[mark(root.clone(), Mark::Read, Target::All)],
        )
        .unwrap();
    assert_eq!(written.updates.len(), 3);
    assert_eq!(inbox.counts(&root).unwrap().total().unread, 0);
    assert_eq!(inbox.counts(&ops).unwrap().total().unread, 3);
    // Admin notices are no user's items.
    assert_eq!(
        inbox.counts(&InboxKey::user("root")).unwrap().total().total,
        0
    );
}

fn preferences(disabled: &[&str], quiet: Option<(&str, &str)>) -> Preferences {
    Preferences::from_pb(pb::Preferences {
        types: disabled
            .iter()
            .map(|t| pb::TypePreference {
                event_type: (*t).into(),
                enabled: false,
                channels: Vec::new(),
            })
            .collect(),
        quiet_hours: quiet.map(|(start, end)| pb::QuietHours {
            start: start.into(),
            end: end.into(),
            time_zone: "Asia/Shanghai".into(),
        }),
        critical_types: Vec::new(),
    })
    .unwrap()
}

#[test]
fn a_disabled_type_is_muted_and_not_counted_and_quiet_hours_mark_updates_quiet() {
    let dir = TestDir::new();
    let mut journal = dir.open();
    journal
        .write(
            &mut [],
            &[Command::SetPreferences {
                user: "u1".into(),
                // 22:00–07:00 in Shanghai.
                preferences: Box::new(preferences(&["app.*"], Some(("22:00", "07:00")))),
            }],
        )
        .unwrap();
    let at = |mut event: pb::Event, hour: i64| {
        // 2026-12-07 at `hour`:30 in Shanghai.
        let seconds = 1_796_601_600 - 8 * 3600 + hour * 3600 + 1800;
        event.received_at = Some(prost_types::Timestamp { seconds, nanos: 0 });
        event
    };
    let written = journal
        .write(
            &mut [
                at(typed("a1", "app.installed", "u1"), 10),
                at(typed("b1", "billing.payment_success", "u1"), 23),
                // Critical: never quiet.
                at(typed("d1", "device.error", "u1"), 23),
                at(typed("b2", "billing.payment_success", "u1"), 10),
            ],
            &[],
        )
        .unwrap();
    assert_eq!(written.muted, [1]);
    let quiet: Vec<(String, bool)> = written
        .updates
        .iter()
        .map(|u| (u.ids[0].clone(), u.quiet))
        .collect();
    assert_eq!(
        quiet,
        [
            ("b1".to_owned(), true),
            ("d1".to_owned(), false),
            ("b2".to_owned(), false)
        ]
    );
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    assert_eq!(
        inbox.counts(&InboxKey::user("u1")).unwrap().total().unread,
        3
    );
    let stored = inbox.preferences("u1").unwrap().unwrap();
    assert!(!stored.enabled("app.installed"));
    assert!(inbox.preferences("u2").unwrap().is_none());
}

/// Rewrites `inbox_state` as the first inbox layout kept it: three tables keyed by tuples.
fn rewrite_in_first_layout(dir: &TestDir) {
    const ITEMS: redb::TableDefinition<(u8, &str, u64), (u8, u8)> =
        redb::TableDefinition::new("inbox_items");
    const IDS: redb::TableDefinition<(u8, &str, &str), u64> =
        redb::TableDefinition::new("inbox_ids");
    const COUNTS: redb::TableDefinition<(u8, &str), &[u8]> =
        redb::TableDefinition::new("inbox_counts");
    use redb::ReadableTable as _;
    let db = redb::Database::open(dir.journal().join("journal.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let state = txn.open_table(super::inbox::STATE).unwrap();
        let mut items = txn.open_table(ITEMS).unwrap();
        let mut ids = txn.open_table(IDS).unwrap();
        let mut counts = txn.open_table(COUNTS).unwrap();
        for entry in state.iter().unwrap() {
            let (key, value) = entry.unwrap();
            let (key, value) = (key.value(), value.value());
            let kind = key[0];
            let len = usize::from(u16::from_be_bytes([key[1], key[2]]));
            let owner = std::str::from_utf8(&key[3..3 + len]).unwrap();
            let (tag, rest) = (key[3 + len], &key[4 + len..]);
            match tag {
                b'c' => {
                    counts.insert((kind, owner), value).unwrap();
                }
                b'i' => {
                    let id = std::str::from_utf8(rest).unwrap();
                    let position = u64::from_le_bytes(value.try_into().unwrap());
                    ids.insert((kind, owner, id), position).unwrap();
                }
                b'p' => {
                    let position = u64::from_be_bytes(rest.try_into().unwrap());
                    items
                        .insert((kind, owner, position), (value[0], value[1]))
                        .unwrap();
                }
                other => panic!("unknown tag {other}"),
            }
        }
    }
    txn.delete_table(super::inbox::STATE).unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_journal_of_the_first_inbox_layout_opens_with_its_items_ids_and_counts() {
    let dir = TestDir::new();
    let mut journal = dir.open();
    journal
        .write(
            &mut [
                typed("b1", "billing.payment_success", "u1"),
                typed("d1", "device.error", "u1"),
                typed("a1", "app.installed", "u2"),
                typed("b2", "billing.low_balance", "u1"),
            ],
            &[mark(
                InboxKey::user("u1"),
                Mark::Read,
                Target::Ids(vec!["d1".into()]),
            )],
        )
        .unwrap();
    drop(journal);
    rewrite_in_first_layout(&dir);

    let mut journal = dir.open();
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    let u1 = InboxKey::user("u1");
    let counts = inbox.counts(&u1).unwrap();
    assert_eq!((counts.total().total, counts.total().unread), (3, 2));
    assert_eq!(
        inbox.counts(&InboxKey::user("u2")).unwrap().total().total,
        1
    );
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Unread), [4, 1]);
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Read), [2]);
    // The ids moved too: a mark by id finds its item.
    let written = journal
        .write(
            &mut [],
            &[mark(u1.clone(), Mark::Read, Target::Ids(vec!["b2".into()]))],
        )
        .unwrap();
    assert_eq!(marked(&written.applied[0]).changed, 1);
    assert_eq!(page(inbox, &u1, pb::InboxFilter::Unread), [1]);
    drop(reader);
    drop(journal);
    // The first layout's tables are gone: nothing is converted twice.
    let db = redb::Database::open(dir.journal().join("journal.redb")).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    for first in ["inbox_items", "inbox_ids", "inbox_counts"] {
        assert!(!names.iter().any(|n| n == first), "{names:?}");
    }
    assert!(names.contains(&"inbox_state".to_owned()), "{names:?}");
}

#[test]
fn owners_whose_names_are_prefixes_of_each_other_keep_their_own_items() {
    // "u1" and "u10": with length-prefixed owners, no range of u1's items reaches u10's.
    let dir = TestDir::new();
    let mut journal = dir.open();
    journal
        .write(
            &mut [
                typed("x1", "device.error", "u1"),
                typed("x2", "device.error", "u10"),
                typed("x3", "device.error", "u1"),
            ],
            &[mark(InboxKey::user("u1"), Mark::Read, Target::All)],
        )
        .unwrap();
    let reader = journal.reader();
    let inbox = reader.inbox().unwrap();
    assert_eq!(
        page(inbox, &InboxKey::user("u1"), pb::InboxFilter::All),
        [3, 1]
    );
    assert_eq!(
        page(inbox, &InboxKey::user("u10"), pb::InboxFilter::Unread),
        [2]
    );
    assert_eq!(
        inbox.counts(&InboxKey::user("u10")).unwrap().total().unread,
        1
    );
}
