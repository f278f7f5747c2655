//! The journal's file: the one open redb database that the writer, the readers, retention and
//! the background sync share; the free space the journal keeps on its disk; the journal's
//! health ([`JournalHealth`]); and reopening the file in place after a storage failure.
//!
//! Owns: the database handle and when it is swapped, the `--journal-min-free` reserve, the
//! health watch. Does not own: what is in the file (`redb.rs`), or what the server does with
//! the health (readiness, gRPC health and metrics are wired in `app`).
//!
//! Why reopening: redb latches its first I/O error. A commit that hits `ENOSPC` leaves every
//! later write *and read* on the same handle failing with "Previous I/O error occurred. Please
//! close and re-open the database", even after space returns (checked against redb 3.1: the
//! failed commit is not stored, a reopen succeeds while the disk is still full and serves the
//! last committed state, and writes work again once there is room). So a write that fails hands
//! the handle back ([`JournalFile::failed`]) and the file is opened again at once: reads and
//! replays go on within milliseconds, writes as soon as the cause is gone, with no restart.
//!
//! Why a reserve: better than reopening is never latching. While the disk holding the journal
//! has less than `--journal-min-free` available, writes are refused before they reach redb
//! ([`StoreError::DiskFull`]): nothing latches, every read and live stream goes on, and the
//! ingest keeps its messages in the queue until [`JournalFile::probe`] sees room again. The
//! reserve must cover one commit (a batch of events and the B-tree pages it rewrites); a disk
//! filled by someone else between the check and the commit still ends in a reopen.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redb::{Database, Durability as RedbDurability, ReadableDatabase as _};
use tokio::sync::watch;

use super::StoreError;

/// Whether the journal can take writes, as readiness, gRPC health and the metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalHealth {
    /// Writes are taken.
    Writable,
    /// Writes are refused: the disk has less than the reserve available. Reads go on.
    DiskFull {
        /// Bytes available on the journal's file system when last looked.
        free_bytes: u64,
        /// Writes resume once at least this much is available.
        min_free_bytes: u64,
    },
    /// A storage failure other than a full disk; the file is reopened (reads go on once it is)
    /// and writes are tried again.
    Failed {
        /// What failed, for the log and `/readyz`.
        reason: String,
    },
}

impl JournalHealth {
    /// A short, stable name for metrics labels.
    pub fn reason_code(&self) -> &'static str {
        match self {
            JournalHealth::Writable => "writable",
            JournalHealth::DiskFull { .. } => "disk_full",
            JournalHealth::Failed { .. } => "storage_failed",
        }
    }
}

impl std::fmt::Display for JournalHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalHealth::Writable => f.write_str("writable"),
            JournalHealth::DiskFull {
                free_bytes,
                min_free_bytes,
            } => write!(
                f,
                "disk full: {free_bytes} bytes available, writes resume at {min_free_bytes} \
                 (--journal-min-free)"
            ),
            JournalHealth::Failed { reason } => write!(f, "storage failed: {reason}"),
        }
    }
}

/// After a write failed for lack of space, writes resume only once at least this much is free
/// (or the reserve, if larger): with no reserve configured, the next commit would otherwise fail
/// the same way at once.
const MIN_FREE_AFTER_ENOSPC: u64 = 4 * 1024 * 1024;

/// How long a reading of the free space that found at least twice the reserve stands in for
/// the next ones. Checking costs two system calls, once per commit; reaching the reserve from
/// there means writing a whole reserve's worth (64 MiB by default) within this time, far past
/// what the journal writes, and a disk that fills up anyway fails the commit, which is handled.
const ROOMY_READING_STANDS: Duration = Duration::from_millis(100);

/// How long a reopen waits for the readers still holding the failed handle (each holds it for
/// one scan, and a latched file fails them at once).
const READERS_RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The open journal file, shared by everything that reads or writes it.
pub(super) struct JournalFile {
    /// `journal.redb`.
    path: PathBuf,
    /// redb's page cache for each open.
    cache_bytes: usize,
    /// `--journal-min-free`: writes are refused while less is available.
    min_free_bytes: u64,
    /// The open database; `None` between a failure and the reopen.
    db: RwLock<Option<Arc<Database>>>,
    /// A failed handle waiting for its last readers before the file is opened again.
    closing: Mutex<Option<Arc<Database>>>,
    /// Whether the latest failure was a full disk: then writes wait for more room.
    last_failed_for_space: Mutex<bool>,
    /// Until when the latest reading of the free space stands (it found plenty).
    roomy_until: Mutex<Option<Instant>>,
    /// The journal's health; every change is published once.
    health: watch::Sender<JournalHealth>,
    /// The writer's transaction left open across batches (`--checkpoint-interval`).
    open: Mutex<OpenBatches>,
    /// Whether `open` holds a transaction or a lost one's records: readers take its lock only
    /// then. Set before the writer answers a batch it left open, so a reader that knows of the
    /// batch (the hub's head is set after the answer) sees it set.
    pending: AtomicBool,
    /// The first position in `open`'s records (`u64::MAX`: none): a read of positions below it
    /// needs nothing from the open transaction, and takes no lock. Published with `pending`.
    pending_from: AtomicU64,
}

/// Records of new events by position, kept in memory (see [`OpenBatches::records`]).
pub(super) type KeptRecords = Vec<(u64, Vec<u8>)>;

/// The writer's transaction left open across batches, with `--checkpoint-interval`: the
/// batches in it are durable in the commit log (`journal.wal`), not yet in `journal.redb`.
/// Whoever writes the file otherwise, or reads what it holds, commits it first
/// ([`JournalFile::read_snapshot_until`], `exclusive`), so they see every batch the writer has
/// answered for.
#[derive(Default)]
pub(super) struct OpenBatches {
    /// The transaction; `None` when every batch is committed.
    pub(super) txn: Option<redb::WriteTransaction>,
    /// The handle it was begun on: a transaction on a handle given up since is lost.
    pub(super) db: Option<Arc<Database>>,
    /// Events written in it.
    pub(super) events: usize,
    /// When its first batch was written.
    pub(super) since: Option<Instant>,
    /// A transaction holding logged batches was lost (a write in it or its commit failed, e.g.
    /// a disk that filled up mid-commit): they are in the log only, until the writer applies it
    /// again (at its next write, once there is room). Other writers are refused meanwhile, so
    /// that nothing is committed between the file and those batches.
    pub(super) lost: bool,
    /// The records of the new events in the open transaction, or, when `lost`, in the lost
    /// one, by position: while lost, readers read them after the file's (so a replay or a
    /// history page never skips an answered event). The inboxes' counts read meanwhile lack
    /// the lost batches' items until the log is applied again.
    pub(super) records: KeptRecords,
}

impl OpenBatches {
    /// The open transaction is given up with the batches in it: they are in the log only.
    pub(super) fn lose(&mut self) {
        if self.txn.take().is_some() && self.events > 0 {
            self.lost = true;
        }
        self.db = None;
        self.events = 0;
        self.since = None;
    }
}

/// [`OpenBatches`] locked; on release it publishes whether anything is pending
/// (`JournalFile::pending`).
pub(super) struct OpenGuard<'a> {
    batches: MutexGuard<'a, OpenBatches>,
    pending: &'a AtomicBool,
    pending_from: &'a AtomicU64,
}

impl std::ops::Deref for OpenGuard<'_> {
    type Target = OpenBatches;
    fn deref(&self) -> &OpenBatches {
        &self.batches
    }
}

impl std::ops::DerefMut for OpenGuard<'_> {
    fn deref_mut(&mut self) -> &mut OpenBatches {
        &mut self.batches
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let pending = self.batches.txn.is_some() || self.batches.lost;
        let from = match self.batches.records.first() {
            Some(&(position, _)) if pending => position,
            _ => u64::MAX,
        };
        self.pending_from.store(from, Ordering::Release);
        self.pending.store(pending, Ordering::Release);
    }
}

impl JournalFile {
    /// Wraps a database just opened from `path`.
    pub(super) fn new(
        db: Database,
        path: PathBuf,
        cache_bytes: usize,
        min_free_bytes: u64,
    ) -> Self {
        Self {
            path,
            cache_bytes,
            min_free_bytes,
            db: RwLock::new(Some(Arc::new(db))),
            closing: Mutex::new(None),
            last_failed_for_space: Mutex::new(false),
            roomy_until: Mutex::new(None),
            health: watch::Sender::new(JournalHealth::Writable),
            open: Mutex::new(OpenBatches::default()),
            pending: AtomicBool::new(false),
            pending_from: AtomicU64::new(u64::MAX),
        }
    }

    /// The writer's open transaction, locked for one batch.
    pub(super) fn open_batches(&self) -> OpenGuard<'_> {
        OpenGuard {
            batches: self.open.lock().unwrap_or_else(PoisonError::into_inner),
            pending: &self.pending,
            pending_from: &self.pending_from,
        }
    }

    /// For another writer (retention, the sync, a replica, the probe): `work` on the file with
    /// the writer's open transaction committed first, and the lock held throughout, so that
    /// nothing is committed between the file and batches the writer left open or lost.
    /// Refused while a lost transaction's batches wait in the log (see [`OpenBatches::lost`]).
    fn exclusive<T>(
        &self,
        work: impl FnOnce(Arc<Database>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut open = self.open_batches();
        self.checkpoint_locked(&mut open)?;
        if open.lost {
            return Err(StoreError::Unavailable(
                "the journal is applying its commit log (journal.wal) again after a failed \
                 commit"
                    .into(),
            ));
        }
        work(self.writable_db()?)
    }

    /// Commits the writer's open transaction, if any (for tests and shutdown): afterwards
    /// `journal.redb` holds every batch the writer answered for, unless one was lost.
    pub(super) fn checkpoint(&self) -> Result<(), StoreError> {
        self.exclusive(|_| Ok(()))
    }

    /// A read transaction that sees every batch the writer answered for: the writer's open
    /// transaction committed first, or, while a lost one's batches wait in the log, their
    /// records (returned with it, by position, all after the file's).
    pub(super) fn read_snapshot(
        &self,
    ) -> Result<(Arc<Database>, redb::ReadTransaction, KeptRecords), StoreError> {
        self.read_snapshot_until(u64::MAX)
    }

    /// [`JournalFile::read_snapshot`] for a read of the events up to position `until` only:
    /// when the open transaction's events all come after it (a replay catching up to where it
    /// joined the live stream), the file has them all, and nothing waits for the writer.
    pub(super) fn read_snapshot_until(
        &self,
        until: u64,
    ) -> Result<(Arc<Database>, redb::ReadTransaction, KeptRecords), StoreError> {
        let begin = |db: Arc<Database>| {
            let txn = db
                .begin_read()
                .map_err(|error| StoreError::Read(Arc::new(error.into())))?;
            Ok((db, txn))
        };
        // `pending_from` first: it is published before `pending`, so a reader that sees
        // nothing pending or only events after `until` is right about the batches it knows of.
        let from = self.pending_from.load(Ordering::Acquire);
        if !self.pending.load(Ordering::Acquire) || until < from {
            let (db, txn) = begin(self.current_db()?)?;
            return Ok((db, txn, Vec::new()));
        }
        let mut open = self.open_batches();
        // A failed commit leaves the batches lost: the snapshot is taken with their records.
        let committed = self.checkpoint_locked(&mut open);
        if !open.lost {
            committed?;
        }
        let (db, txn) = begin(self.current_db()?)?;
        let records = if open.lost {
            open.records.clone()
        } else {
            Vec::new()
        };
        Ok((db, txn, records))
    }

    /// [`JournalFile::checkpoint`] if the open transaction is older than `age`: the probe's,
    /// so that a quiet writer's batches do not wait in memory for the next one.
    pub(super) fn checkpoint_older_than(&self, age: Duration) -> Result<(), StoreError> {
        if !self.pending.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut open = self.open_batches();
        if open.since.is_some_and(|since| since.elapsed() >= age) {
            self.checkpoint_locked(&mut open)?;
        }
        Ok(())
    }

    /// Commits the open transaction with the lock held; a failure leaves it lost. A
    /// transaction on a handle given up since is lost as it is.
    pub(super) fn checkpoint_locked(&self, open: &mut OpenBatches) -> Result<(), StoreError> {
        let current = self.current_db().ok();
        if open.db.as_ref().is_some_and(|db| {
            current
                .as_ref()
                .is_none_or(|current| !Arc::ptr_eq(db, current))
        }) {
            open.lose();
        }
        let Some(mut txn) = open.txn.take() else {
            return Ok(());
        };
        let events = open.events;
        open.events = 0;
        open.since = None;
        let db = open.db.take();
        let committed = txn
            .set_durability(RedbDurability::Immediate)
            .map_err(redb::Error::from)
            .and_then(|()| txn.commit().map_err(redb::Error::from));
        match committed {
            Ok(()) => {
                open.records.clear();
                Ok(())
            }
            Err(error) => {
                open.lost = events > 0;
                Err(match db {
                    Some(db) => self.failed(db, error, false),
                    None => StoreError::Storage(Arc::new(error)),
                })
            }
        }
    }

    /// Opens `path` with the configured cache (a file left by a failed commit is repaired by
    /// redb on open).
    pub(super) fn open_database(
        path: &Path,
        cache_bytes: usize,
    ) -> Result<Database, redb::DatabaseError> {
        Database::builder().set_cache_size(cache_bytes).create(path)
    }

    /// The open database, for one read or one write transaction, after the writer's open
    /// transaction is committed ([`JournalFile::checkpoint`]; a reader that must see a lost
    /// transaction's batches takes [`JournalFile::read_snapshot`]). Hold it no longer: a
    /// reopen waits for every holder.
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        Ok(self.read_snapshot()?.0)
    }

    /// The open database as it is: for the writer's open transaction itself, and the probe.
    pub(super) fn current_db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Reopening)
    }

    /// The health, to watch.
    pub(super) fn health(&self) -> watch::Receiver<JournalHealth> {
        self.health.subscribe()
    }

    /// Before a write: refused while the disk has less than the reserve available (or, after a
    /// full disk, until there is room for a commit again).
    pub(super) fn check_space(&self) -> Result<(), StoreError> {
        let needed = self.needed_free_bytes();
        if needed == 0 {
            return Ok(());
        }
        let mut roomy_until = self
            .roomy_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if roomy_until.is_some_and(|until| now < until) {
            return Ok(());
        }
        let Some(free_bytes) = available_bytes(&self.path) else {
            // Cannot tell (an unusual file system): let the write find out.
            return Ok(());
        };
        *roomy_until = (free_bytes / 2 >= needed).then(|| now + ROOMY_READING_STANDS);
        if free_bytes >= needed {
            return Ok(());
        }
        let full = JournalHealth::DiskFull {
            free_bytes,
            min_free_bytes: needed,
        };
        self.set_health(full);
        Err(StoreError::DiskFull {
            free_bytes,
            min_free_bytes: needed,
        })
    }

    /// A write succeeded: the journal is writable (again).
    pub(super) fn wrote(&self) {
        if !matches!(*self.health.borrow(), JournalHealth::Writable) {
            *self
                .last_failed_for_space
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = false;
            self.set_health(JournalHealth::Writable);
        }
    }

    /// A transaction on `db` failed with `error`. Storage failures latch inside redb, so the
    /// handle is given up and the file opened again (now, when `reopen_now`; else at the next
    /// write or [`JournalFile::probe`], which readers use, as they must not wait). Returns the
    /// error to report.
    pub(super) fn failed(
        &self,
        db: Arc<Database>,
        error: redb::Error,
        reopen_now: bool,
    ) -> StoreError {
        let for_space = is_out_of_space(&error);
        if !latches(&error) {
            // A logical error (a table's type, a full value): the handle is fine.
            return StoreError::Storage(Arc::new(error));
        }
        *self
            .last_failed_for_space
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = for_space;
        // The writer's open transaction is on the handle given up, and holds its file open:
        // dropped, and its batches applied from the log again. (When the writer holds the lock,
        // it is the one failing: it drops the transaction itself.)
        if let Ok(mut open) = self.open.try_lock()
            && open.db.as_ref().is_some_and(|open| Arc::ptr_eq(open, &db))
        {
            open.lose();
            self.pending.store(true, Ordering::Release);
        }
        {
            let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
            if slot.as_ref().is_some_and(|open| Arc::ptr_eq(open, &db)) {
                *slot = None;
                *self.closing.lock().unwrap_or_else(PoisonError::into_inner) = Some(db);
            }
        }
        let error = Arc::new(error);
        if for_space {
            let free_bytes = available_bytes(&self.path).unwrap_or(0);
            self.set_health(JournalHealth::DiskFull {
                free_bytes,
                min_free_bytes: self.needed_free_bytes(),
            });
        } else {
            self.set_health(JournalHealth::Failed {
                reason: error.to_string(),
            });
        }
        if reopen_now {
            let _ = self.reopen();
        }
        StoreError::Storage(error)
    }

    /// Writing the commit log failed: reported like a storage failure (the probe's empty
    /// commit, or the next write that succeeds, ends it).
    pub(super) fn log_failed(&self, error: &std::io::Error) {
        self.set_health(JournalHealth::Failed {
            reason: format!("writing the commit log (journal.wal) failed: {error}"),
        });
    }

    /// Runs `work` (one write transaction) on the open file: refused while the disk is full; a
    /// storage failure gives the handle up and reopens the file (at once when `reopen_now`).
    pub(super) fn write<T>(
        &self,
        reopen_now: bool,
        work: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.check_space()?;
        let done = self.write_into_reserve(reopen_now, work)?;
        // A checked write that went through: writable (again). Writes into the reserve say
        // nothing about that: the disk may still be below it.
        self.wrote();
        Ok(done)
    }

    /// [`JournalFile::write`] without the reserve check, for writes that make room or make
    /// what is stored durable (retention, the background sync): refusing them on a full disk
    /// would keep it full, or leave acknowledged events unsynced. A failure still reopens.
    pub(super) fn write_into_reserve<T>(
        &self,
        reopen_now: bool,
        work: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.exclusive(|db| work(&db).map_err(|error| self.failed(db, error, reopen_now)))
    }

    /// The open database for a write, opened again first if it was given up.
    pub(super) fn writable_db(&self) -> Result<Arc<Database>, StoreError> {
        match self.current_db() {
            Ok(db) => Ok(db),
            Err(_) => {
                self.reopen()?;
                self.current_db()
            }
        }
    }

    /// Looks again, off the write path (every second, from the server): reopens a file given up
    /// after a failure, and turns a full disk back into a writable journal once there is room —
    /// or a writable one into a full one before a write fails. Returns the health now.
    pub(super) fn probe(&self) -> JournalHealth {
        // A read that met an I/O error latched the handle too; readers do not reopen (they
        // must not wait), so it is found here.
        if let Ok(db) = self.current_db()
            && let Err(error) = db.begin_read()
        {
            let _ = self.failed(db, error.into(), false);
        }
        if self.reopen().is_ok() && self.check_space().is_ok() {
            if matches!(*self.health.borrow(), JournalHealth::Failed { .. }) {
                // A storage failure is over when a write succeeds: an empty commit tries one
                // (after the writer's open transaction, which it would wait for).
                let tried = self.exclusive(|db| {
                    db.begin_write()
                        .map_err(redb::Error::from)
                        .and_then(|txn| txn.commit().map_err(redb::Error::from))
                        .map_err(|error| self.failed(db, error, false))
                });
                if tried.is_ok() {
                    self.wrote();
                }
            } else {
                self.wrote();
            }
        }
        self.health.borrow().clone()
    }

    /// Opens the file again if it was given up. `Ok` when it is open.
    fn reopen(&self) -> Result<(), StoreError> {
        if self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            return Ok(());
        }
        let mut closing = self.closing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut old) = closing.take() {
            // The file stays locked until the last holder of the failed handle lets go.
            let deadline = Instant::now() + READERS_RELEASE_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) if Instant::now() < deadline => {
                        old = shared;
                        #[expect(
                            clippy::disallowed_methods,
                            reason = "a reopen runs on the journal's blocking threads, never on \
                                      an async worker"
                        )]
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(shared) => {
                        *closing = Some(shared);
                        return Err(StoreError::Reopening);
                    }
                }
            }
        }
        match Self::open_database(&self.path, self.cache_bytes) {
            Ok(db) => {
                *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
                tracing::info!(path = %self.path.display(), "journal reopened after a storage failure");
                Ok(())
            }
            Err(error) => {
                self.set_health(JournalHealth::Failed {
                    reason: format!("reopening the journal failed: {error}"),
                });
                Err(StoreError::Reopening)
            }
        }
    }

    fn needed_free_bytes(&self) -> u64 {
        if *self
            .last_failed_for_space
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            self.min_free_bytes.max(MIN_FREE_AFTER_ENOSPC)
        } else {
            self.min_free_bytes
        }
    }

    /// Publishes `health` if it differs in kind from the current one (a full disk whose free
    /// bytes changed is the same state: watchers log state changes, not every look).
    fn set_health(&self, health: JournalHealth) {
        self.health.send_if_modified(|current| {
            let changed = std::mem::discriminant(current) != std::mem::discriminant(&health);
            if changed {
                *current = health;
            }
            changed
        });
    }
}

/// Whether redb latched `error`: an I/O failure (or the latch itself) makes the handle useless
/// until it is reopened.
fn latches(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// Whether `error` is the file system saying it has no room (or the quota is used up).
fn is_out_of_space(error: &redb::Error) -> bool {
    match error {
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ),
        _ => false,
    }
}

/// Bytes available to this process on the file system holding `path` (its directory while the
/// file does not exist yet).
fn available_bytes(path: &Path) -> Option<u64> {
    let at = if path.exists() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    let stats = rustix::fs::statvfs(at).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}
