//! The writer: appending a batch (positions, the dedupe by id, a conflicting id), positions in
//! doubt after a failed commit, the dedupe window's upkeep, and the batch write (one write
//! transaction and its insert: `write_batch`, `BatchInsert`) that appends and a replica's writes
//! share.
//!
//! Owns: what one write transaction of the writer does. Does not own: a replica's positions and
//! epoch (`replica.rs`, which uses the batch write), retention (`retention.rs`), or reopening
//! the file after a failure (`file.rs`, through which every write goes).
//!
//! A record that does not decode (only a bug or damage past redb's checksums) does not stop the
//! writer: its id cannot be forgotten by the window, a re-send of its id is taken for another
//! event (refused as a conflict rather than acknowledged as stored), and it is logged. Stopping
//! at it would stop every later write; the scans that meet it report it.

use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, Durability as RedbDurability, ReadableTable, Table};

use super::{
    BYTES, DEDUPE_FLOOR, Durability, EVENTS, IDS, META, RedbJournal,
    inbox::InboxWrite,
    record::{Record, RecordView, read_record},
};
use crate::{
    inbox::Command,
    pb,
    store::{Appended, StoreError, Written, encode_event_frame, file::KeptRecords},
};

/// The most positions kept in doubt (see `RedbJournal::in_doubt`): a few failed batches. One
/// never sent again stays until this many are.
const MAX_IN_DOUBT: usize = 64 * 1024;

/// Ids forgotten by the dedupe window per commit, so one commit never stalls on a backlog.
const FORGET_PER_COMMIT: usize = 1024;

/// The tables a batch stores new events in, and what it added: one insert for the writer's
/// appends and a replica's writes alike.
pub(super) struct BatchInsert<'txn> {
    /// `events`.
    pub(super) events: Table<'txn, u64, &'static [u8]>,
    /// `ids`.
    pub(super) ids: Table<'txn, &'static str, (u64, u64)>,
    /// The append time stored with each event.
    now: u64,
    /// Bytes of the records stored so far, for `--retention-bytes`.
    added_bytes: u64,
    /// The records stored, kept when the batch is logged (see `OpenBatches::records`).
    kept: Option<KeptRecords>,
}

impl<'txn> BatchInsert<'txn> {
    /// Opens the tables for a batch appended at `now` (milliseconds since the Unix epoch).
    pub(super) fn open(txn: &'txn redb::WriteTransaction, now: u64) -> Result<Self, redb::Error> {
        Ok(Self {
            events: txn.open_table(EVENTS)?,
            ids: txn.open_table(IDS)?,
            now,
            added_bytes: 0,
            kept: None,
        })
    }

    /// Stores `event` at `position` under its id, with `cursor` stamped into it; returns its
    /// frame (`SubscribeResponse { event }`, as stored).
    pub(super) fn insert(
        &mut self,
        position: u64,
        cursor: String,
        event: &mut pb::Event,
    ) -> Result<Bytes, redb::Error> {
        event.cursor = cursor;
        let frame = encode_event_frame(event);
        let record = Record::encode_event(event, self.now, &frame);
        self.events.insert(position, record.as_slice())?;
        self.added_bytes += record.len() as u64;
        self.ids.insert(event.id.as_str(), (position, self.now))?;
        if let Some(kept) = self.kept.as_mut() {
            kept.push((position, record));
        }
        Ok(frame)
    }

    /// Closes the tables and adds what the batch stored to the journal's size; returns the
    /// records kept, if asked to keep them.
    pub(super) fn finish(self, txn: &redb::WriteTransaction) -> Result<KeptRecords, redb::Error> {
        let added = self.added_bytes;
        let kept = self.kept.unwrap_or_default();
        drop((self.events, self.ids));
        if added > 0 {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(BYTES)?.map_or(0, |v| v.value());
            meta.insert(BYTES, stored + added)?;
        }
        Ok(kept)
    }
}

impl RedbJournal {
    /// A write transaction with the configured durability. With an interval, a
    /// [`super::Syncer`] makes the commits durable in the background.
    pub(super) fn begin_append(
        &self,
        db: &Database,
    ) -> Result<redb::WriteTransaction, redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(match self.settings.durability {
            Durability::EveryCommit => RedbDurability::Immediate,
            Durability::Interval(_) => RedbDurability::None,
        })?;
        Ok(txn)
    }

    /// Before a write after a failed commit: the head as the file has it (the failed commit's
    /// events may be there); positions beyond it are not in doubt any more (they were lost).
    pub(super) fn settle_doubt(&mut self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        if !self.head_in_doubt {
            return Ok(());
        }
        let events = txn.open_table(EVENTS)?;
        let meta = txn.open_table(META)?;
        let stored = events.last()?.map_or(0, |(k, _)| k.value());
        let floor = meta.get(super::FLOOR)?.map_or(0, |v| v.value());
        let replica_head = meta.get(super::REPLICA_HEAD)?.map_or(0, |v| v.value());
        self.head = stored.max(floor).max(replica_head);
        let head = self.head;
        self.in_doubt.retain(|&position| position <= head);
        self.head_in_doubt = false;
        Ok(())
    }

    /// After a failed commit that wrote `positions`.
    pub(super) fn commit_failed(&mut self, positions: impl IntoIterator<Item = u64>) {
        self.in_doubt.extend(positions);
        while self.in_doubt.len() > MAX_IN_DOUBT {
            self.in_doubt.pop_first();
        }
        self.head_in_doubt = true;
    }

    /// The stored frame at `position`, if it is in doubt (see `in_doubt`): it is delivered now.
    pub(super) fn take_in_doubt(
        &mut self,
        table: &Table<'_, u64, &[u8]>,
        position: u64,
    ) -> Result<Option<Bytes>, redb::Error> {
        if !self.in_doubt.remove(&position) {
            return Ok(None);
        }
        let Some(stored) = table.get(position)? else {
            return Ok(None);
        };
        Ok(
            match read_record(stored.value(), |record| {
                Bytes::copy_from_slice(record.frame)
            }) {
                Ok(frame) => Some(frame),
                Err(error) => {
                    // Not delivered: nobody could read it.
                    tracing::warn!(position, %error, "a journal record in doubt does not decode; it is not delivered");
                    None
                }
            },
        )
    }

    /// Forgets ids older than the dedupe window, a bounded amount per commit so one commit never
    /// stalls on a large backlog.
    pub(super) fn forget_old_ids(
        &self,
        txn: &redb::WriteTransaction,
        now: u64,
    ) -> Result<(), redb::Error> {
        let window = u64::try_from(self.settings.dedupe_window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(window);
        let mut meta = txn.open_table(META)?;
        let floor = meta.get(DEDUPE_FLOOR)?.map_or(0, |v| v.value());
        let events = txn.open_table(EVENTS)?;
        let mut ids = txn.open_table(IDS)?;
        let mut new_floor = floor;
        for entry in events.range(floor + 1..)?.take(FORGET_PER_COMMIT) {
            let (position, record) = entry?;
            let position = position.value();
            let forgot = read_record(record.value(), |record| {
                if record.appended_ms > cutoff {
                    return Ok(false);
                }
                // Only if the id still points here (a later re-send stored anew points
                // elsewhere).
                let points_here = ids.get(record.id)?.is_some_and(|v| v.value().0 == position);
                if points_here {
                    ids.remove(record.id)?;
                }
                Ok::<_, redb::Error>(true)
            });
            match forgot {
                Ok(forgot) => {
                    if !forgot? {
                        break;
                    }
                }
                Err(error) => {
                    // Its id cannot be read, so it is not forgotten. Passed once, so logged
                    // once.
                    tracing::warn!(position, %error, "a journal record does not decode; the dedupe window passes it without forgetting its id");
                }
            }
            new_floor = position;
        }
        if new_floor != floor {
            meta.insert(DEDUPE_FLOOR, new_floor)?;
        }
        Ok(())
    }

    /// Appends `events` as of `now` (milliseconds since the epoch: the append time kept for
    /// the dedupe window), through the file's checks: refused while the disk is full, reopened
    /// after a storage failure.
    pub(super) fn append_at(
        &mut self,
        events: &mut [pb::Event],
        now: u64,
    ) -> Result<Vec<Appended>, StoreError> {
        self.write_at(events, &[], now)
            .map(|written| written.appended)
    }

    /// [`Self::append_at`], then the inbox commands, in one transaction. With a commit log,
    /// a batch of events alone is logged (`logged.rs`); commands are committed to the file at
    /// once, with the batches before them.
    pub(super) fn write_at(
        &mut self,
        events: &mut [pb::Event],
        commands: &[Command],
        now: u64,
    ) -> Result<Written, StoreError> {
        if self.logging() {
            if commands.is_empty() && !events.is_empty() {
                return self.write_logged(events, now);
            }
            self.apply_lost_batches()?;
        }
        let before = self.head;
        let file = Arc::clone(&self.file);
        file.write(true, |db| {
            self.write_batch(db, now, |journal, txn, batch| {
                journal.fill_events(txn, batch, events, commands)
            })
        })
        .inspect_err(|_| {
            // Nothing of the batch was committed: positions start again where they were.
            self.head = before;
        })
    }

    /// What one batch of the writer does in its transaction: the events stored or recognised
    /// as duplicates, their inbox items, the commands applied. Returns the new head and the
    /// outcomes.
    pub(super) fn fill_events(
        &mut self,
        txn: &redb::WriteTransaction,
        batch: &mut BatchInsert<'_>,
        events: &mut [pb::Event],
        commands: &[Command],
    ) -> Result<(u64, Written), redb::Error> {
        let mut head = self.head;
        let mut written = Written {
            appended: Vec::with_capacity(events.len()),
            ..Written::default()
        };
        let mut inbox = InboxWrite::open(txn)?;
        for event in events.iter_mut() {
            let known = batch.ids.get(event.id.as_str())?.map(|v| v.value().0);
            if let Some(position) = known {
                let cursor = self.cursor(position);
                let frame = self.take_in_doubt(&batch.events, position)?;
                if frame.is_some() {
                    event.cursor = cursor.to_string();
                    // Stored by a commit reported failed: delivered now, as new (its item
                    // was stored with it, so this adds nothing twice).
                    if inbox.event_stored(&self.settings.inbox_types, event, position)? {
                        written.muted.push(position);
                    }
                }
                let conflict = frame.is_none() && !stored_is_same(&batch.events, position, event)?;
                written.appended.push(Appended {
                    cursor,
                    duplicate: frame.is_none(),
                    conflict,
                    frame,
                });
                continue;
            }
            head += 1;
            self.in_doubt.remove(&head);
            let cursor = self.cursor(head);
            let frame = batch.insert(head, cursor.to_string(), event)?;
            if inbox.event_stored(&self.settings.inbox_types, event, head)? {
                written.muted.push(head);
            }
            written.appended.push(Appended {
                cursor,
                duplicate: false,
                conflict: false,
                frame: Some(frame),
            });
        }
        for command in commands {
            written.applied.push(inbox.apply(command)?);
        }
        written.updates = std::mem::take(&mut inbox.updates);
        Ok((head, written))
    }

    /// One batch's write transaction, for the writer's appends and a replica's writes alike:
    /// the configured durability, [`Self::fill_batch`], the commit. A failed commit leaves the
    /// positions it wrote in doubt.
    pub(super) fn write_batch<T>(
        &mut self,
        db: &Database,
        now: u64,
        fill: impl FnOnce(
            &mut Self,
            &redb::WriteTransaction,
            &mut BatchInsert<'_>,
        ) -> Result<(u64, T), redb::Error>,
    ) -> Result<T, redb::Error> {
        let txn = self.begin_append(db)?;
        let (positions, head, outcomes, _) = self.fill_batch(&txn, now, false, fill)?;
        if let Err(error) = txn.commit() {
            self.commit_failed(positions);
            return Err(error.into());
        }
        self.head = head;
        Ok(outcomes)
    }

    /// One batch in `txn`, not committed: the head read again after a failed commit, the batch
    /// insert `fill` stores the batch with (it returns the new head and the outcomes), the
    /// dedupe window's upkeep. Returns the positions the batch wrote, the new head (the
    /// journal's own head is left to the caller, for when the batch is committed), the outcomes
    /// and, when `keep`, the records stored.
    pub(super) fn fill_batch<T>(
        &mut self,
        txn: &redb::WriteTransaction,
        now: u64,
        keep: bool,
        fill: impl FnOnce(
            &mut Self,
            &redb::WriteTransaction,
            &mut BatchInsert<'_>,
        ) -> Result<(u64, T), redb::Error>,
    ) -> Result<(std::ops::RangeInclusive<u64>, u64, T, KeptRecords), redb::Error> {
        self.settle_doubt(txn)?;
        let first_new = self.head + 1;
        let mut batch = BatchInsert::open(txn, now)?;
        if keep {
            batch.kept = Some(Vec::new());
        }
        let (head, outcomes) = fill(self, txn, &mut batch)?;
        let kept = batch.finish(txn)?;
        self.forget_old_ids(txn, now)?;
        Ok((first_new..=head, head, outcomes, kept))
    }
}

/// Whether the event stored at `position` is `event` again (a re-send), as opposed to another
/// event under the same id: the same type, user, device and payload. Times, cursor and trace
/// may differ between re-sends (`received_at` always does). Read only for duplicates.
pub(super) fn stored_is_same(
    table: &impl ReadableTable<u64, &'static [u8]>,
    position: u64,
    event: &pb::Event,
) -> Result<bool, redb::Error> {
    let Some(stored) = table.get(position)? else {
        // Pruned meanwhile: nothing to tell it from.
        return Ok(true);
    };
    read_record(stored.value(), |record| is_same(record, event)).or_else(|error| {
        // Nothing to compare: taken for another event, so this one is refused rather than
        // acknowledged as stored.
        tracing::warn!(position, %error, "a journal record does not decode; an event sent again under its id is taken for another one");
        Ok(false)
    })
}

/// Whether `record` holds `event` again (see [`stored_is_same`]).
fn is_same(record: RecordView<'_>, event: &pb::Event) -> bool {
    if (record.event_type, record.user_id, record.device_id)
        != (
            event.r#type.as_str(),
            event.user_id.as_str(),
            event.device_id.as_str(),
        )
    {
        return false;
    }
    let decoded = <pb::SubscribeResponse as prost::Message>::decode(record.frame);
    match decoded.ok().and_then(|frame| frame.kind) {
        Some(pb::subscribe_response::Kind::Event(stored)) => stored.payload == event.payload,
        // A frame that does not decode (see the hub's unreadable events): the routing facts
        // agreed, which is all that can be told.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Known, test_support::*};
    use super::*;
    use crate::store::{Cursor, Journal};

    #[test]
    fn appends_number_stamp_and_dedupe_within_and_across_batches() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        let epoch = journal.head().epoch;
        assert_eq!(journal.head().position, 0);
        let mut batch = vec![event("a", "u1"), event("b", "u2"), event("a", "u1")];
        let out = journal.append(&mut batch).unwrap();
        assert_eq!(
            out.iter()
                .map(|a| (a.cursor.position, a.duplicate))
                .collect::<Vec<_>>(),
            [(1, false), (2, false), (1, true)]
        );
        assert!(out[2].frame.is_none());
        // The new events carry their cursor, inside the stored frame too.
        assert_eq!(batch[0].cursor, Cursor { epoch, position: 1 }.to_string());
        let decoded =
            <pb::SubscribeResponse as prost::Message>::decode(out[0].frame.clone().unwrap())
                .unwrap();
        assert!(matches!(
            decoded.kind,
            Some(pb::subscribe_response::Kind::Event(e)) if e.cursor == batch[0].cursor
        ));
        let out = journal
            .append(&mut [event("b", "u2"), event("c", "u3")])
            .unwrap();
        assert_eq!((out[0].cursor.position, out[0].duplicate), (2, true));
        assert_eq!((out[1].cursor.position, out[1].duplicate), (3, false));
    }

    #[test]
    fn a_duplicate_id_of_another_event_is_a_conflict_and_a_re_send_is_not() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        journal.append(&mut [event("a", "u1")]).unwrap();
        let mut resent = event("a", "u1");
        resent.received_at = Some(prost_types::Timestamp {
            seconds: 99,
            nanos: 0,
        });
        let out = journal
            .append(&mut [resent, event("a", "u2"), event("a", "u1")])
            .unwrap();
        assert_eq!(
            out.iter()
                .map(|a| (a.cursor.position, a.duplicate, a.conflict))
                .collect::<Vec<_>>(),
            [(1, true, false), (1, true, true), (1, true, false)]
        );
        let index = journal.id_index();
        let other = event("a", "u2");
        let same = event("a", "u1");
        assert_eq!(
            index.known(&[&same, &other, &event("b", "u1")]).unwrap(),
            [
                Some(Known {
                    position: 1,
                    conflict: false
                }),
                Some(Known {
                    position: 1,
                    conflict: true
                }),
                None
            ]
        );
    }

    #[test]
    fn a_batch_whose_failed_commit_reached_the_file_is_delivered_when_sent_again() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        journal.append(&mut [event("a", "u1")]).unwrap();
        // A commit that reported failure after its pages reached the file: stored, but its
        // submitters were told it failed, and the writer's head went back.
        let landed = journal
            .append(&mut [event("b", "u1"), event("c", "u1")])
            .unwrap();
        journal.head = 1;
        journal.commit_failed(2..=3);
        // Sent again (the ingest's retry): delivered as new, at the positions it has, from the
        // stored records; then a new event goes after them, overwriting nothing.
        let mut again = [event("b", "u1"), event("c", "u1"), event("d", "u1")];
        let out = journal.append(&mut again).unwrap();
        assert_eq!(
            out.iter()
                .map(|a| (a.cursor.position, a.duplicate))
                .collect::<Vec<_>>(),
            [(2, false), (3, false), (4, false)]
        );
        assert_eq!(out[0].frame, landed[0].frame);
        assert_eq!(again[1].cursor, landed[1].cursor.to_string());
        // Once delivered, a re-send is a duplicate as usual.
        let out = journal.append(&mut [event("b", "u1")]).unwrap();
        assert!(out[0].duplicate);
        let stored = read_after(journal.reader().as_ref(), 0, 10);
        assert_eq!(
            stored.iter().map(|e| e.position).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn positions_of_a_failed_commit_that_did_not_reach_the_file_are_given_again() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        journal.append(&mut [event("a", "u1")]).unwrap();
        // Positions 2 and 3 were written by a failed commit that did not land.
        journal.commit_failed(2..=3);
        let out = journal.append(&mut [event("x", "u1")]).unwrap();
        assert_eq!((out[0].cursor.position, out[0].duplicate), (2, false));
        assert!(journal.in_doubt.is_empty(), "{:?}", journal.in_doubt);
    }

    /// The first record format held an id, type, user or device of at most 64 KiB (16-bit
    /// lengths) and refused longer ones; a record now holds them whole, never clipped.
    #[test]
    fn an_event_with_long_fields_is_stored_whole_not_clipped() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        let long = |c: &str| c.repeat(usize::from(u16::MAX) + 1);
        let mut wide = event(&long("i"), &long("u"));
        wide.r#type = long("t");
        wide.device_id = long("d");
        journal.append(&mut [event("ok", "u1"), wide]).unwrap();
        let stored = read_after(&*journal.reader(), 0, 10);
        assert_eq!(stored.len(), 2);
        assert_eq!(
            (
                &*stored[1].event_type,
                &*stored[1].user_id,
                &*stored[1].device_id
            ),
            (&*long("t"), &*long("u"), &*long("d"))
        );
        assert_eq!(journal.positions_of(&[&long("i")]).unwrap(), [Some(2)]);
        let out = journal.append(&mut [event(&long("i"), "u1")]).unwrap();
        assert!(out[0].duplicate && out[0].conflict, "{out:?}");
    }

    #[test]
    fn ids_older_than_the_dedupe_window_are_forgotten() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(dir.settings(Duration::from_millis(1))).unwrap();
        let t0 = crate::store::unix_millis();
        journal.append_at(&mut [event("a", "u1")], t0).unwrap();
        // Within the window, "a" is a duplicate.
        assert!(journal.append_at(&mut [event("a", "u1")], t0).unwrap()[0].duplicate);
        // This commit, 5 ms later, forgets "a" (older than the window) after storing "b".
        journal.append_at(&mut [event("b", "u1")], t0 + 5).unwrap();
        let out = journal.append_at(&mut [event("a", "u1")], t0 + 5).unwrap();
        assert!(
            !out[0].duplicate,
            "a re-send past the window is stored again"
        );
        assert_eq!(out[0].cursor.position, 3);
    }

    /// A record that does not decode (written here by hand: only a bug or damage past redb's
    /// checksums makes one) does not stop the writer: later appends go on, the window passes
    /// it, a re-send of its id is refused as a conflict; a scan over it reports it.
    #[test]
    fn a_record_that_does_not_decode_stops_the_scans_over_it_not_the_writer() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(dir.settings(Duration::from_millis(1))).unwrap();
        let t0 = crate::store::unix_millis();
        journal
            .append_at(&mut [event("a", "u1"), event("b", "u1")], t0)
            .unwrap();
        // Field 3 (the type) says 100 bytes follow; two do.
        overwrite_record(&journal, 1, &[0x1a, 100, b'x', b'y']);
        let error = scan_after(&*journal.reader(), 0, 10).unwrap_err();
        assert!(
            matches!(error, StoreError::Corrupt { position: 1, .. }),
            "{error:?}"
        );
        let out = journal.append_at(&mut [event("a", "u1")], t0).unwrap();
        assert!(out[0].duplicate && out[0].conflict, "{out:?}");
        // Past the window: the commit's upkeep passes position 1 and forgets "b".
        journal.append_at(&mut [event("c", "u1")], t0 + 5).unwrap();
        let out = journal.append_at(&mut [event("b", "u1")], t0 + 5).unwrap();
        assert!(!out[0].duplicate, "{out:?}");
        assert_eq!(journal.head().position, 4);
    }
}
