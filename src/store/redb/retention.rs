//! Retention: removing what `--retention-age` and `--retention-bytes` no longer keep, beside the
//! writer (redb serialises the two write transactions).
//!
//! Owns: which of the oldest events go, the floor that tells a resume from below it that it has
//! a gap, the ids of removed events, their inbox items (and those items' counts). Does not own: the dedupe window (`append.rs`; retention only
//! raises its floor past what it removed), or when pruning runs (`app`).
//!
//! A record that does not decode (only a bug or damage past redb's checksums) has no age to
//! read: it counts as expired, so retention removes it once it is the oldest (every scan over
//! it fails until then), and logs it. Its id cannot be read either, so its entry in `ids` stays.

use std::{sync::Arc, time::Duration};

use redb::{Database, ReadableTable as _};

use super::{
    BYTES, DEDUPE_FLOOR, EVENTS, FLOOR, IDS, META, RedbJournal, inbox::InboxWrite,
    record::read_record,
};
use crate::store::{StoreError, file::JournalFile};

/// How long and how much the journal keeps (`--retention-age`, `--retention-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Events older than this are removed.
    pub max_age: Duration,
    /// The oldest events are removed while the records take more than this.
    pub max_bytes: u64,
}

/// Removes what retention no longer keeps; runs beside the writer (redb serialises the two
/// write transactions).
pub struct Pruner {
    file: Arc<JournalFile>,
    retention: RetentionSettings,
}

/// What retention needs of a record it removes.
struct Removed {
    id: String,
    event_type: String,
    user_id: String,
}

/// Events removed per transaction, so pruning a large backlog never holds the writer long.
const PRUNE_BATCH: usize = 4096;

impl RedbJournal {
    /// The pruner for `retention`, to run in the background.
    pub fn pruner(&self, retention: RetentionSettings) -> Pruner {
        Pruner {
            file: Arc::clone(&self.file),
            retention,
        }
    }
}

impl Pruner {
    /// Removes one batch of expired events as of `now_ms`; returns how many it removed (call
    /// again while it returns a full batch).
    ///
    /// # Errors
    ///
    /// Storage failures.
    pub fn prune_once(&self, now_ms: u64) -> Result<usize, StoreError> {
        // Retention runs while the disk is full too: the pages it frees are what the next
        // events are written into. A failure reopens the file, as the writer's does.
        self.file
            .write_into_reserve(true, |db| self.prune_in(db, now_ms))
    }

    fn prune_in(&self, db: &Database, now_ms: u64) -> Result<usize, redb::Error> {
        let max_age = u64::try_from(self.retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(max_age);
        let txn = db.begin_write()?;
        let mut removed = 0;
        {
            let mut meta = txn.open_table(META)?;
            let mut events = txn.open_table(EVENTS)?;
            let mut ids = txn.open_table(IDS)?;
            let mut bytes = meta.get(BYTES)?.map_or(0, |v| v.value());
            let mut floor = meta.get(FLOOR)?.map_or(0, |v| v.value());
            let mut doomed = Vec::new();
            for entry in events.range(floor + 1..)?.take(PRUNE_BATCH) {
                let (position, record) = entry?;
                let (position, value) = (position.value(), record.value());
                let read = read_record(value, |record| {
                    (
                        record.appended_ms < cutoff,
                        Removed {
                            id: record.id.to_owned(),
                            event_type: record.event_type.to_owned(),
                            user_id: record.user_id.to_owned(),
                        },
                    )
                });
                let (too_old, gone) = match read {
                    Ok((too_old, gone)) => (too_old, Some(gone)),
                    Err(error) => {
                        tracing::warn!(position, %error, "a journal record does not decode; retention removes it as the oldest");
                        (true, None)
                    }
                };
                let too_big = bytes > self.retention.max_bytes;
                if !too_old && !too_big {
                    break;
                }
                bytes = bytes.saturating_sub(value.len() as u64);
                doomed.push((position, gone));
            }
            let mut inbox = InboxWrite::open(&txn)?;
            for (position, gone) in &doomed {
                events.remove(*position)?;
                if let Some(Removed {
                    id,
                    event_type,
                    user_id,
                }) = gone
                {
                    let points_here = ids
                        .get(id.as_str())?
                        .is_some_and(|v| v.value().0 == *position);
                    if points_here {
                        ids.remove(id.as_str())?;
                    }
                    // The event's state goes with it.
                    inbox.event_removed(*position, event_type, user_id, id)?;
                }
                floor = *position;
                removed += 1;
            }
            if removed > 0 {
                meta.insert(FLOOR, floor)?;
                meta.insert(BYTES, bytes)?;
                let dedupe_floor = meta.get(DEDUPE_FLOOR)?.map_or(0, |v| v.value());
                if dedupe_floor < floor {
                    meta.insert(DEDUPE_FLOOR, floor)?;
                }
            }
        }
        if removed == 0 {
            // Nothing to write: no commit, which on a full disk could only fail.
            txn.abort()?;
            return Ok(0);
        }
        txn.commit()?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::store::Journal as _;

    /// A journal holding "a" and "b" (positions 1 and 2), appended at the time returned.
    fn a_and_b_appended_now() -> (TestDir, RedbJournal, u64) {
        let dir = TestDir::new();
        let mut journal = dir.open();
        let t0 = crate::store::unix_millis();
        journal
            .append_at(&mut [event("a", "u1"), event("b", "u1")], t0)
            .unwrap();
        (dir, journal, t0)
    }

    #[test]
    fn retention_removes_the_oldest_by_age_and_by_size_and_raises_the_floor() {
        let (dir, mut journal, t0) = a_and_b_appended_now();
        journal
            .append_at(&mut [event("c", "u1"), event("d", "u1")], t0 + 10_000)
            .unwrap();
        let reader = journal.reader();
        // By age: 5 s of retention at t0 + 12 s removes a and b only.
        let by_age = journal.pruner(RetentionSettings {
            max_age: Duration::from_secs(5),
            max_bytes: u64::MAX,
        });
        assert_eq!(by_age.prune_once(t0 + 12_000).unwrap(), 2);
        assert_eq!(by_age.prune_once(t0 + 12_000).unwrap(), 0);
        assert_eq!(reader.floor().unwrap(), 2);
        assert_eq!(
            read_after(&*reader, 0, 10)
                .iter()
                .map(|e| e.position)
                .collect::<Vec<_>>(),
            [3, 4]
        );
        // A pruned id is forgotten: a re-send is stored again.
        let out = journal
            .append_at(&mut [event("a", "u1")], t0 + 12_000)
            .unwrap();
        assert!(!out[0].duplicate);
        // By size: keep at most about one record.
        let record_len = read_after(&*reader, 4, 1)[0].frame.len() as u64 + 64;
        let by_size = journal.pruner(RetentionSettings {
            max_age: Duration::from_secs(3600),
            max_bytes: record_len,
        });
        assert_eq!(by_size.prune_once(t0 + 12_000).unwrap(), 2);
        assert_eq!(reader.floor().unwrap(), 4);
        assert_eq!(read_after(&*reader, 0, 10).len(), 1);
        // The floor and head survive a reopen.
        drop((reader, by_age, by_size));
        let head = journal.head();
        drop(journal);
        let journal = dir.open();
        assert_eq!(journal.head(), head);
        assert_eq!(journal.reader().floor().unwrap(), 4);
    }

    /// A record that does not decode has no age to read: retention removes it once it is the
    /// oldest, and the scans over it, which it stopped, read again.
    #[test]
    fn retention_removes_a_record_that_does_not_decode_once_it_is_the_oldest() {
        let (_dir, journal, t0) = a_and_b_appended_now();
        // Field 1 (the append time) with the wire type of a string.
        overwrite_record(&journal, 1, &[0x0a, 0x00]);
        assert!(scan_after(&*journal.reader(), 0, 10).is_err());
        let pruner = journal.pruner(RetentionSettings {
            max_age: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        });
        assert_eq!(pruner.prune_once(t0).unwrap(), 1);
        let read = scan_after(&*journal.reader(), 0, 10).unwrap();
        assert_eq!(
            (
                read.floor,
                read.events.iter().map(|e| e.position).collect::<Vec<_>>()
            ),
            (1, vec![2])
        );
    }
}
