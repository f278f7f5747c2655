//! A stream's replica: a journal whose positions and epoch come from elsewhere (the RabbitMQ
//! stream of cluster mode) instead of being assigned here, and the id index cluster mode's
//! writer dedupes with. Reads (replay, history, dedupe) are the same as a single node's.
//!
//! Owns: taking the stream's epoch, storing events at the stream's positions, skipping what
//! the stream lost, looking ids up. Does not own: the batch write and the dedupe window's
//! upkeep (`append.rs`, shared with the writer), or reading the stream (`cluster`).

use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase as _, ReadableTable as _};

use super::{
    BYTES, DEDUPE_FLOOR, EPOCH, EVENTS, FLOOR, IDS, META, REPLICA_HEAD, RedbJournal,
    append::stored_is_same, inbox::InboxWrite, read_failed,
};
use crate::{
    inbox::{Applied, Command, Update},
    pb,
    store::{StoreError, file::JournalFile},
};

/// What the inbox commands of one [`RedbJournal::replicate_with_inbox`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaInbox {
    /// Per command, in order: its outcome, or `None` for one applied before.
    pub applied: Vec<Option<Applied>>,
    /// The positions of new events whose type their user disabled.
    pub muted: Vec<u64>,
    /// What the inboxes' owners' streams are told, in order.
    pub updates: Vec<Update>,
}

/// What became of one event handed to [`RedbJournal::replicate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replicated {
    /// Stored at its position; the frame to send (cursor stamped).
    Stored(Bytes),
    /// The replica had this position already (read again after a restart).
    AlreadyHave,
    /// Its id was stored before, at this position: the stream holds it twice, subscribers get
    /// it once.
    Duplicate(u64),
}

impl RedbJournal {
    /// The epoch this journal's cursors carry.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Makes this the replica of a stream whose epoch is `epoch`. A journal of another epoch
    /// (another stream, or this one deleted and re-created) is emptied first; returns whether it
    /// was.
    pub fn adopt_epoch(&mut self, epoch: u64) -> Result<bool, StoreError> {
        if self.epoch == epoch {
            return Ok(false);
        }
        self.file.write(true, |db| {
            let txn = db.begin_write()?;
            {
                txn.delete_table(EVENTS)?;
                txn.delete_table(IDS)?;
                txn.open_table(EVENTS)?;
                txn.open_table(IDS)?;
                // The inboxes are derived from the stream too (its events and commands).
                super::inbox::delete_all(&txn)?;
                let mut meta = txn.open_table(META)?;
                for key in [FLOOR, DEDUPE_FLOOR, BYTES] {
                    meta.remove(key)?;
                }
                meta.insert(EPOCH, epoch)?;
            }
            Ok(txn.commit()?)
        })?;
        self.epoch = epoch;
        self.head = 0;
        Ok(true)
    }

    /// Stores events read from the stream at their positions (ascending; gaps allowed, for
    /// positions that carry no event), and moves the head to at least `through` (the last
    /// position read, event or not). Positions at or below the head are skipped (read again after
    /// a restart); an id already stored is reported as a duplicate and not stored again. One
    /// write transaction for the lot.
    pub fn replicate(
        &mut self,
        events: &mut [(u64, pb::Event)],
        through: u64,
    ) -> Result<Vec<Replicated>, StoreError> {
        self.replicate_with_inbox(events, &[], through)
            .map(|(outcomes, _)| outcomes)
    }

    /// [`Self::replicate`] with the inbox commands read from the stream at their positions
    /// (ascending): each is applied in position order with the events around it, in the same
    /// transaction, so every node derives the same state; a command at or below the head was
    /// applied before (read again after a restart) and is skipped (`None` in
    /// [`ReplicaInbox::applied`]).
    pub fn replicate_with_inbox(
        &mut self,
        events: &mut [(u64, pb::Event)],
        commands: &[(u64, Command)],
        through: u64,
    ) -> Result<(Vec<Replicated>, ReplicaInbox), StoreError> {
        let now = crate::store::unix_millis();
        let file = Arc::clone(&self.file);
        let before = self.head;
        file.write(true, |db| {
            self.replicate_in(db, events, commands, through, now)
        })
        .inspect_err(|_| self.head = before)
    }

    fn replicate_in(
        &mut self,
        db: &Database,
        events: &mut [(u64, pb::Event)],
        commands: &[(u64, Command)],
        through: u64,
        now: u64,
    ) -> Result<(Vec<Replicated>, ReplicaInbox), redb::Error> {
        self.write_batch(db, now, |journal, txn, batch| {
            let start = journal.head;
            let mut head = start;
            let mut outcomes = Vec::with_capacity(events.len());
            let mut inbox = InboxWrite::open(txn)?;
            let mut replicated = ReplicaInbox::default();
            let mut commands = commands.iter().peekable();
            // Applies the commands before `limit`, in order.
            let mut commands_before =
                |limit: u64, inbox: &mut InboxWrite<'_>, replicated: &mut ReplicaInbox| {
                    while let Some((position, command)) = commands.next_if(|(p, _)| *p < limit) {
                        replicated.applied.push(if *position > start {
                            Some(inbox.apply(command)?)
                        } else {
                            None
                        });
                    }
                    Ok::<_, redb::Error>(())
                };
            for (position, event) in events.iter_mut() {
                let position = *position;
                commands_before(position, &mut inbox, &mut replicated)?;
                if position <= head {
                    outcomes.push(match journal.take_in_doubt(&batch.events, position)? {
                        Some(frame) => {
                            if inbox.event_stored(&journal.settings.inbox_types, event, position)? {
                                replicated.muted.push(position);
                            }
                            Replicated::Stored(frame)
                        }
                        None => Replicated::AlreadyHave,
                    });
                    continue;
                }
                head = position;
                journal.in_doubt.remove(&position);
                if let Some(known) = batch.ids.get(event.id.as_str())? {
                    outcomes.push(Replicated::Duplicate(known.value().0));
                    continue;
                }
                let cursor = journal.cursor(position).to_string();
                let frame = batch.insert(position, cursor, event)?;
                if inbox.event_stored(&journal.settings.inbox_types, event, position)? {
                    replicated.muted.push(position);
                }
                outcomes.push(Replicated::Stored(frame));
            }
            commands_before(u64::MAX, &mut inbox, &mut replicated)?;
            replicated.updates = std::mem::take(&mut inbox.updates);
            drop(inbox);
            let head = head.max(through);
            // The head is kept even when the last positions stored nothing (a barrier, a
            // duplicate, a command), so a restart does not read them again.
            txn.open_table(META)?.insert(REPLICA_HEAD, head)?;
            Ok((head, (outcomes, replicated)))
        })
    }

    /// Skips to `position`: the stream no longer has what lies between the head and it
    /// (retention), so it is gone here too (a resume from before it gets a `Gap`).
    pub fn skip_to(&mut self, position: u64) -> Result<(), StoreError> {
        if position <= self.head {
            return Ok(());
        }
        self.file.write(true, |db| {
            let txn = db.begin_write()?;
            {
                let mut meta = txn.open_table(META)?;
                let floor = meta.get(FLOOR)?.map_or(0, |v| v.value());
                if floor < position {
                    meta.insert(FLOOR, position)?;
                }
                meta.insert(REPLICA_HEAD, position)?;
            }
            Ok(txn.commit()?)
        })?;
        self.head = position;
        Ok(())
    }

    /// Where each id was stored, if it was (and is still remembered): what the tests check of
    /// the dedupe (the writers ask [`IdIndex::known`]). A blocking read.
    #[cfg(test)]
    pub fn positions_of(&self, ids: &[&str]) -> Result<Vec<Option<u64>>, StoreError> {
        self.id_index().positions_of(ids)
    }

    /// A handle on the replica's id index, usable from any thread while it is written.
    pub fn id_index(&self) -> IdIndex {
        IdIndex {
            file: Arc::clone(&self.file),
        }
    }
}

/// An event id the journal has stored: see [`IdIndex::known`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Where.
    pub position: u64,
    /// The stored event is another one than the event asked about.
    pub conflict: bool,
}

/// The id index of a journal: where each remembered event id was stored.
#[derive(Clone)]
pub struct IdIndex {
    file: Arc<JournalFile>,
}

impl IdIndex {
    /// Per event, if its id was stored (and is still remembered): where, and whether the stored
    /// event is another one (see [`crate::store::Appended::conflict`]). A blocking read: call it
    /// off the async workers.
    pub fn known(&self, events: &[&pb::Event]) -> Result<Vec<Option<Known>>, StoreError> {
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(read_failed)?;
        let ids = txn.open_table(IDS).map_err(read_failed)?;
        let table = txn.open_table(EVENTS).map_err(read_failed)?;
        events
            .iter()
            .map(|event| {
                let Some(position) = ids
                    .get(event.id.as_str())
                    .map_err(read_failed)?
                    .map(|v| v.value().0)
                else {
                    return Ok(None);
                };
                let conflict = !stored_is_same(&table, position, event).map_err(read_failed)?;
                Ok(Some(Known { position, conflict }))
            })
            .collect()
    }

    /// Where each id was stored, if it was (and is still remembered). A blocking read: call it
    /// off the async workers.
    #[cfg(test)]
    pub fn positions_of(&self, ids: &[&str]) -> Result<Vec<Option<u64>>, StoreError> {
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(read_failed)?;
        let table = txn.open_table(IDS).map_err(read_failed)?;
        ids.iter()
            .map(|id| {
                table
                    .get(*id)
                    .map(|found| found.map(|v| v.value().0))
                    .map_err(read_failed)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::store::{Cursor, Journal as _};

    /// A stream's replica: positions and epoch come from the stream; holes are fine; what it
    /// has is not stored again; a duplicate id is reported with its first position; another
    /// epoch empties it; all of it survives a reopen.
    #[test]
    fn a_replica_stores_events_at_the_streams_positions() {
        let dir = TestDir::new();
        let mut journal = dir.open();
        assert!(
            journal.adopt_epoch(42).unwrap(),
            "a fresh journal takes the stream's epoch"
        );
        assert!(!journal.adopt_epoch(42).unwrap());
        let mut batch = vec![
            (1, event("a", "u1")),
            (3, event("b", "u1")), // position 2 was a barrier: no event
            (4, event("a", "u1")), // written twice to the stream
        ];
        let out = journal.replicate(&mut batch, 4).unwrap();
        assert!(matches!(&out[0], Replicated::Stored(_)));
        assert!(matches!(&out[1], Replicated::Stored(_)));
        assert_eq!(out[2], Replicated::Duplicate(1));
        assert_eq!(
            journal.head(),
            Cursor {
                epoch: 42,
                position: 4
            }
        );
        assert_eq!(
            batch[1].1.cursor,
            Cursor {
                epoch: 42,
                position: 3
            }
            .to_string()
        );
        let reader = journal.reader();
        assert_eq!(
            read_after(&*reader, 0, 10)
                .iter()
                .map(|e| e.position)
                .collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(
            journal.positions_of(&["a", "b", "c"]).unwrap(),
            [Some(1), Some(3), None]
        );
        // Read again after a restart: nothing stored twice; the head (a duplicate's position)
        // survives the reopen.
        drop((journal, reader));
        let mut journal = dir.open();
        assert_eq!(
            journal.head(),
            Cursor {
                epoch: 42,
                position: 4
            }
        );
        let out = journal.replicate(&mut [(4, event("a", "u1"))], 5).unwrap();
        assert_eq!(out, [Replicated::AlreadyHave]);
        // Position 5 held no event (a barrier): the head moved past it all the same.
        assert_eq!(journal.head().position, 5);
        // The stream lost what lies below 10: skipped, and below the floor.
        journal.skip_to(10).unwrap();
        assert_eq!(journal.reader().floor().unwrap(), 10);
        assert_eq!(journal.head().position, 10);
        // Another epoch: the stream was re-created; the replica starts over.
        assert!(journal.adopt_epoch(7).unwrap());
        assert_eq!(
            journal.head(),
            Cursor {
                epoch: 7,
                position: 0
            }
        );
        assert!(read_after(&*journal.reader(), 0, 10).is_empty());
        assert_eq!(journal.positions_of(&["a"]).unwrap(), [None]);
        assert_eq!(journal.reader().floor().unwrap(), 0);
    }
}
