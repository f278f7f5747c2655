//! Cluster mode (`--journal rabbitmq-stream`): several nodes share one journal, a RabbitMQ
//! stream; any node serves any cursor; a node can die.
//!
//! Owns: the journal stream and its messages ([`stream`]), every node's reading of it into its
//! replica and hub ([`follower`]), the single writer ([`writer`]), `Publish` on any node
//! ([`forward`]), reading what the broker holds under the cluster's names ([`inspect`]), and the
//! broker helpers they share (`broker`). Does not own: consuming the shared ingest queue
//! (`ingest`, with the writer as its `write::Writer`), routing (`hub`), or the replica's
//! storage (`store`).
//!
//! ```text
//!  producers ─▶ cloudphone.events ─▶ notify-backbone.ingest (quorum, single active consumer)
//!  Publish on any node ─(forward)─────────────▲            │ the active consumer = the writer
//!                                                          ▼
//!                               notify-backbone.journal (stream) ◀─ append, confirm, then ack
//!                                  │ every node (follower)
//!                                  ▼
//!                       replica (redb) ─▶ hub ─▶ subscribers of this node
//! ```
//!
//! A cursor is the stream's epoch and an offset + 1, the same on every node. The replica is
//! what replays and `ListEvents` read (as on one node, so they are as fast), and its id index is
//! the writer's dedupe state: a node taking over as writer first appends a barrier and waits
//! until its follower has read it back, so everything the previous writer appended is indexed
//! before anything is written again.
//!
//! Why lapin (AMQP 0.9.1, `x-stream-offset`) and not RabbitMQ's stream-protocol client: the
//! latter's current release does not talk to the RabbitMQ this project installs (3.10, Debian),
//! its old one brings a second TLS stack; lapin adds no dependency, reports a deleted stream
//! (its consumer ends) where the other goes silent, and needs one port. It costs more CPU per
//! message (BENCHMARKS.md §7), which matters above ~20,000 events/s, not at the platform's rates.

mod broker;
pub mod follower;
pub mod forward;
pub mod inspect;
pub mod stream;
pub mod writer;

pub use follower::{FollowState, Follower, FollowerParts, discover_epoch};
pub use forward::Forwarder;
pub use inspect::inspect;
pub use stream::{DEFAULT_INGEST_QUEUE, DEFAULT_STREAM, StreamSettings};
pub use writer::{StreamWriter, WriterParts};

/// Why cluster mode cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The broker could not be reached.
    #[error("cannot connect to the broker")]
    Connect(#[source] lapin::Error),
    /// A channel or consumer failed.
    #[error("broker connection lost")]
    Broker(#[source] lapin::Error),
    /// Declaring the stream failed.
    #[error("cannot declare {what}")]
    Declare {
        /// What was declared.
        what: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
    },
    /// The stream exists with other arguments than this node declares it with: nothing this
    /// node can wait out.
    #[error(
        "the journal stream {stream} exists with other arguments than this node's (another \
         deployment's queue of that name, or changed --retention-* / --stream-segment-bytes \
         flags: change a stream's retention with a RabbitMQ policy)"
    )]
    StreamConflict {
        /// The stream's name.
        stream: String,
        /// The broker's refusal.
        #[source]
        source: lapin::Error,
    },
    /// The stream was deleted (its consumer was cancelled without a connection error).
    #[error(
        "the journal stream was deleted: this node stops; started again, it follows the new \
         stream (a new epoch: clients' cursors then get a Gap)"
    )]
    StreamGone,
    /// An event of another epoch: the stream was re-created under this node.
    #[error(
        "the journal stream holds epoch {stream:016x}, this node follows {ours:016x}: it was \
         re-created; this node stops, and started again follows the new one"
    )]
    EpochChanged {
        /// The epoch this node follows.
        ours: u64,
        /// The epoch read from the stream.
        stream: u64,
    },
    /// A message in the stream that is not one of ours.
    #[error("the journal stream holds a message that is not notify-backbone's")]
    Foreign(#[source] stream::ParseError),
    /// The replica could not be written or read.
    #[error("the node's replica of the journal failed")]
    Replica(#[source] crate::store::StoreError),
    /// The replica refuses writes for now (its disk is full, its file is being reopened): the
    /// follower waits until it is writable again and reads on from its head.
    #[error("the node's replica of the journal refuses writes")]
    ReplicaRefused(#[source] crate::store::StoreError),
    /// An appended message was not read back in time.
    #[error("{0} was appended but not read back from the stream in time")]
    ReadBack(String),
    /// A submission whose id an earlier submission appended, and that copy was not read back
    /// in time: this one is not appended (the ingest retries it).
    #[error("not appended: an earlier copy was not read back")]
    CopyNotReadBack,
    /// The broker refused an append.
    #[error("the broker refused an append to the journal stream")]
    Nacked,
    /// An append reached no queue: the stream does not exist.
    #[error("an append to the journal stream reached no queue (was the stream deleted?)")]
    Unroutable,
    /// The submission's ingest session ended (or none has started): its delivery is the next
    /// session's to append.
    #[error("the ingest session this event came from ended; it is redelivered")]
    NoSession,
    /// Shutdown came first.
    #[error("shutting down")]
    ShuttingDown,
}
