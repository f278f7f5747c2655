//! Why a hub call failed: a subscription that could not start, a history page that could not be
//! read.

/// Why a subscription could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The server is shutting down and takes no new subscribers.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// `resume_after` is a position this journal has not reached.
    #[error("cursor {0} is ahead of this server's journal")]
    CursorAhead(String),
    /// The journal could not be read.
    #[error("the journal cannot be read: {0}")]
    Journal(String),
}
