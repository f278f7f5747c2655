//! The journal: assigns every accepted event its position and cursor, stores it durably,
//! recognises events it has already accepted (dedupe by event id), and reads them back for
//! replay.
//!
//! Owns: positions, epochs, cursors, the dedupe window, the encoded form of a stored event.
//! Does not own: decoding (`schema`), routing (`hub`), or the order in which callers append (the
//! `sequencer` is the only writer).
//!
//! The server uses [`RedbJournal`], one redb file under `--data-dir`. Everything else sees the
//! [`Journal`] and [`JournalReader`] traits, so a later journal (a RabbitMQ stream, for
//! multi-node deployments) can replace it without touching hub or grpc.

mod cursor;
mod file;
mod redb;

pub use cursor::{Cursor, CursorError};
pub use file::JournalHealth;
pub use redb::{
    Durability, IdIndex, JournalMonitor, JournalSettings, Known, OpenError, Pruner, RedbJournal,
    ReplicaInbox, Replicated, RetentionSettings, Syncer,
};

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    inbox::{Applied, Command, Counts, Family, InboxKey, ItemState, Preferences, Update},
    pb,
};

/// The outcome of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event's position: new, or the one it got the first time if `duplicate`.
    pub cursor: Cursor,
    /// The id was already in the journal; the event was not stored again.
    pub duplicate: bool,
    /// With `duplicate`: the stored event of that id is another event (its type, user, device
    /// or payload differ), not a re-send of this one. `cursor` is then the stored one's, which
    /// is not this event's position: callers must not hand it to the producer.
    pub conflict: bool,
    /// For a new event: `SubscribeResponse { event }` encoded, cursor included, exactly as
    /// stored — the hub sends these bytes, so live and replayed events are the same bytes.
    pub frame: Option<Bytes>,
}

/// Why an append or a read failed. Callers must not ack what an error answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The journal cannot take writes or be read, for the reason given (a reason of the
    /// caller's own, with no error underneath; a failure of the storage engine is `Read` or
    /// `Storage`, with its source).
    #[error("journal unavailable: {0}")]
    Unavailable(String),
    /// Reading the journal failed in the storage engine: a read transaction, a table or a page
    /// could not be read. The engine's error follows in the chain.
    #[error("journal unavailable: reading it failed")]
    Read(#[source] Arc<::redb::Error>),
    /// A stored record does not decode (only a bug or damage past redb's checksums makes one):
    /// the read that met it stops there, and says where.
    #[error("the journal's record at position {position} does not decode")]
    Corrupt {
        /// The record's position.
        position: u64,
        /// What the decoder found.
        #[source]
        source: prost::DecodeError,
    },
    /// The disk holding the journal has less than the reserve available: the write was refused
    /// before it reached the file (nothing of it is stored). Reads go on; writes resume by
    /// themselves once there is room.
    #[error(
        "the journal's disk is full: {free_bytes} bytes available, writes resume at \
         {min_free_bytes} (--journal-min-free)"
    )]
    DiskFull {
        /// Bytes available when the write was refused.
        free_bytes: u64,
        /// Writes resume once at least this much is available.
        min_free_bytes: u64,
    },
    /// The storage engine failed (an I/O error, a full disk it met first); nothing of the
    /// transaction is stored. The file is reopened, so the journal recovers by itself.
    #[error("journal storage failed")]
    Storage(#[source] Arc<::redb::Error>),
    /// Writing the commit log (`journal.wal`) failed; nothing of the batch is acknowledged (it
    /// may have reached the log: its positions are in doubt, as after a failed commit).
    #[error("writing the journal's commit log (journal.wal) failed")]
    CommitLog(#[source] Arc<std::io::Error>),
    /// The journal's file is being opened again after a storage failure.
    #[error("the journal is being reopened after a storage failure")]
    Reopening,
}

impl StoreError {
    /// Whether this is the journal's own refusal while it is unhealthy (a full disk, a storage
    /// failure, a reopen): the journal's health reports it once, so callers log it quietly.
    pub fn is_health_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull { .. }
                | StoreError::Storage(_)
                | StoreError::CommitLog(_)
                | StoreError::Reopening
        )
    }
}

/// One event read back from the journal: what routing and authorization need, and its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its position.
    pub position: u64,
    /// `Event.type`.
    pub event_type: Box<str>,
    /// `Event.user_id` (empty: about no user).
    pub user_id: Box<str>,
    /// `Event.device_id` (empty: none).
    pub device_id: Box<str>,
    /// The encoded `SubscribeResponse { event }`.
    pub frame: Bytes,
}

impl StoredEvent {
    /// Its routing facts.
    #[cfg(test)]
    pub fn meta(&self) -> EventMeta<'_> {
        EventMeta {
            event_type: &self.event_type,
            user_id: &self.user_id,
            device_id: &self.device_id,
        }
    }
}

/// What one [`Journal::write`] did: the events' outcomes, the commands' outcomes, and what the
/// inboxes' owners are told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// One per event, in order.
    pub appended: Vec<Appended>,
    /// The positions of new events whose type the user they are about has disabled: not
    /// pushed live on that user's own streams (they stay in history).
    pub muted: Vec<u64>,
    /// One per command, in order.
    pub applied: Vec<Applied>,
    /// The inboxes that changed, in order: what their owners' streams are told.
    pub updates: Vec<Update>,
}

/// The writer's interface to the journal.
///
/// Appends come from one writer (the sequencer) in batches, so an implementation commits a
/// whole batch at once (group commit). `append` blocks on storage: call it off the async
/// workers.
pub trait Journal: Send + 'static {
    /// Stores `events` in order and durably (per the journal's durability setting) before it
    /// returns, stamping each new event's `cursor`. An id already present (or repeated within
    /// the batch) is reported as a duplicate with its first position and not stored again.
    /// On error nothing of the batch is stored.
    fn append(&mut self, events: &mut [pb::Event]) -> Result<Vec<Appended>, StoreError>;

    /// [`Journal::append`], then applies `commands` to the inboxes, in order, in the same
    /// transaction: the events' items and the commands' changes are stored with the events or
    /// not at all. A journal without inbox state refuses commands.
    fn write(
        &mut self,
        events: &mut [pb::Event],
        commands: &[Command],
    ) -> Result<Written, StoreError> {
        if !commands.is_empty() {
            return Err(StoreError::Unavailable(
                "this journal keeps no inbox".into(),
            ));
        }
        Ok(Written {
            appended: self.append(events)?,
            ..Written::default()
        })
    }

    /// The position of the last stored event (the floor in an empty journal).
    fn head(&self) -> Cursor;

    /// A reader for replay, usable from any thread while appends go on.
    fn reader(&self) -> Arc<dyn JournalReader>;
}

/// What routing and authorization need to know of a stored event, read without its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta<'a> {
    /// `Event.type`.
    pub event_type: &'a str,
    /// `Event.user_id` (empty: about no user).
    pub user_id: &'a str,
    /// `Event.device_id` (empty: none).
    pub device_id: &'a str,
}

/// How much one [`JournalReader::scan`] may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// Read no event beyond this position.
    pub until: u64,
    /// Examine at most this many stored events, selected or not: this bounds the time one scan
    /// takes when few events are selected.
    pub max_scanned: usize,
    /// Return at most this many selected events: this bounds the memory of one scan.
    pub max_selected: usize,
    /// Return at most this many bytes of frames, but always at least one event: the next
    /// selected event that would go over ends the scan before it (`last` stays before it).
    pub max_bytes: usize,
}

/// How much one [`JournalReader::scan_back`] may do: the bounds of [`ScanLimits`], without an
/// end (a backward scan ends at the floor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackLimits {
    /// Examine at most this many stored events, selected or not.
    pub max_scanned: usize,
    /// Return at most this many selected events.
    pub max_selected: usize,
    /// Return at most this many bytes of frames, but always at least one event.
    pub max_bytes: usize,
}

/// The outcome of one [`JournalReader::scan_back`], all from one consistent view of the
/// journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackScan {
    /// The journal's floor in that view: events at or below it are gone.
    pub floor: u64,
    /// The selected events, newest first.
    pub events: Vec<StoredEvent>,
    /// Every event from this position up to the scan's start has been examined: the next
    /// (older) scan continues before it. The floor when the scan reached it (nothing older is
    /// left).
    pub first: u64,
}

/// The outcome of one [`JournalReader::scan`], all from one consistent view of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The journal's floor in that view: events at or below it are gone (retention). The scan
    /// started after `max(after, floor)`.
    pub floor: u64,
    /// The selected events, in order.
    pub events: Vec<StoredEvent>,
    /// Every event up to this position has been examined: `limits.until` when the scan reached
    /// it, else the last position examined. Never below `max(after, floor)` clamped to `until`.
    pub last: u64,
}

/// Which items of an inbox a page reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    /// By state.
    pub filter: pb::InboxFilter,
    /// By family; empty: all.
    pub families: Vec<Family>,
    /// Items before this position; `None`: from the newest.
    pub before: Option<u64>,
    /// At most this many items.
    pub limit: usize,
    /// Examine at most this many items, selected or not (a filter that selects few).
    pub max_scanned: usize,
}

/// One item of an [`InboxPage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageItem {
    /// Its event's position.
    pub position: u64,
    /// Its state.
    pub state: ItemState,
    /// Its family.
    pub family: Family,
    /// The event's stored frame (`SubscribeResponse { event }`).
    pub frame: Bytes,
}

/// A page of an inbox, newest first, and its counts, from one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPage {
    /// The items.
    pub items: Vec<PageItem>,
    /// Every item from here up to the page's start was examined: the next page reads before
    /// it.
    pub next_before: u64,
    /// Nothing older is left.
    pub end: bool,
    /// The inbox's counts.
    pub counts: Counts,
}

/// Reads the inboxes' state; cheap to share. Reads wait for storage: call them off the async
/// workers (a count is one lookup, cheap enough for a stream's opening).
pub trait InboxReader: Send + Sync {
    /// An inbox's counts.
    fn counts(&self, inbox: &InboxKey) -> Result<Counts, StoreError>;

    /// A page of an inbox.
    fn page(&self, inbox: &InboxKey, query: &PageQuery) -> Result<InboxPage, StoreError>;

    /// A user's preferences (`None`: never set).
    fn preferences(&self, user: &str) -> Result<Option<Preferences>, StoreError>;

    /// Whether `admin`'s admin inbox exists.
    fn admin_known(&self, admin: &str) -> Result<bool, StoreError>;
}

/// Reads stored events; cheap to share. Reads wait for storage: call them off the async
/// workers.
pub trait JournalReader: Send + Sync {
    /// Events at or below this position are gone (retention); a resume from below it has a
    /// gap.
    fn floor(&self) -> Result<u64, StoreError>;

    /// Examines the events after `after` (and after the floor) up to `limits.until`, in order,
    /// and returns those `select` picks, stopping at whichever limit comes first. Only selected
    /// events' frames are read into memory.
    fn scan(
        &self,
        after: u64,
        limits: ScanLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<Scan, StoreError>;

    /// Examines the events before `before` (and after the floor), newest first, and returns
    /// those `select` picks, stopping at whichever limit comes first: the newest history of a
    /// subscriber, for a console's first paint.
    fn scan_back(
        &self,
        before: u64,
        limits: BackLimits,
        select: &dyn Fn(EventMeta<'_>) -> bool,
    ) -> Result<BackScan, StoreError>;

    /// The inboxes' state, for a journal that keeps it.
    fn inbox(&self) -> Option<&dyn InboxReader> {
        None
    }
}

/// [`JournalReader::scan`] over events already in memory, in order (the journals of tests).
#[cfg(test)]
pub fn scan_slice<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
    floor: u64,
    after: u64,
    limits: ScanLimits,
    select: &dyn Fn(EventMeta<'_>) -> bool,
) -> Scan {
    let start = after.max(floor);
    let mut scan = Scan {
        floor,
        events: Vec::new(),
        last: start.min(limits.until),
    };
    let mut scanned = 0;
    let mut bytes = 0;
    let mut stopped = false;
    for event in events {
        if event.position <= start {
            continue;
        }
        if event.position > limits.until {
            break;
        }
        if scanned == limits.max_scanned || scan.events.len() == limits.max_selected {
            stopped = true;
            break;
        }
        if select(event.meta()) {
            if !scan.events.is_empty() && bytes + event.frame.len() > limits.max_bytes {
                stopped = true;
                break;
            }
            bytes += event.frame.len();
            scan.events.push(event.clone());
        }
        scanned += 1;
        scan.last = event.position;
    }
    if !stopped {
        scan.last = scan.last.max(limits.until);
    }
    scan
}

/// [`JournalReader::scan_back`] over events already in memory, in order (the journals of
/// tests).
#[cfg(test)]
pub fn scan_slice_back<'a>(
    events: impl DoubleEndedIterator<Item = &'a StoredEvent>,
    floor: u64,
    before: u64,
    limits: BackLimits,
    select: &dyn Fn(EventMeta<'_>) -> bool,
) -> BackScan {
    let mut scan = BackScan {
        floor,
        events: Vec::new(),
        first: before.max(floor),
    };
    let mut scanned = 0;
    let mut bytes = 0;
    for event in events.rev() {
        if event.position >= before {
            continue;
        }
        if event.position <= floor {
            break;
        }
        if scanned == limits.max_scanned || scan.events.len() == limits.max_selected {
            return scan;
        }
        if select(event.meta()) {
            if !scan.events.is_empty() && bytes + event.frame.len() > limits.max_bytes {
                return scan;
            }
            bytes += event.frame.len();
            scan.events.push(event.clone());
        }
        scanned += 1;
        scan.first = event.position;
    }
    scan.first = floor;
    scan
}

/// Encodes `SubscribeResponse { event }` without cloning the event.
pub fn encode_event_frame(event: &pb::Event) -> Bytes {
    const EVENT_FIELD: u32 = 1;
    let len = prost::encoding::message::encoded_len(EVENT_FIELD, event);
    let mut buf = Vec::with_capacity(len);
    prost::encoding::message::encode(EVENT_FIELD, event, &mut buf);
    Bytes::from(buf)
}

/// Milliseconds since the Unix epoch: the journal's clock for append times and retention.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
