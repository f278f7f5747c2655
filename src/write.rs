//! The write contract: where an accepted event goes, and what its submitter learns.
//!
//! Owns: the [`Writer`] trait (submit with backpressure, submit with a trace, and the hooks an
//! AMQP ingest session calls), the [`Receipt`] a submission resolves through, what it yields
//! ([`Published`]) and why it fails ([`WriteError`]). Does not own: any writer. Three implement
//! it: the single node's sequencer (`sequencer`), and in cluster mode the writer node's
//! `cluster::StreamWriter` (the shared ingest queue's consumer) and `cluster::Forwarder`
//! (`Publish` on any node). The ingest and the gRPC services see only this trait.
//!
//! A leaf of the module map: it imports only `schema`, `store`, `inbox` and `otel` types (and lapin's
//! channel, for the ingest's session hook), so every stage of the write path can import it
//! without importing another stage.
//!
//! Dispatch: [`Writer`] is object-safe and its submission future is boxed, so the gRPC service
//! holds one `Arc<dyn Writer>` whatever the node's mode, and the ingest takes any writer
//! (generic, so its session hooks are static calls). The box is one small allocation per event,
//! beside a channel send, a share of a journal commit and the fan-out the event leads to; the
//! receipt itself is not boxed (a oneshot receiver, as before).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::sync::oneshot;

use crate::{
    inbox::{Applied, Command},
    otel::EventTrace,
    schema::Decoded,
    store::Cursor,
    store::StoreError,
};

/// The outcome of publishing one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub id: String,
    /// Its cursor (the first one, for a duplicate).
    pub cursor: Cursor,
    /// It had been accepted before; nothing was sent again.
    pub duplicate: bool,
}

/// A failure of the broker path in cluster mode: whatever kept the event from the journal
/// stream or its answer from the caller (the cluster's own typed errors, shared by every
/// submission of a batch).
pub type ClusterFailure = Arc<dyn std::error::Error + Send + Sync>;

/// Why an event was not published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The writer has stopped (shutdown).
    #[error("the server is shutting down")]
    Stopped,
    /// The journal refused the batch.
    #[error(transparent)]
    Journal(#[from] StoreError),
    /// Cluster mode: the event did not reach the journal stream through the broker, or the
    /// writer's answer did not come back. Not the journal's state: the broker's, or the
    /// writer's connection to it.
    #[error("the cluster's broker failed")]
    Cluster(#[source] ClusterFailure),
    /// The event's id is stored already for another event (another type, user, device or
    /// payload): this one is not stored, and the stored one's position is not given out.
    #[error("event id {id:?} {}", crate::schema::CONFLICTING_ID)]
    ConflictingId {
        /// The id.
        id: String,
    },
}

impl WriteError {
    /// A [`WriteError::Cluster`] of `error`.
    pub fn cluster(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Cluster(Arc::new(error))
    }
}

/// Where a writer answers one submission.
pub type Reply = oneshot::Sender<Result<Published, WriteError>>;

/// The pending outcome of one submitted event: resolves once the event is stored (or recognised
/// as a duplicate) and, on one node, routed. One writer's receipts resolve in submission order,
/// which is also the order of the events in the journal, so a caller can keep many in flight
/// and still acknowledge them in order. A writer that drops the reply (it stopped) resolves it
/// to [`WriteError::Stopped`].
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Result<Published, WriteError>>);

impl Receipt {
    /// A receipt and the reply that answers it.
    pub fn new() -> (Reply, Self) {
        let (reply, response) = oneshot::channel();
        (reply, Self(response))
    }
}

impl Future for Receipt {
    type Output = Result<Published, WriteError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|reply| reply.unwrap_or(Err(WriteError::Stopped)))
    }
}

/// A submission on its way into a writer's queue.
pub type Submitting<'a> = Pin<Box<dyn Future<Output = Result<Receipt, WriteError>> + Send + 'a>>;

/// Where a writer answers one inbox command.
pub type InboxReply = oneshot::Sender<Result<Applied, WriteError>>;

/// An inbox command on its way through a writer: resolves once it is stored and applied.
pub type Applying<'a> = Pin<Box<dyn Future<Output = Result<Applied, WriteError>> + Send + 'a>>;

/// Where accepted events go: the journal's one writer, as this node reaches it.
pub trait Writer: Send + Sync + 'static {
    /// Queues one event for the journal, with its trace when it is sampled (its journal and
    /// fan-out spans go there; a writer that records no spans of its own ends the trace here).
    /// Waits only while the writer's queue is full: that wait is the backpressure an ingest
    /// passes on.
    fn submit_traced(&self, decoded: Decoded, trace: Option<EventTrace>) -> Submitting<'_>;

    /// Applies one inbox command (a mark, preferences, an admin's first use of their inbox)
    /// through the journal's writer, in order with the events; resolves once it is stored, with
    /// what it did. Waits while the writer's queue is full, like an event.
    fn submit_inbox(&self, command: Command) -> Applying<'_> {
        let _ = command;
        Box::pin(std::future::ready(Err(WriteError::Journal(
            StoreError::Unavailable("this writer keeps no inbox".into()),
        ))))
    }

    /// [`Writer::submit_traced`] without a trace.
    fn submit(&self, decoded: Decoded) -> Submitting<'_> {
        self.submit_traced(decoded, None)
    }

    /// A new broker session of the AMQP ingest started consuming on `channel`: what the writer
    /// knew of the queue's state may be stale. Cluster mode's writer appends on that channel
    /// (so a dead session's appends are fenced by the broker) and synchronises with the journal
    /// again.
    fn session_started(&self, _channel: &lapin::Channel) {}

    /// A probe reached the ingest session that started last: it is the queue's active consumer.
    /// The probe is acked once the returned future resolves (cluster mode's writer synchronises
    /// with the journal first).
    fn session_active(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }

    /// The ingest session that started last ended (shutdown or a failure): it consumes no more.
    fn session_ended(&self) {}
}

/// Submits one event and waits for its outcome.
pub async fn publish(
    writer: &dyn Writer,
    decoded: Decoded,
    trace: Option<EventTrace>,
) -> Result<Published, WriteError> {
    writer.submit_traced(decoded, trace).await?.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let error = WriteError::cluster(Outer(std::io::Error::other("inner")));
        assert_eq!(
            Chain(&error).to_string(),
            "the cluster's broker failed: outer: inner"
        );
        assert_eq!(error.to_string(), "the cluster's broker failed");
    }

    #[tokio::test]
    async fn a_dropped_reply_reads_as_stopped() {
        let (reply, receipt) = Receipt::new();
        drop(reply);
        assert!(matches!(receipt.await, Err(WriteError::Stopped)));
        let (reply, receipt) = Receipt::new();
        let _ = reply.send(Err(WriteError::ConflictingId { id: "a".into() }));
        assert!(matches!(
            receipt.await,
            Err(WriteError::ConflictingId { .. })
        ));
    }
}
