//! The "AMQP ingest" flags: the broker, this node's id and queue, the producers' exchange and
//! bindings, dead letters, prefetch and reconnects.
//!
//! Owns: these flags, the node id's default, and the ingest's settings made of them
//! ([`AmqpFlags::ingest_settings`], [`AmqpFlags::topology`]). Does not own: talking to the
//! broker (`ingest`).

use std::time::Duration;

use clap::Args;

use super::parse::{node_id, positive_duration};
use crate::{
    ingest::{IngestSettings, Topology, topology},
    otel::Tracing,
    schema::DecodeSettings,
};

/// The "AMQP ingest" flags.
#[derive(Debug, Clone, Args)]
pub struct AmqpFlags {
    /// AMQP ingest: the RabbitMQ broker to consume the platform's events from, e.g.
    /// `amqp://guest:guest@127.0.0.1:5672/%2f` (the vhost is URL-encoded: `%2f` is `/`). Without
    /// it the server runs embedded, with `Publish` as its only ingest.
    #[arg(long, env = "AMQP_URL", help_heading = "AMQP ingest")]
    pub amqp_url: Option<String>,

    /// This node's id: its queue is `notify-backbone.<node-id>`, so each node receives every
    /// event. Must stay the same across restarts, or the old queue is orphaned (until
    /// `--queue-expires`). Default: the host name.
    #[arg(long, env = "NOTIFY_NODE_ID", value_parser = node_id, help_heading = "AMQP ingest")]
    pub node_id: Option<String>,

    /// The producers' topic exchange (declared durable if absent).
    #[arg(long, env = "NOTIFY_EXCHANGE", default_value = crate::ingest::topology::DEFAULT_EXCHANGE, help_heading = "AMQP ingest")]
    pub exchange: String,

    /// Routing keys bound from the exchange to this node's queue. Repeat the flag or separate
    /// with commas. Bindings are only ever added: remove an old one in RabbitMQ yourself.
    #[arg(
        long = "bind",
        env = "NOTIFY_BINDINGS",
        value_delimiter = ',',
        default_values_t = crate::ingest::topology::DEFAULT_BINDINGS.map(String::from),
        help_heading = "AMQP ingest"
    )]
    pub bindings: Vec<String>,

    /// The broker deletes this node's queue after it has been unused (no consumer) this long,
    /// so a retired node's queue does not fill up forever. A node down for longer loses what
    /// was queued for it. Changing it for an existing queue needs the queue deleted first
    /// (RabbitMQ refuses to redeclare with other arguments).
    #[arg(long, env = "NOTIFY_QUEUE_EXPIRES", default_value = "24h", value_parser = positive_duration, help_heading = "AMQP ingest")]
    pub queue_expires: Duration,

    /// The exchange poison messages are published to, with their reason in headers.
    #[arg(long, env = "NOTIFY_DEAD_LETTER_EXCHANGE", default_value = crate::ingest::topology::DEFAULT_DEAD_LETTER_EXCHANGE, help_heading = "AMQP ingest")]
    pub dead_letter_exchange: String,

    /// The durable queue that keeps poison messages for inspection and replay.
    #[arg(long, env = "NOTIFY_DEAD_LETTER_QUEUE", default_value = crate::ingest::topology::DEFAULT_DEAD_LETTER_QUEUE, help_heading = "AMQP ingest")]
    pub dead_letter_queue: String,

    /// Deliveries RabbitMQ may have outstanding to this node, unacknowledged. Higher keeps the
    /// pipe full and lets acks be batched (more throughput); each one holds its message body in
    /// this process until it is acked (memory: about prefetch × message size) and is redelivered
    /// after a crash.
    #[arg(long, env = "NOTIFY_PREFETCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..), help_heading = "AMQP ingest")]
    pub prefetch: u16,

    /// Longest pause between attempts to reconnect to the broker (the pause doubles from
    /// 100 ms up to this, with jitter).
    #[arg(long, env = "NOTIFY_RECONNECT_MAX_BACKOFF", default_value = "30s", value_parser = positive_duration, help_heading = "AMQP ingest")]
    pub reconnect_max_backoff: Duration,
}

impl AmqpFlags {
    /// The node id: `--node-id`, else the host name, else `local`.
    pub fn node_id(&self) -> String {
        if let Some(id) = &self.node_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        // A host name may hold characters a queue name should not; keep the safe ones.
        let id: String = host
            .trim()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(200)
            .collect();
        if id.is_empty() { "local".into() } else { id }
    }

    /// This node's own queue, bound to the producers' exchange, with its dead letters.
    pub fn topology(&self) -> Topology {
        Topology {
            exchange: self.exchange.clone(),
            queue: topology::queue_name(&self.node_id()),
            queue_kind: topology::QueueKind::Node {
                expires: self.queue_expires,
            },
            bindings: self.bindings.clone(),
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            dead_letter_queue: self.dead_letter_queue.clone(),
        }
    }

    /// The ingest's settings, consuming from `url`: decoding as `decode` says, draining for at
    /// most `drain_timeout` at shutdown, tracing with `tracing`.
    pub fn ingest_settings(
        &self,
        url: &str,
        decode: DecodeSettings,
        drain_timeout: Duration,
        tracing: &Tracing,
    ) -> IngestSettings {
        IngestSettings {
            url: url.to_owned(),
            topology: self.topology(),
            node_id: self.node_id(),
            prefetch: self.prefetch,
            reconnect_max_backoff: self.reconnect_max_backoff,
            decode,
            drain_timeout,
            tracing: tracing.clone(),
        }
    }
}
