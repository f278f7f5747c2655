//! The journal: assigns every accepted event its position and cursor, and recognises events it
//! has already accepted (dedupe by event id).
//!
//! Owns: positions, epochs, cursors, the dedupe window. Does not own: decoding (`schema`),
//! routing (`hub`), or the order in which callers append (the `sequencer` is the only writer).
//!
//! Today the only journal is [`MemoryJournal`]: positions and a bounded window of recent ids,
//! nothing retained, so a resume from an older cursor reports a gap. The durable journal will
//! implement the same [`Journal`] trait, so the sequencer, hub and grpc do not change.

mod cursor;
mod memory;

pub use cursor::{Cursor, CursorError};
pub use memory::MemoryJournal;

/// The outcome of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's position: new, or the one it got the first time if `duplicate`.
    pub cursor: Cursor,
    /// The id was already in the journal; the event was not stored again.
    pub duplicate: bool,
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The journal cannot take writes (e.g. storage failure); callers must not ack.
    #[error("journal unavailable: {0}")]
    Unavailable(String),
}

/// The interface the rest of the server uses to store events.
///
/// Appends come from one writer (the sequencer) in batches, so an implementation can commit a
/// whole batch at once.
pub trait Journal: Send + 'static {
    /// Stores the events identified by `ids`, in order, returning one outcome per id. An id
    /// already present (or repeated within the batch) is reported as a duplicate with its
    /// first position.
    fn append(&mut self, ids: &[&str]) -> Result<Vec<Appended>, StoreError>;

    /// The position of the last stored event (position 0 in an empty journal).
    fn head(&self) -> Cursor;

    /// The oldest position a resume can still continue after without a gap.
    fn oldest_resumable(&self) -> Cursor;
}
