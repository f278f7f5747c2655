//! Reading the journal for replay and history: scans forward and back, each in one snapshot,
//! bounded by what it may examine, select and return.
//!
//! Owns: [`RedbReader`] and the one pass both scans make over a range of records
//! ([`take_selected`]). Does not own: what is selected (the caller's filter), the record's
//! encoding (`record.rs`), or the limits' meaning (`ScanLimits` in `store`).

use std::sync::Arc;

use redb::{Database, ReadTransaction};

use super::{EVENTS, FLOOR, META, inbox, read_failed, record::read_record};
use crate::{
    inbox::{Counts, InboxKey, Preferences},
    store::{
        BackLimits, BackScan, EventMeta, InboxPage, InboxReader, JournalReader, PageQuery, Scan,
        ScanLimits, StoreError, StoredEvent,
        file::{JournalFile, KeptRecords as Kept},
    },
};

/// Reads the journal for replay; any number at once, each on its own snapshot.
pub(super) struct RedbReader {
    file: Arc<JournalFile>,
}

impl RedbReader {
    /// A reader of `file`.
    pub(super) fn new(file: Arc<JournalFile>) -> Self {
        Self { file }
    }

    /// One read transaction and the floor in it: a scan reads the floor and the events from
    /// the same snapshot, so retention running meanwhile cannot make them disagree. The handle
    /// is held with it (a reopen waits for its holders).
    fn snapshot(&self) -> Result<(Arc<Database>, ReadTransaction, u64), StoreError> {
        let (db, txn, _) = self.file.read_snapshot()?;
        let floor = floor_in(&txn)?;
        Ok((db, txn, floor))
    }

    /// [`Self::snapshot`] with the records of a lost transaction's batches, for the scans
    /// (see `OpenBatches::records`).
    fn scan_snapshot(
        &self,
        until: u64,
    ) -> Result<(Arc<Database>, ReadTransaction, u64, Kept), StoreError> {
        let (db, txn, kept) = self.file.read_snapshot_until(until)?;
        let floor = floor_in(&txn)?;
        Ok((db, txn, floor, kept))
    }
}

impl InboxReader for RedbReader {
    fn counts(&self, inbox: &InboxKey) -> Result<Counts, StoreError> {
        let (_db, txn, _) = self.snapshot()?;
        inbox::counts_in(&txn, inbox)
    }

    fn page(&self, inbox: &InboxKey, query: &PageQuery) -> Result<InboxPage, StoreError> {
        let (_db, txn, _) = self.snapshot()?;
        inbox::page_in(&txn, inbox, query)
    }

    fn preferences(&self, user: &str) -> Result<Option<Preferences>, StoreError> {
        let (_db, txn, _) = self.snapshot()?;
        inbox::preferences_in(&txn, user)
    }

    fn admin_known(&self, admin: &str) -> Result<bool, StoreError> {
        let (_db, txn, _) = self.snapshot()?;
        inbox::admin_known_in(&txn, admin)
    }
}

impl JournalReader for RedbReader {
    fn inbox(&self) -> Option<&dyn InboxReader> {
        Some(self)
    }

    fn floor(&self) -> Result<u64, StoreError> {
        floor_in(&self.file.read_snapshot()?.1)
    }

    fn scan(
        &self,
        after: u64,
        limits: ScanLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<Scan, StoreError> {
        let (_db, txn, floor, kept) = self.scan_snapshot(limits.until)?;
        let table = txn.open_table(EVENTS).map_err(read_failed)?;
        let start = after.max(floor);
        let mut scan = Scan {
            floor,
            events: Vec::new(),
            last: start.min(limits.until),
        };
        if start >= limits.until {
            return Ok(scan);
        }
        let range = table.range(start + 1..=limits.until).map_err(read_failed)?;
        let kept = kept
            .iter()
            .filter(|(position, _)| (start + 1..=limits.until).contains(position));
        let taken = take_selected(
            pages(range).chain(kept.map(in_memory)),
            limits.max_scanned,
            limits.max_selected,
            limits.max_bytes,
            select,
        )?;
        scan.events = taken.events;
        scan.last = match (taken.exhausted, taken.examined) {
            // The range is exhausted: everything up to `until` has been examined.
            (true, _) => limits.until,
            (false, Some(examined)) => examined,
            (false, None) => scan.last,
        };
        Ok(scan)
    }

    fn scan_back(
        &self,
        before: u64,
        limits: BackLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<BackScan, StoreError> {
        let (_db, txn, floor, kept) = self.scan_snapshot(before.saturating_sub(1))?;
        let table = txn.open_table(EVENTS).map_err(read_failed)?;
        let mut scan = BackScan {
            floor,
            events: Vec::new(),
            first: before.max(floor),
        };
        if before <= floor.saturating_add(1) {
            scan.first = floor;
            return Ok(scan);
        }
        let range = table.range(floor + 1..before).map_err(read_failed)?;
        let kept = kept
            .iter()
            .rev()
            .filter(|(position, _)| (floor + 1..before).contains(position));
        let taken = take_selected(
            kept.map(in_memory).chain(pages(range.rev())),
            limits.max_scanned,
            limits.max_selected,
            limits.max_bytes,
            select,
        )?;
        scan.events = taken.events;
        scan.first = match (taken.exhausted, taken.examined) {
            // Exhausted: nothing older than the floor is left.
            (true, _) => floor,
            (false, Some(examined)) => examined,
            (false, None) => scan.first,
        };
        Ok(scan)
    }
}

/// What [`take_selected`] found, in the order it read.
struct Taken {
    /// The selected events.
    events: Vec<StoredEvent>,
    /// The last position examined (selected or not), if any.
    examined: Option<u64>,
    /// Whether the records ran out before a limit ended the pass.
    exhausted: bool,
}

/// The events of `records` (a range of [`EVENTS`], either way round) that `select` picks:
/// at most `max_scanned` examined, `max_selected` taken, and `max_bytes` of frames (but always
/// one); an event that would go over the bytes ends the pass before it, unexamined, so the
/// next pass starts with it. Only selected events are copied out of the pages. A record that
/// does not decode ends the pass with [`StoreError::Corrupt`].
fn take_selected<'a>(
    records: impl Iterator<Item = Result<(u64, Stored<'a>), StoreError>>,
    max_scanned: usize,
    max_selected: usize,
    max_bytes: usize,
    select: &dyn Fn(EventMeta<'_>) -> bool,
) -> Result<Taken, StoreError> {
    let mut taken = Taken {
        events: Vec::new(),
        examined: None,
        exhausted: false,
    };
    let mut bytes = 0;
    for (scanned, entry) in records.enumerate() {
        if scanned == max_scanned || taken.events.len() == max_selected {
            return Ok(taken);
        }
        let (position, record) = entry?;
        let picked = read_record(record.bytes(), |record| {
            select(record.meta()).then(|| record.stored(position))
        })
        .map_err(|source| StoreError::Corrupt { position, source })?;
        if let Some(event) = picked {
            if !taken.events.is_empty() && bytes + event.frame.len() > max_bytes {
                return Ok(taken);
            }
            bytes += event.frame.len();
            taken.events.push(event);
        }
        taken.examined = Some(position);
    }
    taken.exhausted = true;
    Ok(taken)
}

/// A record a scan passes: in the file's pages, or kept in memory for a lost transaction.
enum Stored<'a> {
    /// In a page of the snapshot.
    Page(redb::AccessGuard<'a, &'static [u8]>),
    /// Kept in memory.
    Kept(&'a [u8]),
}

impl Stored<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Stored::Page(guard) => guard.value(),
            Stored::Kept(bytes) => bytes,
        }
    }
}

/// A range of [`EVENTS`] as the records a scan passes.
fn pages<'a>(
    range: impl Iterator<
        Item = Result<
            (
                redb::AccessGuard<'a, u64>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
) -> impl Iterator<Item = Result<(u64, Stored<'a>), StoreError>> {
    range.map(|entry| {
        entry
            .map(|(position, record)| (position.value(), Stored::Page(record)))
            .map_err(read_failed)
    })
}

/// A kept record as one a scan passes.
fn in_memory((position, record): &(u64, Vec<u8>)) -> Result<(u64, Stored<'_>), StoreError> {
    Ok((*position, Stored::Kept(record)))
}

/// The journal's floor in `txn`'s snapshot.
fn floor_in(txn: &ReadTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).map_err(read_failed)?;
    Ok(meta
        .get(FLOOR)
        .map_err(read_failed)?
        .map_or(0, |v| v.value()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{RedbJournal, RetentionSettings, test_support::*};
    use super::*;
    use crate::store::Journal as _;

    /// A read that fails in redb keeps redb's error as its source, and says it once: the
    /// binary prints error chains.
    #[test]
    fn a_failed_read_keeps_the_engines_error_as_its_source() {
        let error = read_failed(redb::StorageError::Corrupted("page 7 (test)".into()));
        let text = error.to_string();
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert!(text.starts_with("journal unavailable"), "{text}");
        assert!(!text.contains("page 7"), "{text}");
        assert!(
            source.is_some_and(|source| source.contains("page 7")),
            "{error:?}"
        );
        assert!(!error.is_health_refusal());
    }

    #[test]
    fn readers_see_events_in_order_with_what_routing_needs() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        let mut batch: Vec<_> = (1..=5).map(|i| event(&format!("e{i}"), "u1")).collect();
        let out = journal.append(&mut batch).unwrap();
        let reader = journal.reader();
        assert_eq!(reader.floor().unwrap(), 0);
        let read = read_after(&*reader, 2, 2);
        assert_eq!(read.iter().map(|e| e.position).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(&*read[0].user_id, "u1");
        assert_eq!(&*read[0].event_type, "device.error");
        assert_eq!(&*read[0].device_id, "d1");
        assert_eq!(Some(&read[0].frame), out[2].frame.as_ref());
        assert!(read_after(&*reader, 5, 10).is_empty());
    }

    /// A journal (in its own directory, kept while the returned `TestDir` lives) holding
    /// positions 1..=10, the even ones u2's and the odd ones u1's, and a reader of it.
    fn ten_events_even_ones_for_u2() -> (TestDir, RedbJournal, Arc<dyn JournalReader>) {
        let dir = TestDir::new();
        let mut journal = dir.open();
        let mut batch: Vec<_> = (1..=10)
            .map(|i| event(&format!("e{i}"), if i % 2 == 0 { "u2" } else { "u1" }))
            .collect();
        journal.append(&mut batch).unwrap();
        let reader = journal.reader();
        (dir, journal, reader)
    }

    #[test]
    fn a_backward_scan_reads_newest_first_within_its_limits_and_ends_at_the_floor() {
        let (_dir, _journal, reader) = ten_events_even_ones_for_u2();
        let u2 = |meta: EventMeta<'_>| meta.user_id == "u2";
        let limits = |max_scanned, max_selected| BackLimits {
            max_scanned,
            max_selected,
            max_bytes: usize::MAX,
        };
        let positions =
            |scan: &BackScan| scan.events.iter().map(|e| e.position).collect::<Vec<_>>();
        // From the head (before 11): 10, 8, then stops at two selected; continues before 8.
        let scan = reader.scan_back(11, limits(100, 2), &u2).unwrap();
        assert_eq!((positions(&scan), scan.first), (vec![10, 8], 8));
        // The next page: 6, 4, 2, then the floor: nothing older is left.
        let scan = reader.scan_back(8, limits(100, 100), &u2).unwrap();
        assert_eq!(
            (positions(&scan), scan.first, scan.floor),
            (vec![6, 4, 2], 0, 0)
        );
        // At most 3 examined: 7, 6, 5.
        let scan = reader.scan_back(8, limits(3, 100), &u2).unwrap();
        assert_eq!((positions(&scan), scan.first), (vec![6], 5));
        // About two frames' worth of bytes: two events, and the next page starts with the third.
        let frame_len = reader.scan_back(11, limits(1, 1), &u2).unwrap().events[0]
            .frame
            .len();
        let scan = reader
            .scan_back(
                11,
                BackLimits {
                    max_bytes: 2 * frame_len + 1,
                    ..limits(100, 100)
                },
                &u2,
            )
            .unwrap();
        assert_eq!((positions(&scan), scan.first), (vec![10, 8], 7));
        // Before the first event: nothing, at the floor.
        let scan = reader.scan_back(1, limits(100, 100), &u2).unwrap();
        assert_eq!((positions(&scan), scan.first), (vec![], 0));
    }

    #[test]
    fn a_scan_selects_reads_only_what_it_selects_and_stops_at_its_limits() {
        let (_dir, journal, reader) = ten_events_even_ones_for_u2();
        let u2 = |meta: EventMeta<'_>| meta.user_id == "u2";
        let limits = |until, max_scanned, max_selected| ScanLimits {
            until,
            max_scanned,
            max_selected,
            max_bytes: usize::MAX,
        };
        let positions = |scan: &Scan| scan.events.iter().map(|e| e.position).collect::<Vec<_>>();
        // Everything up to 7: u2's 2, 4, 6; examined through 7.
        let scan = reader.scan(0, limits(7, 100, 100), &u2).unwrap();
        assert_eq!(
            (positions(&scan), scan.last, scan.floor),
            (vec![2, 4, 6], 7, 0)
        );
        // At most 3 examined: 1, 2, 3.
        let scan = reader.scan(0, limits(10, 3, 100), &u2).unwrap();
        assert_eq!((positions(&scan), scan.last), (vec![2], 3));
        // At most 2 selected: stops right after the second.
        let scan = reader.scan(2, limits(10, 100, 2), &u2).unwrap();
        assert_eq!((positions(&scan), scan.last), (vec![4, 6], 6));
        // At most about two frames' worth of bytes: two events, and the scan ends just
        // before the third (the next scan starts with it); one event however large.
        let frame_len = read_after(&*reader, 0, 1)[0].frame.len();
        let scan = reader
            .scan(
                0,
                ScanLimits {
                    max_bytes: 2 * frame_len + 1,
                    ..limits(10, 100, 100)
                },
                &u2,
            )
            .unwrap();
        assert_eq!((positions(&scan), scan.last), (vec![2, 4], 5));
        let scan = reader
            .scan(
                0,
                ScanLimits {
                    max_bytes: 1,
                    ..limits(10, 100, 100)
                },
                &u2,
            )
            .unwrap();
        assert_eq!((positions(&scan), scan.last), (vec![2], 3));
        // Nothing selected, range exhausted: `last` is `until`, even past the head.
        let scan = reader.scan(0, limits(50, 100, 100), &|_| false).unwrap();
        assert_eq!((positions(&scan), scan.last), (vec![], 50));
        // Past `until` already: nothing to do.
        let scan = reader.scan(9, limits(5, 100, 100), &u2).unwrap();
        assert_eq!((positions(&scan), scan.last), (vec![], 5));
        // Retention removed everything: the scan starts after the floor and says where it is.
        let pruner = journal.pruner(RetentionSettings {
            max_age: Duration::from_millis(1),
            max_bytes: u64::MAX,
        });
        assert_eq!(
            pruner
                .prune_once(crate::store::unix_millis() + 60_000)
                .unwrap(),
            10
        );
        let scan = reader.scan(0, limits(10, 100, 100), &u2).unwrap();
        assert_eq!(scan.floor, 10);
        assert_eq!((positions(&scan), scan.last), (vec![], 10));
    }
}
