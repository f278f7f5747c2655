//! History pages (`ListEvents`): bounded reads of stored events, oldest or newest first, with
//! the selection and authorization of a subscription. Does not own where the reads run
//! (`reads`) or what a frame that does not decode becomes (`unreadable`).

use std::sync::{Arc, atomic::Ordering};

use super::{Filter, Hub, HubError, index::selects, unreadable::decode_events};
use crate::{
    auth::Viewer,
    pb,
    store::{
        BackLimits, BackScan, Cursor, EventMeta, JournalReader, Scan, ScanLimits, StoreError,
        StoredEvent,
    },
};

/// One page of stored history ([`Hub::list`], [`Hub::list_newest`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The selected events, oldest first.
    pub events: Vec<pb::Event>,
    /// Where the page ended: the next page starts after it.
    pub next: Cursor,
    /// The page reached the newest stored event.
    pub end: bool,
    /// Set when `after` was below retention or from another journal (for
    /// [`Hub::list_newest`]: when `before` was from another journal).
    pub gap: Option<pb::Gap>,
    /// The head when the page was read: a subscription resuming after it misses nothing and
    /// repeats nothing the page could have held.
    pub head: Cursor,
}

/// The most stored events one [`Hub::list`] call examines, whatever it selects: bounds the cost
/// of a page for a user with few events in a busy journal (the page then ends early, and
/// `next` continues the scan).
const LIST_SCAN_LIMIT: usize = 10_000;

/// Bytes of events one history page holds at most (at least one event): a page must fit a
/// default gRPC client's 4 MiB receive limit, as every single stored event does.
const LIST_PAGE_BYTES: usize = 3 * 1024 * 1024;

impl Hub {
    /// Reads up to `limit` stored events after `after` (from the oldest retained without it)
    /// that a subscription with `filter` seen by `viewer` would get, oldest first. One bounded
    /// read ([`LIST_SCAN_LIMIT`] events examined) on the journal readers: a page of a user with
    /// few events in a busy journal ends early, and its `next` continues the scan.
    ///
    /// # Errors
    ///
    /// [`HubError::CursorAhead`] for a cursor beyond the head; [`HubError::Journal`] when the
    /// journal cannot be read.
    pub async fn list(
        &self,
        filter: Filter,
        viewer: Viewer,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, HubError> {
        let shared = &*self.shared;
        let head = shared.head.load(Ordering::Acquire);
        let start = match after {
            Some(after) if after.epoch != shared.epoch => 0,
            Some(after) if after.position > head => {
                return Err(HubError::CursorAhead(after.to_string()));
            }
            Some(after) => after.position,
            None => 0,
        };
        let limits = ScanLimits {
            until: head,
            max_scanned: LIST_SCAN_LIMIT,
            max_selected: limit,
            max_bytes: LIST_PAGE_BYTES,
        };
        let (scan, events) = self
            .read_page(
                filter,
                viewer,
                move |journal, select| journal.scan(start, limits, select),
                |scan: &Scan| &scan.events,
            )
            .await?;
        let gap = match after {
            Some(after) if after.epoch != shared.epoch => {
                Some((after, pb::GapReason::EpochChanged))
            }
            Some(after) if after.position < scan.floor => Some((after, pb::GapReason::Retention)),
            _ => None,
        };
        Ok(Page {
            events,
            next: shared.cursor(scan.last),
            end: scan.last >= head,
            gap: gap.map(|(from, reason)| pb::Gap {
                from_cursor: from.to_string(),
                // Never past where the page ends: what follows `next` is the next page's.
                to_cursor: shared.cursor(scan.floor.min(scan.last)).to_string(),
                reason: reason.into(),
            }),
            head: shared.cursor(head),
        })
    }

    /// Reads one history page on the `ListEvents` readers: `scan` reads the journal with the
    /// page's selection, and the events it selected (`events_of`) are decoded there too, since
    /// a page of them is CPU work for the reader's thread, not for an async worker.
    async fn read_page<S: Send + 'static>(
        &self,
        filter: Filter,
        viewer: Viewer,
        scan: impl FnOnce(&dyn JournalReader, &dyn Fn(EventMeta<'_>) -> bool) -> Result<S, StoreError>
        + Send
        + 'static,
        events_of: fn(&S) -> &[StoredEvent],
    ) -> Result<(S, Vec<pb::Event>), HubError> {
        let shared = Arc::clone(&self.shared);
        self.shared
            .history
            .run(move || {
                let scanned = scan(&*shared.journal, &|meta| selects(&filter, &viewer, meta))?;
                let events = decode_events(
                    events_of(&scanned),
                    |position| shared.cursor(position),
                    &shared.unreadable,
                );
                Ok((scanned, events))
            })
            .await
            .map_err(HubError::Journal)
    }

    /// One page of stored history, newest first: the newest events before `before` (from the
    /// head when `None`) that `filter` selects and `viewer` may see, with the same bounds as
    /// [`Hub::list`]. `Page::next` continues with older events; `Page::head` is the head the
    /// page was read at, from which a subscription goes live with nothing missed or repeated.
    /// A `before` from another journal epoch starts at the head, with a gap saying so.
    pub async fn list_newest(
        &self,
        filter: Filter,
        viewer: Viewer,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Page, HubError> {
        let shared = &*self.shared;
        let head = shared.head.load(Ordering::Acquire);
        let (start, other_epoch) = match before {
            Some(before) if before.epoch != shared.epoch => (head + 1, Some(before)),
            Some(before) if before.position > head => {
                return Err(HubError::CursorAhead(before.to_string()));
            }
            Some(before) => (before.position, None),
            None => (head + 1, None),
        };
        let limits = BackLimits {
            max_scanned: LIST_SCAN_LIMIT,
            max_selected: limit,
            max_bytes: LIST_PAGE_BYTES,
        };
        let (scan, events) = self
            .read_page(
                filter,
                viewer,
                move |journal, select| journal.scan_back(start, limits, select),
                |scan: &BackScan| &scan.events,
            )
            .await?;
        Ok(Page {
            events,
            next: shared.cursor(scan.first),
            end: scan.first <= scan.floor,
            gap: other_epoch.map(|from| pb::Gap {
                from_cursor: from.to_string(),
                to_cursor: shared.cursor(head).to_string(),
                reason: pb::GapReason::EpochChanged.into(),
            }),
            head: shared.cursor(head),
        })
    }
}
