//! The "Cluster" flags: which journal (`--journal`), and in cluster mode the shared stream and
//! ingest queue.
//!
//! Owns: these flags and the stream's settings made of them ([`ClusterFlags::stream_settings`]).
//! Does not own: cluster mode itself (`cluster`).

use clap::Args;

use super::{JournalFlags, parse::byte_size};
use crate::cluster::StreamSettings;

/// The "Cluster" flags.
#[derive(Debug, Clone, Args)]
pub struct ClusterFlags {
    /// Where events are journaled: `redb` (one node; a file under --data-dir; no broker needed)
    /// or `rabbitmq-stream` (cluster mode: several nodes share one journal, a RabbitMQ stream;
    /// needs --amqp-url; each node keeps a replica of it under --data-dir).
    #[arg(long, value_enum, env = "NOTIFY_JOURNAL", default_value_t = JournalKind::Redb, help_heading = "Cluster")]
    pub journal: JournalKind,

    /// Cluster mode: the RabbitMQ stream that is the shared journal. Its retention is
    /// --retention-age and --retention-bytes (`x-max-age`, `x-max-length-bytes`), set when the
    /// stream is created; later changes need a RabbitMQ policy.
    #[arg(long, env = "NOTIFY_STREAM", default_value = crate::cluster::DEFAULT_STREAM, help_heading = "Cluster")]
    pub stream: String,

    /// Cluster mode: the quorum queue, shared by all nodes, that the producers' events (and
    /// `Publish` calls of every node) go through to the one node writing the stream; bound to
    /// --exchange with --bind. One node at a time consumes it (single active consumer).
    #[arg(long, env = "NOTIFY_INGEST_QUEUE", default_value = crate::cluster::DEFAULT_INGEST_QUEUE, help_heading = "Cluster")]
    pub ingest_queue: String,

    /// Cluster mode: the stream's segment size (`x-stream-max-segment-size-bytes`, RabbitMQ's
    /// default 500 MB when not given). Retention removes whole segments, so small segments make
    /// it act sooner.
    #[arg(long, env = "NOTIFY_STREAM_SEGMENT_BYTES", value_parser = byte_size, help_heading = "Cluster")]
    pub stream_segment_bytes: Option<u64>,
}

/// Where events are journaled (`--journal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JournalKind {
    /// One node: a redb file under `--data-dir`.
    Redb,
    /// Cluster mode: a RabbitMQ stream shared by every node.
    RabbitmqStream,
}

impl ClusterFlags {
    /// The journal stream as `serve` declares it: its retention is the journal's.
    pub fn stream_settings(&self, journal: &JournalFlags) -> StreamSettings {
        StreamSettings {
            name: self.stream.clone(),
            max_age: journal.retention_age,
            max_bytes: journal.retention_bytes,
            segment_bytes: self.stream_segment_bytes,
        }
    }
}
