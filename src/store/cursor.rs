//! The opaque cursor: a journal epoch and a position in it.
//!
//! Clients see a short hex string and must not parse it; the server needs both halves: the
//! epoch tells whether a cursor comes from this journal at all (a wiped or replaced journal has a
//! new epoch), the position tells where to continue.

use std::fmt;

/// A position in one journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    /// Identifies the journal instance; random when a journal is created.
    pub epoch: u64,
    /// Position of an event in that journal; 0 is "before the first event".
    pub position: u64,
}

/// A cursor string that this server did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor {0:?}: expected a cursor string received from this service")]
pub struct CursorError(pub String);

/// Length of an encoded cursor: two 64-bit numbers in hex.
const ENCODED_LEN: usize = 32;

impl Cursor {
    /// Parses a cursor previously produced by `Display`.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let malformed = || CursorError(text.chars().take(64).collect());
        if text.len() != ENCODED_LEN || !text.is_ascii() {
            return Err(malformed());
        }
        let (epoch, position) = text.split_at(ENCODED_LEN / 2);
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| malformed())?;
        let position = u64::from_str_radix(position, 16).map_err(|_| malformed())?;
        Ok(Self { epoch, position })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:016x}", self.epoch, self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_through_its_text() {
        let cursor = Cursor {
            epoch: 0xdead_beef_0123_4567,
            position: 42,
        };
        let text = cursor.to_string();
        assert_eq!(text.len(), ENCODED_LEN);
        assert_eq!(Cursor::parse(&text), Ok(cursor));
    }

    #[test]
    fn garbage_cursors_are_rejected() {
        for bad in [
            "",
            "abc",
            "zz000000000000000000000000000000",
            "é0000000000000000000000000000000",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
