//! The commit log: `journal.wal` beside `journal.redb`. With `--checkpoint-interval`, a batch
//! is made durable by one append here and one `fdatasync`, and the B-tree's transaction that
//! holds it stays open for more batches, committed to `journal.redb` (the checkpoint) once per
//! interval; a crash loses no acknowledged batch, because opening the journal applies every
//! logged batch the file does not have yet (`logged.rs`).
//!
//! Owns: the log's file, its record format, appending one record, reading the records back.
//! Does not own: what a record's batch does to the journal (`logged.rs` applies it with the
//! writer's own code), or when the log starts over (the writer, after a checkpoint).
//!
//! Why a log in front of the B-tree: a commit to redb rewrites the B-tree pages the batch
//! touched (the event, its id, its inbox's row: pages in different places) and flushes them;
//! at the platform's rates a batch is one or a few events, so each event paid for a whole
//! commit. One append to a file that is already allocated is one write request and a cheap
//! flush; the B-tree's pages are written once per checkpoint for all the batches in it
//! (BENCHMARKS.md §19).
//!
//! A record: `magic (4) | length of the rest (4) | crc32 of what follows it (4) | seq (8) |
//! the journal's epoch (8) | append time in ms (8) | the batch's events, each a length-delimited `Event`. Records are
//! written from the start of the file again after each checkpoint (the file was written with
//! zeros when created, so an append rewrites pages the file already has), so what follows the
//! last record is an older record, zeros, or a torn write: reading stops at the first record
//! that is not the next sequence number or whose checksum fails. The epoch keeps a log left
//! beside a `journal.redb` that was moved aside from being applied to the new journal.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use prost::Message;

use crate::pb;

/// Marks the start of a record.
const MAGIC: u32 = 0x4e42_574c; // "NBWL"
/// `magic | length | crc`.
const HEADER: usize = 12;
/// `seq | epoch | now` after the header.
const FIXED: usize = 24;
/// Written with zeros when the log is created: the usual record (a few KiB) and every append
/// until a checkpoint fit many times over, so appends rewrite allocated pages.
const PREALLOCATED: u64 = 1 << 20;
/// A record claiming more than this is not one (torn or stale bytes): one batch is at most
/// the sequencer's batch of events, each at most the ingest's message limit.
const MAX_RECORD: usize = 1 << 30;

/// One logged batch, read back.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LoggedBatch {
    /// Its sequence number: the journal's `meta` says up to which one the B-tree holds.
    pub(super) seq: u64,
    /// Its append time (ms since the epoch), as the writer used it.
    pub(super) now: u64,
    /// Its events, as the writer was given them.
    pub(super) events: Vec<pb::Event>,
}

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WalError {
    /// The file could not be opened, read, written or flushed.
    #[error("{path}: {source}")]
    Io {
        /// `journal.wal`.
        path: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A record passed its checksum but its events do not decode: only a bug writes one.
    #[error("{path}: the logged batch {seq} does not decode")]
    Undecodable {
        /// `journal.wal`.
        path: String,
        /// Its sequence number.
        seq: u64,
        /// What the decoder found.
        #[source]
        source: prost::DecodeError,
    },
}

/// The open log.
pub(super) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    end: u64,
    /// The record being built, kept to reuse its memory.
    buf: Vec<u8>,
    /// Tests: the next append fails after writing its record.
    #[cfg(test)]
    fail_after_write: bool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("path", &self.path)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (or creates, written with zeros) the log at `path`. The next append starts over at
    /// the beginning: call [`Wal::read`] first to get what it holds.
    pub(super) fn open(path: &Path) -> Result<Self, WalError> {
        let io = |source| WalError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < PREALLOCATED {
            let zeros = vec![0; usize::try_from(PREALLOCATED - len).unwrap_or(0)];
            file.write_all_at(&zeros, len).map_err(io)?;
            file.sync_all().map_err(io)?;
            // The new file's name must survive a crash too.
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            end: 0,
            buf: Vec::new(),
            #[cfg(test)]
            fail_after_write: false,
        })
    }

    /// The batches of the journal of `epoch` logged after `after`, in order: the run of
    /// records from the start of the file whose sequence numbers follow each other, those up to
    /// `after` skipped. Stops at the first record that is torn, stale, of another epoch or
    /// missing.
    pub(super) fn read(&self, epoch: u64, after: u64) -> Result<Vec<LoggedBatch>, WalError> {
        let io = |source| WalError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let len = self.file.metadata().map_err(io)?.len();
        let mut batches = Vec::new();
        let mut at = 0u64;
        let mut previous: Option<u64> = None;
        let mut header = [0u8; HEADER];
        while at + (HEADER + FIXED) as u64 <= len {
            self.file.read_exact_at(&mut header, at).map_err(io)?;
            let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let rest = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
            let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
            if magic != MAGIC
                || !(FIXED..=MAX_RECORD).contains(&rest)
                || at + (HEADER + rest) as u64 > len
            {
                break;
            }
            let mut body = vec![0u8; rest];
            self.file
                .read_exact_at(&mut body, at + HEADER as u64)
                .map_err(io)?;
            if crc32fast::hash(&body) != crc {
                break;
            }
            let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
            let of = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
            if of != epoch || previous.is_some_and(|p| seq != p + 1) {
                // An older record after the newest run: the end of the log.
                break;
            }
            previous = Some(seq);
            at += (HEADER + rest) as u64;
            if seq <= after {
                continue;
            }
            let now = u64::from_le_bytes(body[16..24].try_into().unwrap_or_default());
            let mut events = Vec::new();
            let mut payload = &body[FIXED..];
            while !payload.is_empty() {
                let event = pb::Event::decode_length_delimited(&mut payload).map_err(|source| {
                    WalError::Undecodable {
                        path: self.path.display().to_string(),
                        seq,
                        source,
                    }
                })?;
                events.push(event);
            }
            batches.push(LoggedBatch { seq, now, events });
        }
        Ok(batches)
    }

    /// Appends batch `seq` and flushes it: when this returns `Ok`, the batch survives a crash.
    /// On `Err` the record may or may not have reached the disk.
    pub(super) fn append(
        &mut self,
        seq: u64,
        epoch: u64,
        now: u64,
        events: &[pb::Event],
    ) -> io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&MAGIC.to_le_bytes());
        self.buf.extend_from_slice(&[0; 8]);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&epoch.to_le_bytes());
        self.buf.extend_from_slice(&now.to_le_bytes());
        for event in events {
            // Writing into a Vec cannot fail.
            let _ = event.encode_length_delimited(&mut self.buf);
        }
        let rest = self.buf.len() - HEADER;
        let crc = crc32fast::hash(&self.buf[HEADER..]);
        let rest = u32::try_from(rest).unwrap_or(u32::MAX);
        self.buf[4..8].copy_from_slice(&rest.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&self.buf, self.end)?;
        #[cfg(test)]
        if std::mem::take(&mut self.fail_after_write) {
            return Err(io::Error::other("the flush failed (test)"));
        }
        self.file.sync_data()?;
        self.end += self.buf.len() as u64;
        if self.buf.capacity() > 4 * PREALLOCATED as usize {
            // One huge batch does not pin its memory.
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// After a checkpoint: every record is in `journal.redb`, so the next one starts at the
    /// beginning of the file again.
    pub(super) fn start_over(&mut self) {
        self.end = 0;
    }

    /// Makes every later append fail (its file opened again read-only): a disk that fails.
    #[cfg(test)]
    pub(super) fn fail_appends(&mut self) {
        self.file = File::open(&self.path).expect("the log opens read-only");
    }

    /// Makes the next append write its record and then fail, as a flush that fails after the
    /// record reached the file.
    #[cfg(test)]
    pub(super) fn fail_after_writing(&mut self) {
        self.fail_after_write = true;
    }

    /// Undoes [`Wal::fail_appends`].
    #[cfg(test)]
    pub(super) fn heal(&mut self) {
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("the log opens");
    }

    /// Whether nothing was appended since the last [`Wal::start_over`].
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.end == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> pb::Event {
        pb::Event {
            id: id.into(),
            r#type: "device.error".into(),
            user_id: "u1".into(),
            ..pb::Event::default()
        }
    }

    fn ids(batches: &[LoggedBatch]) -> Vec<(u64, Vec<String>)> {
        batches
            .iter()
            .map(|b| (b.seq, b.events.iter().map(|e| e.id.clone()).collect()))
            .collect()
    }

    #[test]
    fn appended_batches_read_back_in_order_after_the_given_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.wal");
        let mut wal = Wal::open(&path).unwrap();
        wal.append(1, 9, 10, &[event("a"), event("b")]).unwrap();
        wal.append(2, 9, 11, &[]).unwrap();
        wal.append(3, 9, 12, &[event("c")]).unwrap();
        let reopened = Wal::open(&path).unwrap();
        let all = reopened.read(9, 0).unwrap();
        assert_eq!(
            ids(&all),
            [
                (1, vec!["a".into(), "b".into()]),
                (2, vec![]),
                (3, vec!["c".into()])
            ]
        );
        assert_eq!(all[2].now, 12);
        assert_eq!(all[0].events[0], event("a"));
        assert_eq!(ids(&reopened.read(9, 2).unwrap()), [(3, vec!["c".into()])]);
        // The log of another journal (its journal.redb moved aside) is not this one's.
        assert_eq!(reopened.read(10, 0).unwrap(), []);
    }

    /// After a checkpoint the log is written from the start again: the older records behind
    /// the new ones are not read, nor is a torn last record.
    #[test]
    fn reading_stops_at_stale_and_torn_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.wal");
        let mut wal = Wal::open(&path).unwrap();
        for seq in 1..=5 {
            wal.append(seq, 9, 0, &[event(&format!("old{seq}"))])
                .unwrap();
        }
        wal.start_over();
        assert!(wal.is_empty());
        wal.append(6, 9, 0, &[event("new6")]).unwrap();
        let end = wal.end;
        wal.append(7, 9, 0, &[event("new7")]).unwrap();
        assert_eq!(
            ids(&wal.read(9, 5).unwrap()),
            [(6, vec!["new6".into()]), (7, vec!["new7".into()])]
        );
        // Record 7 torn: one byte of it flipped.
        let mut byte = [0u8];
        wal.file.read_exact_at(&mut byte, end + 20).unwrap();
        wal.file.write_all_at(&[byte[0] ^ 0xff], end + 20).unwrap();
        assert_eq!(ids(&wal.read(9, 5).unwrap()), [(6, vec!["new6".into()])]);
        // Once more from the start: only the new record counts.
        wal.start_over();
        wal.append(8, 9, 0, &[]).unwrap();
        assert_eq!(ids(&wal.read(9, 8).unwrap()), []);
        assert_eq!(ids(&wal.read(9, 7).unwrap()), [(8, vec![])]);
    }

    #[test]
    fn a_new_log_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(&dir.path().join("journal.wal")).unwrap();
        assert_eq!(wal.read(9, 0).unwrap(), []);
        assert_eq!(
            std::fs::metadata(dir.path().join("journal.wal"))
                .unwrap()
                .len(),
            PREALLOCATED
        );
    }
}
