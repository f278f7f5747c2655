//! The background sync of a `--durability <interval>` journal: its commits skip the fsync, and
//! this makes them durable every interval.
//!
//! Owns: the sync itself. Does not own: when it runs (`app`), or the commits' own durability
//! (`append.rs` sets it per transaction).

use std::{sync::Arc, time::Duration};

use redb::Durability as RedbDurability;

use super::{Durability, RedbJournal};
use crate::store::{StoreError, file::JournalFile};

/// Makes the commits of a `--durability <interval>` journal durable: an empty commit with
/// fsync persists every commit before it.
pub struct Syncer {
    file: Arc<JournalFile>,
}

impl Syncer {
    /// Forces everything committed so far to disk.
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.file.write_into_reserve(true, |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(RedbDurability::Immediate)?;
            Ok(txn.commit()?)
        })
    }
}

impl RedbJournal {
    /// The syncer to run every interval when durability is [`Durability::Interval`].
    pub fn syncer(&self) -> Option<(Syncer, Duration)> {
        match self.settings.durability {
            Durability::EveryCommit => None,
            Durability::Interval(every) => Some((
                Syncer {
                    file: Arc::clone(&self.file),
                },
                every,
            )),
        }
    }
}
