//! The one place where errors of the domain become gRPC statuses.
//!
//! Each module has its own error type; this file decides which code each becomes and what the
//! client reads. Messages name the field or limit at fault and never leak internals.

use tonic::{Code, Status};

use crate::{
    auth::{AuthError, Denied},
    grpc::limits::LimitError,
    hub::{EndReason, FilterError, HubError},
    inbox::PreferencesError,
    schema::DecodeError,
    store::{Cursor, CursorError, StoreError},
    telemetry::Chain,
    telemetry::Metrics,
    write::WriteError,
};

/// Anything a `NotificationService` call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The published body could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The subscription's filters are invalid.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A cursor field (`resume_after`, `after`, `before`) is not a cursor.
    #[error("{field}: {reason}")]
    Cursor {
        /// The request field.
        field: &'static str,
        /// Why it is not a cursor (part of the message the client reads, so not a source).
        reason: CursorError,
    },
    /// The hub refused the subscription.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The journal's writer did not take the event.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A request field is missing.
    #[error("{0} is required")]
    Missing(&'static str),
    /// Request fields that exclude each other were both set.
    #[error("{0}")]
    Conflicting(&'static str),
    /// No valid token.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A valid token that may not do this.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// A resource limit of the gRPC port.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// Preferences that cannot be stored, with the field at fault.
    #[error(transparent)]
    Preferences(#[from] PreferencesError),
    /// A request field has a value it may not have.
    #[error("{field}: {why}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// The inbox's state could not be read.
    #[error("reading the inbox failed")]
    InboxRead(#[source] StoreError),
}

impl ApiError {
    /// A short code for the `notify_rejected_total{reason}` metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.reason(),
            Self::Filter(
                FilterError::TooManyPatterns { .. } | FilterError::PatternTooLong { .. },
            ) => "limit_event_types",
            Self::Filter(_) => "bad_filter",
            Self::Cursor { .. } => "bad_cursor",
            Self::Hub(HubError::CursorAhead(_)) => "bad_cursor",
            Self::Hub(HubError::ShuttingDown | HubError::Journal(_)) | Self::Write(_) => {
                "unavailable"
            }
            Self::Missing(_) => "missing_field",
            Self::Conflicting(_) => "conflicting_fields",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Denied(_) => "permission_denied",
            Self::Limit(limit) => limit.reason(),
            Self::Preferences(_) => "bad_preferences",
            Self::Invalid { .. } => "bad_request",
            Self::InboxRead(_) => "unavailable",
        }
    }
}

/// Counts a refused request under its reason and gives the status the client reads.
pub(super) fn rejected(metrics: &Metrics, error: ApiError) -> Status {
    metrics.record_rejected(error.reason());
    error.into()
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let code = match &error {
            // Over a limit: the request may be fine, the server will not spend more on it.
            ApiError::Limit(_)
            | ApiError::Decode(DecodeError::TooLarge { .. })
            | ApiError::Filter(
                FilterError::TooManyPatterns { .. } | FilterError::PatternTooLong { .. },
            ) => Code::ResourceExhausted,
            ApiError::Decode(_)
            | ApiError::Filter(_)
            | ApiError::Cursor { .. }
            | ApiError::Hub(HubError::CursorAhead(_))
            | ApiError::Missing(_)
            | ApiError::Conflicting(_)
            | ApiError::Preferences(_)
            | ApiError::Invalid { .. } => Code::InvalidArgument,
            ApiError::InboxRead(detail) => {
                tracing::error!(error = %Chain(detail), "reading the inbox failed");
                return Status::unavailable("the journal is unavailable; retry later");
            }
            ApiError::Write(WriteError::ConflictingId { .. }) => Code::AlreadyExists,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Denied(_) => Code::PermissionDenied,
            ApiError::Hub(HubError::ShuttingDown) | ApiError::Write(WriteError::Stopped) => {
                Code::Unavailable
            }
            ApiError::Hub(HubError::Journal(detail)) => {
                // The details are for the operator's log, not for clients.
                tracing::error!(error = %Chain(detail), "reading the journal failed");
                return Status::unavailable("the journal is unavailable; retry later");
            }
            ApiError::Write(WriteError::Journal(StoreError::DiskFull { .. })) => {
                // Reported once by the journal's health (log, metrics, readiness), not here.
                return Status::unavailable(
                    "the server's journal disk is full: new events are refused until space is \
                     freed (reads and open streams go on); retry later",
                );
            }
            ApiError::Write(WriteError::Journal(store)) => {
                // The details are for the operator's log, not for clients. Refusals the
                // journal's health reports already are logged quietly.
                if store.is_health_refusal() {
                    tracing::debug!(error = %Chain(store), "publish refused: journal unavailable");
                } else {
                    tracing::error!(error = %Chain(store), "publish failed: journal unavailable");
                }
                return Status::unavailable("the journal is unavailable; retry later");
            }
            ApiError::Write(error @ WriteError::Cluster(_)) => {
                // The broker's trouble, not the journal's: said so in the log. Clients read
                // what they read for any journal they cannot reach now.
                tracing::error!(error = %Chain(error), "publish failed: the cluster's broker failed");
                return Status::unavailable("the journal is unavailable; retry later");
            }
        };
        Status::new(code, error.to_string())
    }
}

/// A limit's refusal, answered by the `Shed` layer before any service runs, as every RPC answers
/// it.
impl From<LimitError> for Status {
    fn from(error: LimitError) -> Self {
        ApiError::Limit(error).into()
    }
}

/// The status that ends a stream whose token expired: reconnect with a fresh token.
pub fn token_expired_status(last: Cursor) -> Status {
    Status::unauthenticated(format!(
        "token expired; last cursor sent: {last}; resubscribe with a fresh token and \
         resume_after={last}"
    ))
}

/// The status that ends a stream the server ended: why, and the cursor to resume after.
pub fn stream_end_status(reason: EndReason, last: Cursor) -> Status {
    match reason {
        EndReason::JournalUnavailable => Status::unavailable(format!(
            "the journal cannot be read right now; last cursor sent: {last}; resubscribe with \
             resume_after={last}"
        )),
        EndReason::ShuttingDown => Status::unavailable(format!(
            "server is shutting down; last cursor sent: {last}; resubscribe with resume_after={last}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Denied, grpc::limits::LimitError, store::StoreError};

    /// The `Shed` layer recognises tonic's own refusal of an oversized request message by its
    /// code, OUT_OF_RANGE, alone: that holds only while no error of ours maps to it.
    #[test]
    fn no_error_of_ours_answers_out_of_range() {
        let errors = [
            ApiError::Decode(DecodeError::NotUtf8),
            ApiError::Decode(DecodeError::TooLarge {
                what: "body",
                size: 2,
                limit: 1,
            }),
            ApiError::Filter(FilterError::SelectsNothing),
            ApiError::Filter(FilterError::TooManyPatterns { count: 2, limit: 1 }),
            ApiError::Cursor {
                field: "after",
                reason: CursorError("x".into()),
            },
            ApiError::Hub(HubError::ShuttingDown),
            ApiError::Hub(HubError::CursorAhead("c".into())),
            ApiError::Hub(HubError::Journal(
                StoreError::Unavailable("disk".into()).into(),
            )),
            ApiError::Write(WriteError::Stopped),
            ApiError::Write(WriteError::Journal(StoreError::Unavailable("disk".into()))),
            ApiError::Write(WriteError::cluster(std::io::Error::other("broker"))),
            ApiError::Missing("body"),
            ApiError::Conflicting("after and before"),
            ApiError::Unauthenticated(AuthError::Expired),
            ApiError::Denied(Denied::Publish),
            ApiError::Limit(LimitError::MessageTooLarge),
            ApiError::Limit(LimitError::UnauthenticatedStreams { limit: 1 }),
        ];
        for error in errors {
            let shown = format!("{error:?}");
            let status = Status::from(error);
            assert_ne!(status.code(), Code::OutOfRange, "{shown}");
        }
        for reason in [EndReason::ShuttingDown, EndReason::JournalUnavailable] {
            let cursor = Cursor {
                epoch: 1,
                position: 2,
            };
            assert_ne!(stream_end_status(reason, cursor).code(), Code::OutOfRange);
        }
    }
}
