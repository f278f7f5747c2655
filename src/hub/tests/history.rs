//! History pages (`ListEvents`): where a page ends, and newest-first paging.

use super::*;

/// A history page whose scan finds retention past the head (everything it would read is gone)
/// ends at once, at the head; it once looped forever.
#[tokio::test]
async fn a_history_page_ends_when_retention_passes_the_head_during_the_scan() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    for _ in 0..5 {
        publisher.send("quota.updated", "u1", "");
    }
    journal.prune_before_scan.store(9, Ordering::Relaxed);
    let page = hub
        .list(filter("u1", false, &[], ""), Viewer::Admin, None, 100)
        .await
        .expect("a page");
    assert!(page.events.is_empty());
    assert!(page.end);
    assert_eq!(page.next, hub.head());
}

/// Newest-first history: a cursor from another journal starts at the head with a gap that says
/// so; one ahead of the journal is refused; retention ends the paging.
#[tokio::test]
async fn newest_first_pages_report_another_journals_cursor_and_end_at_retention() {
    let (hub, journal) = hub_with_journal(16);
    let mut publisher = Publisher::new(&hub, &journal);
    let ids: Vec<_> = (0..5)
        .map(|_| publisher.send("quota.updated", "u1", ""))
        .collect();
    let u1 = || filter("u1", false, &[], "");
    let foreign = Cursor {
        epoch: EPOCH + 1,
        position: 3,
    };
    let page = hub
        .list_newest(u1(), Viewer::Admin, Some(foreign), 2)
        .await
        .expect("a page");
    let shown: Vec<_> = page.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(shown, [ids[4].clone(), ids[3].clone()]);
    let gap = page.gap.expect("a gap");
    assert_eq!(gap.reason, i32::from(pb::GapReason::EpochChanged));
    assert_eq!(page.head, hub.head());
    let ahead = Cursor {
        epoch: EPOCH,
        position: 99,
    };
    assert!(matches!(
        hub.list_newest(u1(), Viewer::Admin, Some(ahead), 2).await,
        Err(HubError::CursorAhead(_))
    ));
    // Positions 1 and 2 retained no more: the page before 4 holds 3 and ends.
    journal.floor.store(2, Ordering::Relaxed);
    let page = hub
        .list_newest(u1(), Viewer::Admin, Some(page.next), 10)
        .await
        .expect("a page");
    let shown: Vec<_> = page.events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(shown, [ids[2].clone()]);
    assert!(page.end && page.gap.is_none());
}
