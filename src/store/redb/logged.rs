//! The logged commit (`--checkpoint-interval`, with `--durability fsync`): the writer's batch
//! is written into a transaction that stays open for the batches after it, and made durable by
//! one record in the commit log (`wal.rs`); the transaction is committed to `journal.redb`
//! with an fsync (a checkpoint) once per interval, after [`MAX_OPEN_EVENTS`] events, with a
//! batch of [`LOG_BELOW`] events or more, before anyone else writes the file or reads what the
//! transaction holds, and by the probe when the writer is quiet. The batch that triggers a
//! checkpoint is not logged: its commit makes it durable with the rest.
//!
//! Owns: when a batch is logged and when the transaction is committed; applying the log to
//! the file at open and after a transaction was lost. Does not own: the log's format
//! (`wal.rs`), what a batch does to the tables (`append.rs`, the same code either way), the
//! open transaction's slot and committing it for others (`file.rs`).
//!
//! What holds as before: a batch is answered only once it is durable (in the log or the file);
//! readers see every answered batch (the file commits the open transaction before any read);
//! opening the journal after a crash applies every logged batch the file lacks, through the
//! writer's own code, so positions, dedupe and inbox rows come out as they were answered.
//! A batch whose log write failed may have reached the log: its positions are in doubt, as
//! after a failed commit (`append.rs`).

use std::{sync::Arc, time::Instant};

use redb::{Database, ReadableTable};

use super::{META, OpenCause, RedbJournal, WAL_SEQ, engine, wal::Wal};
use crate::store::file::OpenBatches;
use crate::{
    pb,
    store::{StoreError, Written},
};

/// The most events the open transaction takes before it is committed: bounds the memory of its
/// dirty pages, what a crash leaves to apply from the log, and how long one checkpoint holds
/// the writer up. At 500 events/s the interval comes first; at 1,750/s this.
pub(super) const MAX_OPEN_EVENTS: usize = 64;

/// A batch this large is committed, with the ones before it, instead of logged: its commit is
/// shared by enough events, and under such load a checkpoint of many batches would hold the
/// writer up for longer than the commits it saves (BENCHMARKS.md §19).
const LOG_BELOW: usize = 32;

impl RedbJournal {
    /// Whether batches are logged.
    pub(super) fn logging(&self) -> bool {
        self.wal.is_some()
    }

    /// At open: applies what an earlier run logged and `journal.redb` lacks, then keeps the log
    /// open if batches are to be logged, or removes it.
    pub(super) fn open_log(&mut self, log: bool) -> Result<(), OpenCause> {
        let path = self.settings.dir.join("journal.wal");
        if !log && !path.exists() {
            return Ok(());
        }
        self.wal = Some(Wal::open(&path).map_err(OpenCause::Log)?);
        let db = self.file.current_db().map_err(OpenCause::Store)?;
        let applied = self.apply_log(&db)?;
        if applied > 0 {
            tracing::info!(
                batches = applied,
                "applied the batches of the commit log (journal.wal) that journal.redb lacked"
            );
        }
        if !log {
            self.wal = None;
            std::fs::remove_file(&path).map_err(OpenCause::Dir)?;
        }
        Ok(())
    }

    /// Applies the logged batches `journal.redb` lacks (those after its `wal_seq`), in one
    /// commit with an fsync, then starts the log over. Returns how many were applied.
    ///
    /// Positions in doubt (a batch whose log write failed may be among the records) stay in
    /// doubt if the log had them: sent again, they are delivered as new (`append.rs`).
    fn apply_log(&mut self, db: &Database) -> Result<usize, OpenCause> {
        let doubt = std::mem::take(&mut self.in_doubt);
        let applied = self.apply_log_in(db);
        // Whatever happened, the head is read from the file again before the next write.
        self.head_in_doubt = applied.is_err();
        let head = self.head;
        self.in_doubt = doubt
            .into_iter()
            .filter(|&position| applied.is_err() || position <= head)
            .collect();
        applied
    }

    fn apply_log_in(&mut self, db: &Database) -> Result<usize, OpenCause> {
        let Some(wal) = self.wal.as_ref() else {
            return Ok(0);
        };
        let txn = db.begin_write().map_err(engine)?;
        let applied_seq = txn
            .open_table(META)
            .map_err(engine)?
            .get(WAL_SEQ)
            .map_err(engine)?
            .map_or(0, |v| v.value());
        let batches = wal.read(self.epoch, applied_seq).map_err(OpenCause::Log)?;
        if let Some(first) = batches.first()
            && first.seq != applied_seq + 1
        {
            // Batches between are missing: a log and a file of different moments (copied
            // apart?). Applying would put events at positions they were not answered with.
            return Err(OpenCause::LogMismatch {
                file: applied_seq,
                log: first.seq,
            });
        }
        // The head as the file has it, not as the writer last answered.
        self.head_in_doubt = true;
        self.settle_doubt(&txn).map_err(engine)?;
        let mut last = applied_seq;
        let count = batches.len();
        for batch in batches {
            let mut events = batch.events;
            let (_, head, _, _) = self
                .fill_batch(&txn, batch.now, false, |journal, txn, insert| {
                    journal.fill_events(txn, insert, &mut events, &[])
                })
                .map_err(engine)?;
            self.head = head;
            last = batch.seq;
        }
        // A sequence number given to a batch whose log write failed is never given again.
        let last = last.max(self.wal_seq);
        txn.open_table(META)
            .map_err(engine)?
            .insert(WAL_SEQ, last)
            .map_err(engine)?;
        txn.commit().map_err(engine)?;
        self.wal_seq = last;
        if let Some(wal) = self.wal.as_mut() {
            wal.start_over();
        }
        Ok(count)
    }

    /// Before a write that is not logged (commands): a lost transaction's batches applied from
    /// the log first.
    pub(super) fn apply_lost_batches(&mut self) -> Result<(), StoreError> {
        let file = Arc::clone(&self.file);
        let mut open = file.open_batches();
        let db = file.writable_db()?;
        self.apply_lost_locked(&mut open, db)
    }

    /// With the open transaction's lock held: if a transaction was lost (here or on a handle
    /// given up since), its batches applied from the log.
    fn apply_lost_locked(
        &mut self,
        open: &mut OpenBatches,
        db: Arc<Database>,
    ) -> Result<(), StoreError> {
        if open.db.as_ref().is_some_and(|open| !Arc::ptr_eq(open, &db)) {
            open.lose();
        }
        if !open.lost {
            return Ok(());
        }
        // Not into the reserve: after a full disk, applying waits for room like any write.
        self.file.check_space()?;
        match self.apply_log(&db) {
            Ok(applied) => {
                open.lost = false;
                open.records.clear();
                tracing::info!(
                    batches = applied,
                    "applied the commit log (journal.wal) again after a failed commit"
                );
                Ok(())
            }
            Err(OpenCause::Engine(error)) => Err(self.file.failed(db, error, true)),
            Err(other) => Err(StoreError::Unavailable(format!(
                "applying the commit log (journal.wal) failed: {other}"
            ))),
        }
    }

    /// The writer's batch of events, logged (see the module's comment).
    pub(super) fn write_logged(
        &mut self,
        events: &mut [pb::Event],
        now: u64,
    ) -> Result<Written, StoreError> {
        let file = Arc::clone(&self.file);
        file.check_space()?;
        let mut open = file.open_batches();
        let db = file.writable_db()?;
        // Under the same lock as the write: nothing can be lost in between unnoticed.
        self.apply_lost_locked(&mut open, Arc::clone(&db))?;
        let since = open.since.unwrap_or_else(Instant::now);
        // This batch is committed with the ones before it, not logged: it is large enough to
        // be worth a commit of its own, or the transaction is full or old enough.
        let checkpoint = events.len() >= LOG_BELOW
            || open.events + events.len() >= MAX_OPEN_EVENTS
            || since.elapsed() >= self.settings.checkpoint_interval;
        let txn = match open.txn.take() {
            Some(txn) => txn,
            None => {
                // Every batch before is in the file: the log starts over.
                if let Some(wal) = self.wal.as_mut() {
                    wal.start_over();
                }
                db.begin_write()
                    .map_err(|error| file.failed(Arc::clone(&db), error.into(), true))?
            }
        };
        open.db = None;
        let seq = self.wal_seq + 1;
        let filled = self
            .fill_batch(&txn, now, !checkpoint, |journal, txn, insert| {
                journal.fill_events(txn, insert, events, &[])
            })
            .and_then(|filled| {
                if !checkpoint {
                    txn.open_table(META)?.insert(WAL_SEQ, seq)?;
                }
                Ok(filled)
            });
        let (positions, head, written, records) = match filled {
            Ok(filled) => filled,
            Err(error) => {
                // The batches before this one go with the transaction: from the log again.
                open.txn = Some(txn);
                open.lose();
                return Err(file.failed(db, error, true));
            }
        };
        if checkpoint {
            // With an fsync: this batch and the logged ones before it.
            let earlier = open.events;
            open.events = 0;
            open.since = None;
            if let Err(error) = txn.commit() {
                // The earlier batches' records stay for readers (see `OpenBatches::records`).
                self.commit_failed(positions);
                open.lost = earlier > 0;
                return Err(file.failed(db, error.into(), true));
            }
            open.records.clear();
            self.head = head;
            file.wrote();
            return Ok(written);
        }
        let Some(wal) = self.wal.as_mut() else {
            return Err(StoreError::Unavailable("the commit log is not open".into()));
        };
        // Never given again, whether or not the record lands.
        self.wal_seq = seq;
        if let Err(error) = wal.append(seq, self.epoch, now, events) {
            // The record may have reached the log: the batch is in doubt, and applying the log
            // decides (with the batches before it, which go with the transaction).
            self.commit_failed(positions);
            open.txn = Some(txn);
            open.events += events.len();
            open.lose();
            open.lost = true;
            let error = Arc::new(error);
            file.log_failed(&error);
            return Err(StoreError::CommitLog(error));
        }
        open.txn = Some(txn);
        open.db = Some(db);
        open.since = Some(since);
        open.events += events.len();
        open.records.extend(records);
        self.head = head;
        file.wrote();
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{JournalSettings, test_support::*};
    use super::*;
    use crate::store::Journal;

    fn logged(dir: &TestDir, interval: Duration) -> JournalSettings {
        JournalSettings {
            checkpoint_interval: interval,
            ..dir.settings(Duration::from_secs(3600))
        }
    }

    /// What a crash leaves: batches answered from the log, never committed to the file (as
    /// after `kill -9`): the open transaction aborted.
    fn crash(journal: RedbJournal) {
        let txn = journal.file.open_batches().txn.take();
        assert!(txn.is_some(), "the batches were not left open");
        // Aborted: the file keeps only what was committed; the journal's own checkpoint at
        // drop finds nothing left.
        drop(txn);
        drop(journal);
    }

    #[test]
    fn batches_answered_from_the_log_survive_a_crash_with_their_positions_and_inbox() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        let epoch = journal.head().epoch;
        journal.append(&mut [event("a", "u1")]).unwrap();
        let out = journal
            .append(&mut [event("b", "u2"), event("a", "u1")])
            .unwrap();
        assert!(out[1].duplicate);
        let frames: Vec<_> = out.iter().map(|a| a.frame.clone()).collect();
        crash(journal);
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        assert_eq!(journal.head(), crate::store::Cursor { epoch, position: 2 });
        let stored = read_after(journal.reader().as_ref(), 0, 10);
        assert_eq!(
            stored.iter().map(|e| e.position).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(Some(stored[1].frame.clone()), frames[0]);
        // The dedupe remembers them, and the next position follows.
        let out = journal
            .append(&mut [event("b", "u2"), event("c", "u1")])
            .unwrap();
        assert!(out[0].duplicate);
        assert_eq!(out[1].cursor.position, 3);
        // The inbox rows came back with them.
        let inbox = journal.reader();
        let counts = inbox
            .inbox()
            .unwrap()
            .counts(&crate::inbox::InboxKey::user("u1"))
            .unwrap();
        assert_eq!(counts.total().unread, 2, "{counts:?}");
    }

    #[test]
    fn readers_see_every_answered_batch_before_the_checkpoint() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        let reader = journal.reader();
        journal.append(&mut [event("a", "u1")]).unwrap();
        assert!(journal.file.open_batches().txn.is_some());
        assert_eq!(read_after(reader.as_ref(), 0, 10).len(), 1);
        // The read committed it; the next batch opens a new transaction and the log starts
        // over.
        assert!(journal.file.open_batches().txn.is_none());
        journal.append(&mut [event("b", "u1")]).unwrap();
        assert!(journal.wal.as_ref().is_some_and(|wal| !wal.is_empty()));
        assert_eq!(read_after(reader.as_ref(), 0, 10).len(), 2);
    }

    /// A replay that reads up to where it joined the live stream needs nothing from the open
    /// transaction when its events all come after that: it reads the file, and the writer's
    /// transaction stays open.
    #[test]
    fn a_read_below_the_open_batches_leaves_them_open() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        let reader = journal.reader();
        journal.append(&mut [event("a", "u1")]).unwrap();
        assert_eq!(read_after(reader.as_ref(), 0, 10).len(), 1);
        journal.append(&mut [event("b", "u1")]).unwrap();
        let limits = |until| crate::store::ScanLimits {
            until,
            max_scanned: 10,
            max_selected: 10,
            max_bytes: usize::MAX,
        };
        let scan = reader.scan(0, limits(1), &|_| true).unwrap();
        assert_eq!(scan.events.len(), 1);
        assert!(journal.file.open_batches().txn.is_some());
        // Up to the open batch's position: committed first, and read.
        let scan = reader.scan(0, limits(2), &|_| true).unwrap();
        assert_eq!(scan.events.len(), 2);
        assert!(journal.file.open_batches().txn.is_none());
    }

    #[test]
    fn the_batch_that_reaches_the_limit_is_committed_not_logged() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        let mut batch: Vec<_> = (0..MAX_OPEN_EVENTS)
            .map(|i| event(&format!("e{i}"), "u1"))
            .collect();
        journal.append(&mut batch).unwrap();
        assert!(journal.file.open_batches().txn.is_none());
        assert!(journal.wal.as_ref().is_some_and(Wal::is_empty));
        // An interval of zero commits every batch.
        drop(journal);
        let mut journal = RedbJournal::open(logged(&dir, Duration::ZERO)).unwrap();
        assert!(!journal.logging());
        assert!(!dir.journal().join("journal.wal").exists());
        journal.append(&mut [event("x", "u1")]).unwrap();
        assert!(journal.file.open_batches().txn.is_none());
        assert_eq!(journal.head().position, MAX_OPEN_EVENTS as u64 + 1);
    }

    /// Commands are committed to the file at once, after the logged batches before them; a
    /// crash then replays nothing twice.
    #[test]
    fn commands_commit_the_logged_batches_before_them() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        journal
            .append(&mut [event("a", "u1"), event("b", "u1")])
            .unwrap();
        let inbox = crate::inbox::InboxKey::user("u1");
        let written = journal
            .write(
                &mut [],
                &[crate::inbox::Command::Mark {
                    inbox: inbox.clone(),
                    mark: crate::inbox::Mark::Read,
                    target: crate::inbox::Target::All,
                }],
            )
            .unwrap();
        assert_eq!(written.applied.len(), 1);
        journal.append(&mut [event("c", "u1")]).unwrap();
        crash(journal);
        let journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        assert_eq!(journal.head().position, 3);
        let counts = journal.reader().inbox().unwrap().counts(&inbox).unwrap();
        assert_eq!(counts.total().unread, 1, "{counts:?}");
    }

    /// A failed log write answers the batch with an error and loses the open transaction: the
    /// batches answered before it come back from the log before anything reads or writes, and
    /// the failed batch's positions are given again (its record did not land).
    #[test]
    fn a_failed_log_write_is_an_error_and_the_batches_before_it_come_back_from_the_log() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        let reader = journal.reader();
        journal.append(&mut [event("z", "u1")]).unwrap();
        // In the file (the read commits it); then "a" only in the open transaction.
        assert_eq!(read_after(reader.as_ref(), 0, 10).len(), 1);
        journal.append(&mut [event("a", "u1")]).unwrap();
        journal.wal.as_mut().unwrap().fail_appends();
        let error = journal.append(&mut [event("b", "u1")]).unwrap_err();
        assert!(matches!(error, StoreError::CommitLog(_)), "{error:?}");
        assert!(journal.file.open_batches().lost);
        assert!(matches!(
            *journal.health().borrow(),
            crate::store::JournalHealth::Failed { .. }
        ));
        // "a" is only in the log now: readers read its record from memory, and other writers
        // wait.
        let kept = read_after(reader.as_ref(), 0, 10);
        assert_eq!(kept.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2]);
        let back = reader
            .scan_back(
                u64::MAX,
                crate::store::BackLimits {
                    max_scanned: 10,
                    max_selected: 10,
                    max_bytes: usize::MAX,
                },
                &|_| true,
            )
            .unwrap();
        assert_eq!(
            back.events.iter().map(|e| e.position).collect::<Vec<_>>(),
            [2, 1]
        );
        assert!(journal.file.checkpoint().is_err());
        journal.wal.as_mut().unwrap().heal();
        let out = journal
            .append(&mut [event("c", "u1"), event("b", "u1")])
            .unwrap();
        assert_eq!(
            out.iter()
                .map(|a| (a.cursor.position, a.duplicate))
                .collect::<Vec<_>>(),
            [(3, false), (4, false)]
        );
        assert!(matches!(
            *journal.health().borrow(),
            crate::store::JournalHealth::Writable
        ));
        let stored = read_after(reader.as_ref(), 0, 10);
        assert_eq!(
            stored.iter().map(|e| e.position).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
    }

    /// A log write that failed after its record reached the log: the record is applied with
    /// the log, so the batch is stored though it was answered with an error; sent again, it
    /// is delivered as new, from what was stored, not taken for a duplicate nobody was given.
    #[test]
    fn a_batch_whose_failed_log_write_reached_the_log_is_delivered_when_sent_again() {
        let dir = TestDir::new();
        let mut journal = RedbJournal::open(logged(&dir, Duration::from_secs(3600))).unwrap();
        journal.append(&mut [event("a", "u1")]).unwrap();
        journal.wal.as_mut().unwrap().fail_after_writing();
        let error = journal.append(&mut [event("b", "u1")]).unwrap_err();
        assert!(matches!(error, StoreError::CommitLog(_)), "{error:?}");
        let out = journal
            .append(&mut [event("b", "u1"), event("c", "u1")])
            .unwrap();
        assert_eq!(
            out.iter()
                .map(|a| (a.cursor.position, a.duplicate, a.frame.is_some()))
                .collect::<Vec<_>>(),
            [(2, false, true), (3, false, true)]
        );
        // Once delivered, a re-send is a duplicate as usual.
        assert!(journal.append(&mut [event("b", "u1")]).unwrap()[0].duplicate);
        let stored = read_after(journal.reader().as_ref(), 0, 10);
        assert_eq!(
            stored.iter().map(|e| e.position).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }

    /// Applying the log after a crash stores the inbox items the writer's `--inbox-types`
    /// made, not the default ones.
    #[test]
    fn a_crash_replay_keeps_the_configured_inbox_types() {
        let dir = TestDir::new();
        let settings = || JournalSettings {
            inbox_types: crate::inbox::InboxSettings::parse("billing.*").unwrap(),
            ..logged(&dir, Duration::from_secs(3600))
        };
        let mut journal = RedbJournal::open(settings()).unwrap();
        journal.append(&mut [event("a", "u1")]).unwrap();
        crash(journal);
        let journal = RedbJournal::open(settings()).unwrap();
        assert_eq!(journal.head().position, 1);
        let counts = journal
            .reader()
            .inbox()
            .unwrap()
            .counts(&crate::inbox::InboxKey::user("u1"))
            .unwrap();
        assert_eq!(counts.total().total, 0, "{counts:?}");
    }

    /// A log and a file of different moments (the file copied before batches the log holds
    /// after others it lacks) do not open: applying would store events at positions they were
    /// not answered with.
    #[test]
    fn a_log_that_does_not_follow_the_file_stops_the_open() {
        let dir = TestDir::new();
        let settings = || logged(&dir, Duration::from_secs(3600));
        let mut journal = RedbJournal::open(settings()).unwrap();
        journal.append(&mut [event("a", "u1")]).unwrap();
        crash(journal);
        let file = dir.journal().join("journal.redb");
        let old = dir.journal().join("old.redb");
        std::fs::copy(&file, &old).unwrap();
        let mut journal = RedbJournal::open(settings()).unwrap();
        journal.append(&mut [event("b", "u1")]).unwrap();
        crash(journal);
        std::fs::rename(&old, &file).unwrap();
        let error = RedbJournal::open(settings()).unwrap_err();
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause.is_some_and(|cause| cause.contains("does not follow")),
            "{error:?}"
        );
    }
}
