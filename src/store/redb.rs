//! The durable journal, in one redb file under `--data-dir`.
//!
//! Why redb: an embedded, pure-Rust B-tree store with ACID transactions, crash safety by
//! copy-on-write and checksummed commits (no write-ahead log to replay), one writer and many
//! concurrent readers with snapshot isolation — exactly the shape of a journal with one
//! sequencer and many replaying subscribers — and a small dependency tree (no C toolchain, unlike
//! RocksDB; stable file format since 1.0, unlike sled).
//!
//! Layout: `events` maps a position to a record (its id, what routing needs, the encoded
//! `SubscribeResponse` frame with the cursor already stamped, so replay sends stored bytes
//! without re-encoding); `ids` maps an event id to its position and append time, for dedupe;
//! `meta` holds the epoch and the retention floor. One batch from the sequencer is one write
//! transaction: the group commit.

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use redb::{
    Database, Durability as RedbDurability, ReadableDatabase, ReadableTable, TableDefinition,
};
use tokio::sync::watch;

use super::{
    Appended, BackLimits, BackScan, Cursor, EventMeta, Journal, JournalReader, Scan, ScanLimits,
    StoreError, StoredEvent, encode_event_frame,
    file::{JournalFile, JournalHealth},
};
use crate::pb;

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
}

/// The most positions kept in doubt (see `RedbJournal::in_doubt`): a few failed batches. One
/// never sent again stays until this many are.
const MAX_IN_DOUBT: usize = 64 * 1024;

impl std::fmt::Debug for RedbJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbJournal")
            .field("epoch", &self.epoch)
            .field("head", &self.head)
            .field("dir", &self.settings.dir)
            .finish_non_exhaustive()
    }
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the journal in {dir} (--data-dir): {reason}")]
pub struct OpenError {
    dir: String,
    reason: String,
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

fn storage(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl RedbJournal {
    /// Opens (or creates) the journal in `settings.dir`. A new journal gets a random epoch.
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
        match catch_quietly(|| Self::try_open(settings)) {
            Ok(opened) => opened,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no reason given".into());
                Err(OpenError {
                    dir,
                    reason: format!(
                        "journal.redb is damaged (truncated or overwritten?): the storage engine \
                         gave up reading it ({what}). Restore it from a backup, or move it aside \
                         to start an empty journal (a new epoch: clients' cursors then get a Gap)"
                    ),
                })
            }
        }
    }

    fn try_open(settings: JournalSettings) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError {
            dir: settings.dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(&settings.dir).map_err(|e| fail(e.to_string()))?;
        let path = settings.dir.join("journal.redb");
        let db = JournalFile::open_database(&path, settings.cache_bytes)
            .map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        let (epoch, head) = {
            let mut meta = txn.open_table(META).map_err(|e| fail(e.to_string()))?;
            let events = txn.open_table(EVENTS).map_err(|e| fail(e.to_string()))?;
            txn.open_table(IDS).map_err(|e| fail(e.to_string()))?;
            let stored = meta
                .get(EPOCH)
                .map_err(|e| fail(e.to_string()))?
                .map(|v| v.value());
            let epoch = match stored {
                Some(epoch) => epoch,
                None => {
                    let epoch = rand::random();
                    meta.insert(EPOCH, epoch).map_err(|e| fail(e.to_string()))?;
                    epoch
                }
            };
            let floor = meta
                .get(FLOOR)
                .map_err(|e| fail(e.to_string()))?
                .map_or(0, |v| v.value());
            let head = events
                .last()
                .map_err(|e| fail(e.to_string()))?
                .map_or(floor, |(k, _)| k.value());
            let replica_head = meta
                .get(REPLICA_HEAD)
                .map_err(|e| fail(e.to_string()))?
                .map_or(0, |v| v.value());
            let head = head.max(replica_head);
            (epoch, head)
        };
        txn.commit().map_err(|e| fail(e.to_string()))?;
        let file = JournalFile::new(db, path, settings.cache_bytes, settings.min_free_bytes);
        Ok(Self {
            file: Arc::new(file),
            epoch,
            head,
            settings,
            in_doubt: BTreeSet::new(),
            head_in_doubt: false,
        })
    }

    /// Before a write after a failed commit: the head as the file has it (the failed commit's
    /// events may be there); positions beyond it are not in doubt any more (they were lost).
    fn settle_doubt(&mut self, txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
        if !self.head_in_doubt {
            return Ok(());
        }
        let events = txn.open_table(EVENTS)?;
        let meta = txn.open_table(META)?;
        let stored = events.last()?.map_or(0, |(k, _)| k.value());
        let floor = meta.get(FLOOR)?.map_or(0, |v| v.value());
        let replica_head = meta.get(REPLICA_HEAD)?.map_or(0, |v| v.value());
        self.head = stored.max(floor).max(replica_head);
        let head = self.head;
        self.in_doubt.retain(|&position| position <= head);
        self.head_in_doubt = false;
        Ok(())
    }

    /// After a failed commit that wrote `positions`.
    fn commit_failed(&mut self, positions: impl IntoIterator<Item = u64>) {
        self.in_doubt.extend(positions);
        while self.in_doubt.len() > MAX_IN_DOUBT {
            self.in_doubt.pop_first();
        }
        self.head_in_doubt = true;
    }

    /// The stored frame at `position`, if it is in doubt (see `in_doubt`): it is delivered now.
    fn take_in_doubt(
        &mut self,
        table: &redb::Table<'_, u64, &[u8]>,
        position: u64,
    ) -> Result<Option<Bytes>, redb::Error> {
        if !self.in_doubt.remove(&position) {
            return Ok(None);
        }
        Ok(table
            .get(position)?
            .map(|record| Record::decode(record.value()).stored(position).frame))
    }

    fn cursor(&self, position: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            position,
        }
    }

    /// Forgets ids older than the dedupe window, a bounded amount per commit so one commit never
    /// stalls on a large backlog.
    fn forget_old_ids(&self, txn: &redb::WriteTransaction, now: u64) -> Result<(), redb::Error> {
        const PER_COMMIT: usize = 1024;
        let window = u64::try_from(self.settings.dedupe_window.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(window);
        let mut meta = txn.open_table(META)?;
        let floor = meta.get(DEDUPE_FLOOR)?.map_or(0, |v| v.value());
        let events = txn.open_table(EVENTS)?;
        let mut ids = txn.open_table(IDS)?;
        let mut new_floor = floor;
        for entry in events.range(floor + 1..)?.take(PER_COMMIT) {
            let (position, record) = entry?;
            let record = Record::decode(record.value());
            if record.appended_ms > cutoff {
                break;
            }
            // Only if the id still points here (a later re-send stored anew points elsewhere).
            let points_here = ids
                .get(record.id)?
                .is_some_and(|v| v.value().0 == position.value());
            if points_here {
                ids.remove(record.id)?;
            }
            new_floor = position.value();
        }
        if new_floor != floor {
            meta.insert(DEDUPE_FLOOR, new_floor)?;
        }
        Ok(())
    }

    /// Appends `events` as of `now` (milliseconds since the epoch: the append time kept for
    /// the dedupe window), through the file's checks: refused while the disk is full, reopened
    /// after a storage failure.
    fn append_at(
        &mut self,
        events: &mut [pb::Event],
        now: u64,
    ) -> Result<Vec<Appended>, StoreError> {
        let before = self.head;
        let file = Arc::clone(&self.file);
        file.write(true, |db| self.append_in(db, events, now))
            .inspect_err(|_| {
                // Nothing of the batch was committed: positions start again where they were.
                self.head = before;
            })
    }

    fn append_in(
        &mut self,
        db: &Database,
        events: &mut [pb::Event],
        now: u64,
    ) -> Result<Vec<Appended>, redb::Error> {
        let txn = self.begin_append(db)?;
        self.settle_doubt(&txn)?;
        let first_new = self.head + 1;
        let mut head = self.head;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut added_bytes = 0_u64;
        {
            let mut table = txn.open_table(EVENTS)?;
            let mut ids = txn.open_table(IDS)?;
            let mut record = Vec::new();
            for event in events.iter_mut() {
                let known = ids.get(event.id.as_str())?.map(|v| v.value().0);
                if let Some(position) = known {
                    let cursor = self.cursor(position);
                    let frame = self.take_in_doubt(&table, position)?;
                    if frame.is_some() {
                        event.cursor = cursor.to_string();
                    }
                    let conflict = frame.is_none() && !stored_is_same(&table, position, event)?;
                    outcomes.push(Appended {
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
                event.cursor = cursor.to_string();
                let frame = encode_event_frame(event);
                record.clear();
                Record::encode(event, now, &frame, &mut record);
                table.insert(head, record.as_slice())?;
                added_bytes += record.len() as u64;
                ids.insert(event.id.as_str(), (head, now))?;
                outcomes.push(Appended {
                    cursor,
                    duplicate: false,
                    conflict: false,
                    frame: Some(frame),
                });
            }
        }
        if added_bytes > 0 {
            let mut meta = txn.open_table(META)?;
            let stored = meta.get(BYTES)?.map_or(0, |v| v.value());
            meta.insert(BYTES, stored + added_bytes)?;
        }
        self.forget_old_ids(&txn, now)?;
        if let Err(error) = txn.commit() {
            self.commit_failed(first_new..=head);
            return Err(error.into());
        }
        self.head = head;
        Ok(outcomes)
    }
}

/// How long and how much the journal keeps (`--retention-age`, `--retention-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events older than this are removed.
    pub max_age: Duration,
    /// The oldest events are removed while the records take more than this.
    pub max_bytes: u64,
}

/// Removes what retention no longer keeps; runs beside the writer (redb serialises the two
/// write transactions).
pub struct Pruner {
    file: Arc<JournalFile>,
    retention: Retention,
}

/// Events removed per transaction, so pruning a large backlog never holds the writer long.
const PRUNE_BATCH: usize = 4096;

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
                let value = record.value();
                let parsed = Record::decode(value);
                let too_old = parsed.appended_ms < cutoff;
                let too_big = bytes > self.retention.max_bytes;
                if !too_old && !too_big {
                    break;
                }
                bytes = bytes.saturating_sub(value.len() as u64);
                doomed.push((position.value(), parsed.id.to_owned()));
            }
            for (position, id) in &doomed {
                events.remove(*position)?;
                let points_here = ids
                    .get(id.as_str())?
                    .is_some_and(|v| v.value().0 == *position);
                if points_here {
                    ids.remove(id.as_str())?;
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

    /// The pruner for `retention`, to run in the background.
    pub fn pruner(&self, retention: Retention) -> Pruner {
        Pruner {
            file: Arc::clone(&self.file),
            retention,
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
        }
    }
}

/// Looks at the journal's file every so often, so that it recovers without traffic: a file given
/// up after a storage failure is reopened, a full disk that has room again is writable again (and
/// a disk that fills up is reported before a write fails).
pub struct JournalMonitor {
    file: Arc<JournalFile>,
}

impl JournalMonitor {
    /// One look; returns the health now. A blocking call (a `statvfs`, maybe a reopen): call it
    /// off the async workers.
    pub fn probe(&self) -> JournalHealth {
        self.file.probe()
    }
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

/// A stream's replica: a journal whose positions and epoch come from elsewhere (the RabbitMQ
/// stream of cluster mode) instead of being assigned here. Reads (replay, history, dedupe) are
/// the same as a single node's.
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
        if let Some((_, event)) = events.iter().find(|(_, event)| !Record::fits(event)) {
            return Err(StoreError::Unavailable(format!(
                "event {:?}: a field is longer than a journal record holds",
                event.id.chars().take(64).collect::<String>()
            )));
        }
        let now = super::unix_millis();
        let file = Arc::clone(&self.file);
        let before = self.head;
        file.write(true, |db| self.replicate_in(db, events, through, now))
            .inspect_err(|_| self.head = before)
    }

    /// A write transaction with the configured durability. With an interval, a [`Syncer`]
    /// makes the commits durable in the background.
    fn begin_append(&self, db: &Database) -> Result<redb::WriteTransaction, redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(match self.settings.durability {
            Durability::EveryCommit => RedbDurability::Immediate,
            Durability::Interval(_) => RedbDurability::None,
        })?;
        Ok(txn)
    }

    fn replicate_in(
        &mut self,
        db: &Database,
        events: &mut [(u64, pb::Event)],
        through: u64,
        now: u64,
    ) -> Result<Vec<Replicated>, redb::Error> {
        let txn = self.begin_append(db)?;
        self.settle_doubt(&txn)?;
        let first_new = self.head + 1;
        let mut head = self.head;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut added_bytes = 0_u64;
        {
            let mut table = txn.open_table(EVENTS)?;
            let mut ids = txn.open_table(IDS)?;
            let mut record = Vec::new();
            for (position, event) in events.iter_mut() {
                let position = *position;
                if position <= head {
                    outcomes.push(match self.take_in_doubt(&table, position)? {
                        Some(frame) => Replicated::Stored(frame),
                        None => Replicated::AlreadyHave,
                    });
                    continue;
                }
                head = position;
                self.in_doubt.remove(&position);
                if let Some(known) = ids.get(event.id.as_str())? {
                    outcomes.push(Replicated::Duplicate(known.value().0));
                    continue;
                }
                event.cursor = self.cursor(position).to_string();
                let frame = encode_event_frame(event);
                record.clear();
                Record::encode(event, now, &frame, &mut record);
                table.insert(position, record.as_slice())?;
                added_bytes += record.len() as u64;
                ids.insert(event.id.as_str(), (position, now))?;
                outcomes.push(Replicated::Stored(frame));
            }
        }
        let head = head.max(through);
        let mut meta = txn.open_table(META)?;
        if added_bytes > 0 {
            let stored = meta.get(BYTES)?.map_or(0, |v| v.value());
            meta.insert(BYTES, stored + added_bytes)?;
        }
        // The head is kept even when the last positions stored nothing (a barrier, a
        // duplicate), so a restart does not read them again.
        meta.insert(REPLICA_HEAD, head)?;
        drop(meta);
        self.forget_old_ids(&txn, now)?;
        if let Err(error) = txn.commit() {
            self.commit_failed(first_new..=head);
            return Err(error.into());
        }
        self.head = head;
        Ok(outcomes)
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

    /// Where each id was stored, if it was (and is still remembered): the dedupe of cluster
    /// mode's writer. Reads on the caller's thread (a blocking read).
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

/// Whether the event stored at `position` is `event` again (a re-send), as opposed to another
/// event under the same id: the same type, user, device and payload. Times, cursor and trace
/// may differ between re-sends (`received_at` always does). Read only for duplicates.
fn stored_is_same(
    table: &impl ReadableTable<u64, &'static [u8]>,
    position: u64,
    event: &pb::Event,
) -> Result<bool, redb::Error> {
    let Some(stored) = table.get(position)? else {
        // Pruned meanwhile: nothing to tell it from.
        return Ok(true);
    };
    let record = Record::decode(stored.value());
    if (record.event_type, record.user_id, record.device_id)
        != (
            event.r#type.as_str(),
            event.user_id.as_str(),
            event.device_id.as_str(),
        )
    {
        return Ok(false);
    }
    let decoded = <pb::SubscribeResponse as prost::Message>::decode(record.frame);
    Ok(match decoded.ok().and_then(|frame| frame.kind) {
        Some(pb::subscribe_response::Kind::Event(stored)) => stored.payload == event.payload,
        // A frame that does not decode (see the hub's unreadable events): the routing facts
        // agreed, which is all that can be told.
        _ => true,
    })
}

/// The id index of a journal: where each remembered event id was stored.
#[derive(Clone)]
pub struct IdIndex {
    file: Arc<JournalFile>,
}

impl IdIndex {
    /// Per event, if its id was stored (and is still remembered): where, and whether the stored
    /// event is another one (see [`Appended::conflict`]). A blocking read: call it off the async
    /// workers.
    pub fn known(&self, events: &[&pb::Event]) -> Result<Vec<Option<Known>>, StoreError> {
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let ids = txn.open_table(IDS).map_err(storage)?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        events
            .iter()
            .map(|event| {
                let Some(position) = ids
                    .get(event.id.as_str())
                    .map_err(storage)?
                    .map(|v| v.value().0)
                else {
                    return Ok(None);
                };
                let conflict = !stored_is_same(&table, position, event).map_err(storage)?;
                Ok(Some(Known { position, conflict }))
            })
            .collect()
    }

    /// Where each id was stored, if it was (and is still remembered). A blocking read: call it
    /// off the async workers.
    pub fn positions_of(&self, ids: &[&str]) -> Result<Vec<Option<u64>>, StoreError> {
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = txn.open_table(IDS).map_err(storage)?;
        ids.iter()
            .map(|id| {
                table
                    .get(*id)
                    .map(|found| found.map(|v| v.value().0))
                    .map_err(storage)
            })
            .collect()
    }
}

impl Journal for RedbJournal {
    fn append(&mut self, events: &mut [pb::Event]) -> Result<Vec<Appended>, StoreError> {
        // A record's strings are length-prefixed with 16 bits. The decoder bounds them far
        // lower; an event past that would be stored other than it was routed, so it is refused.
        if let Some(event) = events.iter().find(|event| !Record::fits(event)) {
            return Err(StoreError::Unavailable(format!(
                "event {:?}: an id, type, user or device is longer than a journal record holds \
                 ({} bytes); the batch was not stored",
                event.id.chars().take(64).collect::<String>(),
                u16::MAX
            )));
        }
        self.append_at(events, super::unix_millis())
    }

    fn head(&self) -> Cursor {
        self.cursor(self.head)
    }

    fn reader(&self) -> Arc<dyn JournalReader> {
        Arc::new(RedbReader {
            file: Arc::clone(&self.file),
        })
    }
}

/// Reads the journal for replay; any number at once, each on its own snapshot.
struct RedbReader {
    file: Arc<JournalFile>,
}

impl JournalReader for RedbReader {
    fn floor(&self) -> Result<u64, StoreError> {
        floor_in(&self.file.db()?.begin_read().map_err(storage)?)
    }

    fn scan(
        &self,
        after: u64,
        limits: ScanLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<Scan, StoreError> {
        // One read transaction: the floor and the events come from the same snapshot, so
        // retention running meanwhile cannot make them disagree.
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let floor = floor_in(&txn)?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let start = after.max(floor);
        let mut scan = Scan {
            floor,
            events: Vec::new(),
            last: start.min(limits.until),
        };
        if start >= limits.until {
            return Ok(scan);
        }
        let range = table.range(start + 1..=limits.until).map_err(storage)?;
        let taken = take_selected(
            range,
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
        // One snapshot for the floor and the events, as in `scan`.
        let db = self.file.db()?;
        let txn = db.begin_read().map_err(storage)?;
        let floor = floor_in(&txn)?;
        let table = txn.open_table(EVENTS).map_err(storage)?;
        let mut scan = BackScan {
            floor,
            events: Vec::new(),
            first: before.max(floor),
        };
        if before <= floor.saturating_add(1) {
            scan.first = floor;
            return Ok(scan);
        }
        let range = table.range(floor + 1..before).map_err(storage)?;
        let taken = take_selected(
            range.rev(),
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
/// next pass starts with it. Only selected frames are copied out of the pages.
fn take_selected<'a>(
    records: impl Iterator<
        Item = Result<
            (
                redb::AccessGuard<'a, u64>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
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
        let (position, record) = entry.map_err(storage)?;
        let record = Record::decode(record.value());
        if select(record.meta()) {
            if !taken.events.is_empty() && bytes + record.frame.len() > max_bytes {
                return Ok(taken);
            }
            bytes += record.frame.len();
            taken.events.push(record.stored(position.value()));
        }
        taken.examined = Some(position.value());
    }
    taken.exhausted = true;
    Ok(taken)
}

/// The journal's floor in `txn`'s snapshot.
fn floor_in(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    let meta = txn.open_table(META).map_err(storage)?;
    Ok(meta.get(FLOOR).map_err(storage)?.map_or(0, |v| v.value()))
}

/// One stored event: `appended_ms` (8 bytes), then id, type, user and device as
/// length-prefixed (u16) strings, then the encoded frame. Written and read only here.
struct Record<'a> {
    appended_ms: u64,
    id: &'a str,
    event_type: &'a str,
    user_id: &'a str,
    device_id: &'a str,
    frame: &'a [u8],
}

impl<'a> Record<'a> {
    /// What a scan's selection looks at.
    fn meta(&self) -> EventMeta<'a> {
        EventMeta {
            event_type: self.event_type,
            user_id: self.user_id,
            device_id: self.device_id,
        }
    }

    /// The record as a scan returns it, at `position` (the frame copied out of the page).
    fn stored(&self, position: u64) -> StoredEvent {
        StoredEvent {
            position,
            event_type: self.event_type.into(),
            user_id: self.user_id.into(),
            device_id: self.device_id.into(),
            frame: Bytes::copy_from_slice(self.frame),
        }
    }

    /// The strings [`Record::encode`] writes, each behind a 16-bit length.
    fn texts(event: &pb::Event) -> [&String; 4] {
        [&event.id, &event.r#type, &event.user_id, &event.device_id]
    }

    /// Whether `event`'s strings fit their 16-bit lengths (checked before a batch is written).
    fn fits(event: &pb::Event) -> bool {
        Self::texts(event)
            .iter()
            .all(|text| u16::try_from(text.len()).is_ok())
    }

    fn encode(event: &pb::Event, appended_ms: u64, frame: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&appended_ms.to_le_bytes());
        for text in Self::texts(event) {
            // `fits` was checked for the whole batch before anything was written.
            let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
        }
        out.extend_from_slice(frame);
    }

    /// Reads a record written by [`Record::encode`]. A record that does not parse (only a bug
    /// or disk corruption past redb's checksums) reads as empty fields, never a panic.
    fn decode(bytes: &'a [u8]) -> Self {
        let mut rest = bytes;
        let appended_ms = rest
            .split_first_chunk::<8>()
            .map(|(head, tail)| {
                rest = tail;
                u64::from_le_bytes(*head)
            })
            .unwrap_or(0);
        let mut text = || -> &'a str {
            let Some((len, tail)) = rest.split_first_chunk::<2>() else {
                return "";
            };
            let len = usize::from(u16::from_le_bytes(*len));
            let (value, tail) = tail.split_at(len.min(tail.len()));
            rest = tail;
            std::str::from_utf8(value).unwrap_or("")
        };
        let (id, event_type, user_id, device_id) = (text(), text(), text(), text());
        Self {
            appended_ms,
            id,
            event_type,
            user_id,
            device_id,
            frame: rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("notify-journal-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }

        fn settings(&self, dedupe_window: Duration) -> JournalSettings {
            JournalSettings {
                dir: self.0.clone(),
                durability: Durability::EveryCommit,
                dedupe_window,
                cache_bytes: 1 << 20,
                min_free_bytes: 0,
            }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Up to `limit` events after `position`, whatever they are.
    fn read_after(reader: &dyn JournalReader, position: u64, limit: usize) -> Vec<StoredEvent> {
        let limits = ScanLimits {
            until: u64::MAX,
            max_scanned: limit,
            max_selected: limit,
            max_bytes: usize::MAX,
        };
        reader.scan(position, limits, &|_| true).unwrap().events
    }

    fn event(id: &str, user: &str) -> pb::Event {
        pb::Event {
            id: id.into(),
            r#type: "device.error".into(),
            user_id: user.into(),
            device_id: "d1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn appends_number_stamp_and_dedupe_within_and_across_batches() {
        let dir = Dir::new("append");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
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
        let dir = Dir::new("conflict");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
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
        let dir = Dir::new("in-doubt");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
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
        let dir = Dir::new("in-doubt-lost");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        journal.append(&mut [event("a", "u1")]).unwrap();
        // Positions 2 and 3 were written by a failed commit that did not land.
        journal.commit_failed(2..=3);
        let out = journal.append(&mut [event("x", "u1")]).unwrap();
        assert_eq!((out[0].cursor.position, out[0].duplicate), (2, false));
        assert!(journal.in_doubt.is_empty(), "{:?}", journal.in_doubt);
    }

    #[test]
    fn an_event_a_record_cannot_hold_is_refused_not_clipped() {
        let dir = Dir::new("too-long");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        let long = event(&"i".repeat(usize::from(u16::MAX) + 1), "u1");
        let error = journal
            .append(&mut [event("ok", "u1"), long])
            .expect_err("refused");
        assert!(error.to_string().contains("journal record"), "{error}");
        // Nothing of the batch was stored.
        assert_eq!(journal.head().position, 0);
        assert!(read_after(&*journal.reader(), 0, 10).is_empty());
    }

    /// A stream's replica: positions and epoch come from the stream; holes are fine; what it
    /// has is not stored again; a duplicate id is reported with its first position; another
    /// epoch empties it; all of it survives a reopen.
    #[test]
    fn a_replica_stores_events_at_the_streams_positions() {
        let dir = Dir::new("replica");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
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
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
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

    #[test]
    fn a_reopened_journal_keeps_its_epoch_head_and_ids() {
        let dir = Dir::new("reopen");
        let epoch = {
            let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
            journal
                .append(&mut [event("a", "u1"), event("b", "u1")])
                .unwrap();
            journal.head().epoch
        };
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        assert_eq!(journal.head(), Cursor { epoch, position: 2 });
        let out = journal
            .append(&mut [event("a", "u1"), event("c", "u1")])
            .unwrap();
        assert!(out[0].duplicate);
        assert_eq!(out[1].cursor.position, 3);
        // A wiped journal is a new epoch.
        drop(journal);
        std::fs::remove_dir_all(&dir.0).unwrap();
        let journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        assert_ne!(journal.head().epoch, epoch);
        assert_eq!(journal.head().position, 0);
    }

    #[test]
    fn readers_see_events_in_order_with_what_routing_needs() {
        let dir = Dir::new("read");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
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

    /// A journal (in its own directory, kept while the returned `Dir` lives) holding positions
    /// 1..=10, the even ones u2's and the odd ones u1's, and a reader of it.
    fn ten_events_even_ones_for_u2(name: &str) -> (Dir, RedbJournal, Arc<dyn JournalReader>) {
        let dir = Dir::new(name);
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        let mut batch: Vec<_> = (1..=10)
            .map(|i| event(&format!("e{i}"), if i % 2 == 0 { "u2" } else { "u1" }))
            .collect();
        journal.append(&mut batch).unwrap();
        let reader = journal.reader();
        (dir, journal, reader)
    }

    #[test]
    fn a_backward_scan_reads_newest_first_within_its_limits_and_ends_at_the_floor() {
        let (_dir, _journal, reader) = ten_events_even_ones_for_u2("scan-back");
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
        let (_dir, journal, reader) = ten_events_even_ones_for_u2("scan");
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
        let pruner = journal.pruner(Retention {
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

    #[test]
    fn ids_older_than_the_dedupe_window_are_forgotten() {
        let dir = Dir::new("window");
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

    #[test]
    fn retention_removes_the_oldest_by_age_and_by_size_and_raises_the_floor() {
        let dir = Dir::new("retention");
        let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        let t0 = crate::store::unix_millis();
        journal
            .append_at(&mut [event("a", "u1"), event("b", "u1")], t0)
            .unwrap();
        journal
            .append_at(&mut [event("c", "u1"), event("d", "u1")], t0 + 10_000)
            .unwrap();
        let reader = journal.reader();
        // By age: 5 s of retention at t0 + 12 s removes a and b only.
        let by_age = journal.pruner(Retention {
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
        let by_size = journal.pruner(Retention {
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
        let journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
        assert_eq!(journal.head(), head);
        assert_eq!(journal.reader().floor().unwrap(), 4);
    }

    /// A journal file cut short (a full disk, a bad copy) used to trip an assertion inside
    /// redb: a panic at start-up instead of the reason.
    #[test]
    fn a_truncated_journal_stops_start_up_with_the_reason_not_a_panic() {
        let dir = Dir::new("truncated");
        {
            let mut journal = RedbJournal::open(dir.settings(Duration::from_secs(3600))).unwrap();
            let mut batch: Vec<_> = (0..200).map(|i| event(&format!("e{i}"), "u1")).collect();
            journal.append(&mut batch).unwrap();
        }
        let path = dir.0.join("journal.redb");
        let len = std::fs::metadata(&path).unwrap().len();
        for cut in [len / 2, 8192, 600] {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut).unwrap();
            drop(file);
            let error = RedbJournal::open(dir.settings(Duration::from_secs(1)))
                .expect_err("a truncated journal does not open");
            let text = error.to_string();
            assert!(text.contains("--data-dir"), "{text}");
            assert!(text.contains(&dir.0.display().to_string()), "{text}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_journal_stops_start_up_with_the_reason() {
        let dir = Dir::new("corrupt");
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(
            dir.0.join("journal.redb"),
            b"not a database, just some bytes",
        )
        .unwrap();
        let error = RedbJournal::open(dir.settings(Duration::from_secs(1))).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("--data-dir"), "{text}");
        assert!(text.contains(&dir.0.display().to_string()), "{text}");
    }
}
