//! Resuming: `CaughtUp` at the head, replay of what was missed, gaps for retention and for
//! another journal, and a lagging subscriber's catch-up from the journal.

use super::*;

#[test]
fn every_stream_starts_with_caught_up_at_the_head() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("quota.updated", "u1", "");
    publisher.send("quota.updated", "u1", "");
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let head = Cursor {
        epoch: EPOCH,
        position: 2,
    };
    let later = publisher.send("quota.updated", "u1", "");
    let kinds = drain(&mut subscription);
    assert_eq!(
        kinds[0],
        Kind::CaughtUp(pb::CaughtUp {
            cursor: head.to_string()
        })
    );
    assert_eq!(event_ids(&kinds), vec![later]);
}

#[test]
fn resuming_replays_what_was_missed_then_catches_up_then_goes_live() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let mut mine = Vec::new();
    for i in 0..6 {
        let user = if i % 2 == 0 { "u1" } else { "u2" };
        let id = publisher.send("quota.updated", user, "");
        if user == "u1" {
            mine.push(id);
        }
    }
    let from = Cursor {
        epoch: EPOCH,
        position: 2,
    };
    let head = hub.head();
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(from))
        .expect("subscribe");
    let live = publisher.send("quota.updated", "u1", "");
    let kinds = drain(&mut subscription);
    // u1's events after position 2 (positions 3 and 5), CaughtUp at the head, then live.
    assert_eq!(event_ids(&kinds), [&mine[1..], &[live][..]].concat());
    let caught_up = kinds
        .iter()
        .position(|k| matches!(k, Kind::CaughtUp(c) if c.cursor == head.to_string()))
        .expect("CaughtUp at the head");
    assert_eq!(caught_up, 2, "{kinds:?}");
    assert!(!kinds.iter().any(|k| matches!(k, Kind::Gap(_))));
}

#[test]
fn a_cursor_below_retention_gets_a_gap_then_the_oldest_retained_events() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let ids: Vec<_> = (0..5)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    journal.floor.store(3, Ordering::Relaxed);
    let from = Cursor {
        epoch: EPOCH,
        position: 1,
    };
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(from))
        .expect("subscribe");
    let kinds = drain(&mut subscription);
    assert_eq!(
        kinds[0],
        Kind::Gap(pb::Gap {
            from_cursor: from.to_string(),
            to_cursor: Cursor {
                epoch: EPOCH,
                position: 3
            }
            .to_string(),
            reason: pb::GapReason::Retention.into(),
        })
    );
    assert_eq!(event_ids(&kinds), ids[3..].to_vec());
    assert!(matches!(kinds.last(), Some(Kind::CaughtUp(_))));
}

#[test]
fn resume_edge_cases() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    publisher.send("quota.updated", "u1", "");
    let head = hub.head();
    // At the head: nothing missed, no gap.
    let mut at_head = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(head))
        .expect("subscribe");
    assert!(matches!(
        drain(&mut at_head).as_slice(),
        [Kind::CaughtUp(_)]
    ));
    // Another journal's cursor: a gap that says so.
    let foreign = Cursor {
        epoch: EPOCH + 1,
        position: 1,
    };
    let mut other = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(foreign))
        .expect("subscribe");
    match drain(&mut other).first() {
        Some(Kind::Gap(gap)) => assert_eq!(gap.reason, i32::from(pb::GapReason::EpochChanged)),
        other => panic!("expected a gap, got {other:?}"),
    }
    // Ahead of the journal: refused.
    let ahead = Cursor {
        epoch: EPOCH,
        position: 99,
    };
    assert!(matches!(
        hub.subscribe(filter("u1", false, &[], ""), Viewer::Admin, Some(ahead)),
        Err(HubError::CursorAhead(_))
    ));
}

#[test]
fn a_slow_subscriber_catches_up_from_the_journal_without_slowing_the_others() {
    let (hub, journal) = hub_with_journal(4);
    let mut slow = hub
        .subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut fast = hub
        .subscribe(filter("*", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let mut fast_ids = Vec::new();
    let mut sent = Vec::new();
    for _ in 0..10 {
        sent.push(publisher.send("quota.updated", "u1", ""));
        fast_ids.extend(event_ids(&drain(&mut fast)));
    }
    assert_eq!(fast_ids, sent, "the fast subscriber got everything");
    assert_eq!(hub.shared.metrics.queue_overflows.get(), 1);
    // The slow one overflowed after 3 events (CaughtUp took a place), and still gets every
    // event, in order, once: the rest from the journal.
    let kinds = drain(&mut slow);
    assert_eq!(event_ids(&kinds), sent);
    assert_eq!(slow.end_reason(), None);
    assert_eq!(slow.last_cursor().position, 10);
    // Back on the live feed: the next event arrives through the mailbox.
    let next = publisher.send("quota.updated", "u1", "");
    assert_eq!(event_ids(&drain(&mut slow)), [next]);
}

/// Retention may remove events past the point where a lagging subscriber's catch-up ends
/// (`until`, where it rejoined the live feed) before the catch-up reads them. The subscriber is
/// told of the gap up to `until` (what follows is in its mailbox, not lost), and its cursor
/// never moves backwards (this once underflowed `until - read_after`).
#[test]
fn retention_passing_a_lagging_subscribers_catch_up_gives_a_gap_and_never_rewinds() {
    let (hub, journal) = hub_with_journal(2);
    let mut subscription = hub
        .subscribe(filter("u1", false, &[], ""), Viewer::Admin, None)
        .expect("subscribe");
    let mut publisher = Publisher::new(&hub, &journal);
    let sent: Vec<_> = (0..6)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    // The mailbox held e1 and e2, then overflowed; the catch-up to position 6 will find
    // retention already at 8.
    journal.prune_before_scan.store(8, Ordering::Relaxed);
    let kinds = drain(&mut subscription);
    assert_eq!(event_ids(&kinds), sent[..2].to_vec());
    let cursor = |position| {
        Cursor {
            epoch: EPOCH,
            position,
        }
        .to_string()
    };
    assert_eq!(
        kinds.last(),
        Some(&Kind::Gap(pb::Gap {
            from_cursor: cursor(2),
            to_cursor: cursor(6),
            reason: pb::GapReason::Retention.into(),
        }))
    );
    assert_eq!(subscription.last_cursor().position, 6);
    // Live again: the next events come through the mailbox, in order.
    let later: Vec<_> = (0..2)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    assert_eq!(event_ids(&drain(&mut subscription)), later);
    assert_eq!(subscription.last_cursor().position, 8);
}
