//! The durable journal, in one redb file under `--data-dir`, with a commit log beside it.
//!
//! Why redb: an embedded, pure-Rust B-tree store with ACID transactions, crash safety by
//! copy-on-write and checksummed commits, one writer and many concurrent readers with snapshot
//! isolation — exactly the shape of a journal with one sequencer and many replaying
//! subscribers — and a small dependency tree (no C toolchain, unlike RocksDB; stable file
//! format since 1.0, unlike sled).
//!
//! Layout: `events` maps a position to a record (its id, what routing needs, the encoded
//! `SubscribeResponse` frame with the cursor already stamped, so replay sends stored bytes
//! without re-encoding; a protobuf message, see `record.rs`); `ids` maps an event id to its
//! position and append time, for dedupe; `meta` holds the epoch, the retention floor, the
//! record format and the last logged batch the file holds. One batch from the sequencer is one
//! write transaction: the group commit. With `--checkpoint-interval` (the default) that
//! transaction stays open for the batches of the interval, each made durable by one record in
//! `journal.wal` (`logged.rs`), because a redb commit per batch cost more CPU than everything
//! else an event does at the platform's rates.
//!
//! This file owns the journal's type, its tables and opening it (a journal of the first record
//! format is converted then, `migrate.rs`). The rest, one concept a file: the writer (`append`:
//! positions, dedupe window, positions in doubt, the batch insert), the logged commit and the
//! log applied at open (`logged`), the log's file (`wal`), a stream's replica (`replica`),
//! readers and scans (`reader`), retention (`retention`), the background sync (`sync`), the
//! record (`record`).

mod append;
mod inbox;
#[cfg(test)]
mod inbox_tests;
mod logged;
mod migrate;
mod reader;
mod record;
mod replica;
mod retention;
mod sync;
#[cfg(test)]
mod test_support;
mod wal;

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::watch;

pub use replica::{IdIndex, Known, ReplicaInbox, Replicated};
pub use retention::{Pruner, RetentionSettings};
pub use sync::Syncer;

use super::{
    Appended, Cursor, Journal, JournalReader, StoreError, Written,
    file::{JournalFile, JournalHealth},
};
use crate::{
    inbox::{Command, InboxSettings},
    pb,
};

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const IDS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` keys.
const EPOCH: &str = "epoch";
/// Positions at or below this were pruned (retention): a resume from below it is a gap.
const FLOOR: &str = "floor";
/// Ids of events at or below this position were forgotten (dedupe window).
const DEDUPE_FLOOR: &str = "dedupe_floor";
/// The size of the stored records, for `--retention-bytes`.
const BYTES: &str = "bytes";
/// A replica's head, when its last positions stored no event (a barrier, a duplicate).
const REPLICA_HEAD: &str = "replica_head";
/// The last batch of the commit log (`journal.wal`) that this file holds.
const WAL_SEQ: &str = "wal_seq";
/// The format of the records in `events`. Absent: the first format (a journal written before
/// the key existed), converted at open.
const FORMAT: &str = "format";
/// The format this version writes: [`record::Record`], a protobuf message.
const CURRENT_FORMAT: u64 = 2;

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every commit: an acknowledged event survives a power cut.
    EveryCommit,
    /// fsync in the background this often: no commit waits for the disk, but a crash (of the
    /// process or the machine) can lose up to this much of the most recent commits, events that
    /// were already acknowledged included.
    Interval(Duration),
}

/// How the journal keeps and forgets.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    /// The directory holding `journal.redb`; created if missing.
    pub dir: PathBuf,
    /// When commits reach the disk.
    pub durability: Durability,
    /// How long an event id is remembered to recognise re-sends.
    pub dedupe_window: Duration,
    /// Memory for redb's page cache (reads and writes); the OS page cache comes on top.
    pub cache_bytes: usize,
    /// Writes are refused while the disk has less than this available (`--journal-min-free`;
    /// 0: never refused before the disk itself says so).
    pub min_free_bytes: u64,
    /// With [`Durability::EveryCommit`]: how long the writer's batches may gather in one
    /// transaction, each made durable by the commit log (`journal.wal`), before it is committed
    /// to `journal.redb` (`--checkpoint-interval`). Zero: every batch is committed to
    /// `journal.redb`, and there is no log.
    pub checkpoint_interval: Duration,
    /// Which events make up the users' inboxes (`--inbox-types`; the default is
    /// [`crate::inbox::DEFAULT_INBOX_TYPES`]). Items already stored stay.
    pub inbox_types: InboxSettings,
}

/// The journal file and the writer's view of it.
pub struct RedbJournal {
    file: Arc<JournalFile>,
    epoch: u64,
    head: u64,
    settings: JournalSettings,
    /// Positions written by commits that reported failure. Such a commit may still have reached
    /// the file (its failure came after its pages did, e.g. in the last fsync), so the events
    /// there are neither known stored nor known lost; their submitters were told it failed, so
    /// nobody was given them. One found stored when it comes again (the ingest's retry, the
    /// stream read again) is delivered as new, from the stored record, not as a duplicate.
    in_doubt: BTreeSet<u64>,
    /// A commit failed: the head is read again from the file before the next write.
    head_in_doubt: bool,
    /// The commit log, when batches are logged (`logged.rs`).
    wal: Option<wal::Wal>,
    /// The sequence number of the last batch given to the log.
    wal_seq: u64,
}

impl Drop for RedbJournal {
    fn drop(&mut self) {
        // The batches left open go to the file now (else the next open applies them from the
        // log).
        if let Err(error) = self.file.checkpoint() {
            tracing::warn!(%error, "the journal's last batches stay in its commit log (journal.wal) until it is opened again");
        }
    }
}

impl std::fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJournal")
            .field("epoch", &self.epoch)
            .field("head", &self.head)
            .field("dir", &self.settings.dir)
            .finish_non_exhaustive()
    }
}

/// Why the journal could not be opened; the cause follows in the error's chain.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the journal in {dir} (--data-dir)")]
pub struct OpenError {
    dir: String,
    #[source]
    cause: OpenCause,
}

/// What stopped the open (see [`OpenError`]).
#[derive(Debug, thiserror::Error)]
enum OpenCause {
    /// The directory could not be created or read.
    #[error(transparent)]
    Dir(std::io::Error),
    /// The file could not be opened: not a journal, locked by another process, unreadable.
    #[error(transparent)]
    Database(#[from] redb::DatabaseError),
    /// Reading or preparing the tables failed.
    #[error(transparent)]
    Engine(#[from] redb::Error),
    /// The storage engine gave up on the file (a panic inside it, caught).
    #[error(
        "journal.redb is damaged (truncated or overwritten?): the storage engine gave up \
         reading it ({what}). Restore it from a backup, or move it aside to start an empty \
         journal (a new epoch: clients' cursors then get a Gap)"
    )]
    Damaged {
        /// The panic's message.
        what: String,
    },
    /// A record of the first format could not be converted; nothing was changed.
    #[error(
        "journal.redb holds a record that cannot be converted to the current format (position \
         {position}: {what}); the file was left as it was. Restore it from a backup, or move it \
         aside to start an empty journal (a new epoch: clients' cursors then get a Gap)"
    )]
    Unconvertible {
        /// The record's position.
        position: u64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// The commit log (`journal.wal`) could not be read or created.
    #[error("the commit log cannot be read or created")]
    Log(#[source] wal::WalError),
    /// The commit log does not follow the file: batches between are missing.
    #[error(
        "journal.wal does not follow journal.redb: the file holds the logged batches up to \
         {file}, the log starts at {log} (were the two copied at different moments?). Restore \
         both from one copy, or move journal.wal aside to open journal.redb as it is (the \
         batches only in the log are then lost)"
    )]
    LogMismatch {
        /// The last logged batch the file holds.
        file: u64,
        /// The first batch after it in the log.
        log: u64,
    },
    /// The file could not be used right after opening it.
    #[error(transparent)]
    Store(StoreError),
    /// A later version wrote the file, in a record format this one does not know.
    #[error(
        "journal.redb was written by a later version of notify-backbone (record format \
         {found}; this version reads format {CURRENT_FORMAT}); run that version, or move the \
         file aside to start an empty journal"
    )]
    LaterFormat {
        /// The format the file says it holds.
        found: u64,
    },
}

/// A redb failure while opening, as an [`OpenCause`].
fn engine(error: impl Into<redb::Error>) -> OpenCause {
    OpenCause::Engine(error.into())
}

thread_local! {
    /// Set while this thread runs [`catch_quietly`]: its panic is caught and reported as an
    /// error, so the panic hook must not print it too.
    static PANIC_CAUGHT_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work`, turning a panic into `Err` without the panic hook's message on stderr (the
/// caller reports the reason itself: the user would otherwise read both). The hook is wrapped
/// once per process; panics on other threads, or outside this call, print as they always did.
fn catch_quietly<T>(work: impl FnOnce() -> T) -> std::thread::Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PANIC_CAUGHT_HERE.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    PANIC_CAUGHT_HERE.with(|caught| caught.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    PANIC_CAUGHT_HERE.with(|caught| caught.set(false));
    outcome
}

/// A read of the journal that failed in the storage engine, as the readers report it.
fn read_failed(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Read(Arc::new(error.into()))
}

impl RedbJournal {
    /// Opens (or creates) the journal in `settings.dir`. A new journal gets a random epoch; a
    /// journal of the first record format is converted to the current one (one transaction:
    /// all of it or, if a record cannot be converted, nothing).
    ///
    /// # Errors
    ///
    /// The directory cannot be created or read, the file is not a journal or is corrupt, or
    /// another process has it open.
    pub fn open(settings: JournalSettings) -> Result<Self, OpenError> {
        // redb answers most damage with an error, but some (a truncated file) trips assertions
        // inside it: caught here, so a damaged file stops start-up with the reason like any
        // other, instead of a panic. Nothing of the half-opened database outlives the attempt.
        let dir = settings.dir.display().to_string();
        let opened = catch_quietly(|| Self::try_open(settings)).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no reason given".into());
            Err(OpenCause::Damaged { what })
        });
        opened.map_err(|cause| OpenError { dir, cause })
    }

    fn try_open(settings: JournalSettings) -> Result<Self, OpenCause> {
        std::fs::create_dir_all(&settings.dir).map_err(OpenCause::Dir)?;
        let path = settings.dir.join("journal.redb");
        let db = JournalFile::open_database(&path, settings.cache_bytes)?;
        let (epoch, head) = Self::prepare(&db)?;
        let file = JournalFile::new(db, path, settings.cache_bytes, settings.min_free_bytes);
        let log = settings.durability == Durability::EveryCommit
            && !settings.checkpoint_interval.is_zero();
        let mut journal = Self {
            file: Arc::new(file),
            epoch,
            head,
            settings,
            in_doubt: BTreeSet::new(),
            head_in_doubt: false,
            wal: None,
            wal_seq: 0,
        };
        journal.open_log(log)?;
        Ok(journal)
    }

    /// Creates what a new journal lacks (its tables, an epoch), converts records of the first
    /// format, and reads the epoch and the head; one write transaction.
    fn prepare(db: &Database) -> Result<(u64, u64), OpenCause> {
        let txn = db.begin_write().map_err(engine)?;
        txn.open_table(EVENTS).map_err(engine)?;
        txn.open_table(IDS).map_err(engine)?;
        let format = txn
            .open_table(META)
            .map_err(engine)?
            .get(FORMAT)
            .map_err(engine)?
            .map(|v| v.value());
        match format {
            Some(CURRENT_FORMAT) => {}
            Some(found) => return Err(OpenCause::LaterFormat { found }),
            None => {
                let converted = migrate::convert(&txn)?;
                if converted > 0 {
                    tracing::info!(
                        records = converted,
                        "journal converted to the current record format"
                    );
                }
                txn.open_table(META)
                    .map_err(engine)?
                    .insert(FORMAT, CURRENT_FORMAT)
                    .map_err(engine)?;
            }
        }
        let merged = migrate::merge_inbox_tables(&txn)?;
        if merged > 0 {
            tracing::info!(rows = merged, "inbox state moved to its current layout");
        }
        let (epoch, head) = {
            let mut meta = txn.open_table(META).map_err(engine)?;
            let events = txn.open_table(EVENTS).map_err(engine)?;
            let stored = meta.get(EPOCH).map_err(engine)?.map(|v| v.value());
            let epoch = match stored {
                Some(epoch) => epoch,
                None => {
                    let epoch = rand::random();
                    meta.insert(EPOCH, epoch).map_err(engine)?;
                    epoch
                }
            };
            let floor = meta.get(FLOOR).map_err(engine)?.map_or(0, |v| v.value());
            let head = events
                .last()
                .map_err(engine)?
                .map_or(floor, |(k, _)| k.value());
            let replica_head = meta
                .get(REPLICA_HEAD)
                .map_err(engine)?
                .map_or(0, |v| v.value());
            (epoch, head.max(replica_head))
        };
        txn.commit().map_err(engine)?;
        Ok((epoch, head))
    }

    fn cursor(&self, position: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            position,
        }
    }

    /// The journal's health, watched by readiness, gRPC health and the metrics.
    pub fn health(&self) -> watch::Receiver<JournalHealth> {
        self.file.health()
    }

    /// The monitor that looks at the journal's file off the write path: see
    /// [`JournalMonitor::probe`].
    pub fn monitor(&self) -> JournalMonitor {
        JournalMonitor {
            file: Arc::clone(&self.file),
            checkpoint_interval: self.logging().then_some(self.settings.checkpoint_interval),
        }
    }
}

/// Looks at the journal's file every so often, so that it recovers without traffic: a file given
/// up after a storage failure is reopened, a full disk that has room again is writable again (and
/// a disk that fills up is reported before a write fails).
pub struct JournalMonitor {
    file: Arc<JournalFile>,
    /// When batches are logged: a quiet writer's open transaction is committed once it is this
    /// old.
    checkpoint_interval: Option<Duration>,
}

impl JournalMonitor {
    /// One look; returns the health now. A blocking call (a `statvfs`, maybe a reopen): call it
    /// off the async workers.
    pub fn probe(&self) -> JournalHealth {
        if let Some(interval) = self.checkpoint_interval
            && let Err(error) = self.file.checkpoint_older_than(interval)
        {
            tracing::debug!(%error, "the quiet writer's checkpoint failed");
        }
        self.file.probe()
    }
}

impl Journal for RedbJournal {
    fn append(&mut self, events: &mut [pb::Event]) -> Result<Vec<Appended>, StoreError> {
        self.append_at(events, super::unix_millis())
    }

    fn write(
        &mut self,
        events: &mut [pb::Event],
        commands: &[Command],
    ) -> Result<Written, StoreError> {
        self.write_at(events, commands, super::unix_millis())
    }

    fn head(&self) -> Cursor {
        self.cursor(self.head)
    }

    fn reader(&self) -> Arc<dyn JournalReader> {
        Arc::new(reader::RedbReader::new(Arc::clone(&self.file)))
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::*, *};

    #[test]
    fn a_reopened_journal_keeps_its_epoch_head_and_ids() {
        let dir = TestDir::new();
        let epoch = {
            let mut journal = dir.open();
            journal
                .append(&mut [event("a", "u1"), event("b", "u1")])
                .unwrap();
            journal.head().epoch
        };
        let mut journal = dir.open();
        assert_eq!(journal.head(), Cursor { epoch, position: 2 });
        let out = journal
            .append(&mut [event("a", "u1"), event("c", "u1")])
            .unwrap();
        assert!(out[0].duplicate);
        assert_eq!(out[1].cursor.position, 3);
        // A wiped journal is a new epoch.
        drop(journal);
        std::fs::remove_dir_all(dir.journal()).unwrap();
        let journal = dir.open();
        assert_ne!(journal.head().epoch, epoch);
        assert_eq!(journal.head().position, 0);
    }

    /// A journal file cut short (a full disk, a bad copy) used to trip an assertion inside
    /// redb: a panic at start-up instead of the reason.
    #[test]
    fn a_truncated_journal_stops_start_up_with_the_reason_not_a_panic() {
        let dir = TestDir::new();
        {
            let mut journal = dir.open();
            let mut batch: Vec<_> = (0..200).map(|i| event(&format!("e{i}"), "u1")).collect();
            journal.append(&mut batch).unwrap();
        }
        let path = dir.journal().join("journal.redb");
        let len = std::fs::metadata(&path).unwrap().len();
        for cut in [len / 2, 8192, 600] {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut).unwrap();
            drop(file);
            let error = RedbJournal::open(dir.settings(Duration::from_secs(1)))
                .expect_err("a truncated journal does not open");
            let text = error.to_string();
            assert!(text.contains("--data-dir"), "{text}");
            assert!(
                text.contains(&dir.journal().display().to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn a_file_that_is_not_a_journal_stops_start_up_with_the_reason() {
        let dir = TestDir::new();
        std::fs::create_dir_all(dir.journal()).unwrap();
        std::fs::write(
            dir.journal().join("journal.redb"),
            b"not a database, just some bytes",
        )
        .unwrap();
        let error = RedbJournal::open(dir.settings(Duration::from_secs(1))).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("--data-dir"), "{text}");
        assert!(
            text.contains(&dir.journal().display().to_string()),
            "{text}"
        );
        // The reason follows in the chain, once.
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause.is_some_and(|cause| !text.contains(&cause)),
            "{error:?}"
        );
    }

    #[test]
    fn a_journal_of_a_later_record_format_is_not_opened() {
        let dir = TestDir::new();
        drop(RedbJournal::open(dir.settings(Duration::from_secs(1))).unwrap());
        let db = Database::create(dir.journal().join("journal.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(FORMAT, CURRENT_FORMAT + 1)
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let error = RedbJournal::open(dir.settings(Duration::from_secs(1))).unwrap_err();
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause.is_some_and(|cause| cause.contains("later version")),
            "{error:?}"
        );
    }
}
