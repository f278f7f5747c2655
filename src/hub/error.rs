//! Why a hub call failed: a subscription that could not start, a history page that could not be
//! read.

use super::ReadError;

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The server is shutting down and takes no new subscribers.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// `resume_after` is a position this journal has not reached.
    #[error("cursor {0} is ahead of this server's journal")]
    CursorAhead(String),
    /// The journal could not be read.
    #[error("the journal cannot be read")]
    Journal(#[source] ReadError),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::store::StoreError;

    /// The binary and the logs print error chains: the hub's message must not repeat the read's,
    /// which comes next in the chain as its source.
    #[test]
    fn a_journal_error_names_its_cause_once_as_its_source() {
        let error = HubError::Journal(StoreError::Unavailable("disk gone".into()).into());
        assert_eq!(error.to_string(), "the journal cannot be read");
        let source = error.source().expect("the read's error");
        assert_eq!(source.to_string(), "journal unavailable: disk gone");
    }
}
