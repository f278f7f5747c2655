//! What the journal's unit tests share: a journal directory of their own, removed when the test
//! ends; events to append; reading back everything after a position.

use std::{path::PathBuf, time::Duration};

use super::{Durability, EVENTS, JournalSettings, RedbJournal};
use crate::{
    pb,
    store::{JournalReader, Scan, ScanLimits, StoreError, StoredEvent},
};

/// A temporary directory holding one journal (in `journal/` inside it, so a test can wipe the
/// journal and open it again); removed when dropped.
pub(super) struct TestDir(tempfile::TempDir);

impl TestDir {
    pub(super) fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("notify-journal-unit-")
                .tempdir()
                .expect("a temporary directory"),
        )
    }

    /// The journal's directory (`--data-dir`).
    pub(super) fn journal(&self) -> PathBuf {
        self.0.path().join("journal")
    }

    /// The journal here, opened with an hour's dedupe window.
    pub(super) fn open(&self) -> RedbJournal {
        RedbJournal::open(self.settings(Duration::from_secs(3600))).expect("the journal opens")
    }

    /// Settings for a journal here, fsync at every commit, with this dedupe window.
    pub(super) fn settings(&self, dedupe_window: Duration) -> JournalSettings {
        JournalSettings {
            dir: self.journal(),
            durability: Durability::EveryCommit,
            dedupe_window,
            cache_bytes: 1 << 20,
            min_free_bytes: 0,
            // Long: every batch of these tests goes through the commit log, and the file gets
            // it when something reads or writes it otherwise.
            checkpoint_interval: Duration::from_secs(3600),
            inbox_types: crate::inbox::InboxSettings::default(),
        }
    }
}

/// Up to `limit` events after `position`, whatever they are.
pub(super) fn read_after(
    reader: &dyn JournalReader,
    position: u64,
    limit: usize,
) -> Vec<StoredEvent> {
    scan_after(reader, position, limit).unwrap().events
}

/// A scan of up to `limit` events after `position`, whatever they are.
pub(super) fn scan_after(
    reader: &dyn JournalReader,
    position: u64,
    limit: usize,
) -> Result<Scan, StoreError> {
    let limits = ScanLimits {
        until: u64::MAX,
        max_scanned: limit,
        max_selected: limit,
        max_bytes: usize::MAX,
    };
    reader.scan(position, limits, &|_| true)
}

/// Overwrites the record at `position` with `bytes`, as only a bug or damage past redb's
/// checksums would.
pub(super) fn overwrite_record(journal: &RedbJournal, position: u64, bytes: &[u8]) {
    journal
        .file
        .write(true, |db| {
            let txn = db.begin_write()?;
            txn.open_table(EVENTS)?.insert(position, bytes)?;
            Ok(txn.commit()?)
        })
        .expect("the record is overwritten");
}

/// An event of type `device.error` about device `d1` of `user`.
pub(super) fn event(id: &str, user: &str) -> pb::Event {
    pb::Event {
        id: id.into(),
        r#type: "device.error".into(),
        user_id: user.into(),
        device_id: "d1".into(),
        ..Default::default()
    }
}
