//! The broker objects notify-backbone declares, idempotently, at every (re)connect.
//!
//! Owns: names, types and arguments. Declaring twice with the same arguments is a no-op for
//! RabbitMQ, so every session declares everything and a broker that lost its definitions (a
//! fresh node, a reset) is set up again. The `notification-service.*` queues of the service being
//! replaced are never named here: the two can run side by side during a migration.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use super::IngestError;

/// The exchange the platform's producers publish to.
pub const DEFAULT_EXCHANGE: &str = "cloudphone.events";
/// The prefix of each node's own queue: `notify-backbone.<node-id>`.
pub const QUEUE_PREFIX: &str = "notify-backbone.";
/// Where poison messages are published, with their reason in headers.
pub const DEFAULT_DEAD_LETTER_EXCHANGE: &str = "notify-backbone.dlx";
/// The queue that keeps poison messages for inspection and replay.
pub const DEFAULT_DEAD_LETTER_QUEUE: &str = "notify-backbone.dead-letter";
/// The routing keys of the four families the catalog knows.
pub const DEFAULT_BINDINGS: [&str; 4] = ["quota.#", "billing.#", "app.#", "device.#"];

/// The kind of the consumed queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// A node's own classic queue, deleted by the broker after it was unused this long
    /// (`x-expires`): a retired node's queue goes away instead of filling up forever.
    Node {
        /// `--queue-expires`.
        expires: Duration,
    },
    /// Cluster mode's shared ingest queue: a quorum queue (replicated, durable) with a single
    /// active consumer, so exactly one node (the writer) receives its messages at a time and
    /// another takes over when it goes.
    Shared,
}

/// The exchanges, queues and bindings of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The producers' topic exchange (declared durable if absent).
    pub exchange: String,
    /// The queue consumed: this node's own (each node receives every event), or in cluster mode
    /// the one queue all nodes share, consumed by one of them at a time.
    pub queue: String,
    /// What kind of queue it is.
    pub queue_kind: QueueKind,
    /// Binding keys from the exchange to the queue.
    pub bindings: Vec<String>,
    /// The dead-letter exchange (topic, durable).
    pub dead_letter_exchange: String,
    /// The dead-letter queue (durable, bound to the dead-letter exchange with `#`).
    pub dead_letter_queue: String,
}

impl Topology {
    /// The topology of node `node_id` with the default names and bindings.
    pub fn for_node(node_id: &str) -> Self {
        Self {
            exchange: DEFAULT_EXCHANGE.into(),
            queue: queue_name(node_id),
            queue_kind: QueueKind::Node {
                expires: Duration::from_secs(24 * 60 * 60),
            },
            bindings: DEFAULT_BINDINGS.iter().map(|&b| b.into()).collect(),
            dead_letter_exchange: DEFAULT_DEAD_LETTER_EXCHANGE.into(),
            dead_letter_queue: DEFAULT_DEAD_LETTER_QUEUE.into(),
        }
    }

    /// The arguments of the node's queue. They must not change between declarations: RabbitMQ
    /// refuses a redeclaration with other arguments (PRECONDITION_FAILED).
    fn queue_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        match self.queue_kind {
            QueueKind::Node { expires } => {
                let expires_ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
                arguments.insert("x-expires".into(), AMQPValue::LongLongInt(expires_ms));
            }
            QueueKind::Shared => {
                arguments.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString(LongString::from("quorum")),
                );
                arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            }
        }
        // A safety net: anything the broker itself dead-letters (an operator's reject, a
        // policy's delivery limit) goes to our dead-letter exchange, not into the void.
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        arguments
    }

    /// Declares everything on `channel`.
    pub(super) async fn declare(&self, channel: &Channel) -> Result<(), IngestError> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        for exchange in [&self.exchange, &self.dead_letter_exchange] {
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    durable_exchange,
                    FieldTable::default(),
                )
                .await
                .map_err(|source| failure(format!("exchange {exchange}"), source))?;
        }
        let durable_queue = QueueDeclareOptions::durable();
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue,
                FieldTable::default(),
            )
            .await
            .map_err(|source| failure(format!("queue {}", self.dead_letter_queue), source))?;
        bind(
            channel,
            &self.dead_letter_queue,
            &self.dead_letter_exchange,
            "#",
        )
        .await?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable_queue,
                self.queue_arguments(),
            )
            .await
            .map_err(|source| failure(format!("queue {}", self.queue), source))?;
        for key in &self.bindings {
            bind(channel, &self.queue, &self.exchange, key).await?;
        }
        Ok(())
    }
}

/// `notify-backbone.<node-id>`.
pub fn queue_name(node_id: &str) -> String {
    format!("{QUEUE_PREFIX}{node_id}")
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), IngestError> {
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| failure(format!("binding {exchange} -[{key}]-> {queue}"), source))
}

fn failure(what: String, source: lapin::Error) -> IngestError {
    // PRECONDITION_FAILED on a declare means the object exists with other settings, most
    // often a changed --queue-expires: the operator has to choose, we cannot.
    let hint = if source.to_string().contains("PRECONDITION_FAILED") {
        " (it exists with other arguments: keep the old settings, or delete it so it is \
         declared afresh)"
    } else {
        ""
    };
    IngestError::Topology { what, source, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_has_its_own_queue_and_the_shared_names_are_the_documented_ones() {
        let a = Topology::for_node("a");
        let b = Topology::for_node("b");
        assert_eq!(a.queue, "notify-backbone.a");
        assert_ne!(a.queue, b.queue);
        assert_eq!(a.exchange, "cloudphone.events");
        assert_eq!(a.dead_letter_exchange, "notify-backbone.dlx");
        assert_eq!(a.dead_letter_queue, "notify-backbone.dead-letter");
        assert!(!a.queue.starts_with("notification-service."));
    }

    #[test]
    fn the_queue_expires_and_dead_letters_to_our_exchange() {
        let mut topology = Topology::for_node("n");
        topology.queue_kind = QueueKind::Node {
            expires: Duration::from_secs(90),
        };
        let arguments = topology.queue_arguments();
        let map = arguments.inner();
        assert_eq!(
            map.get(&ShortString::from("x-expires")),
            Some(&AMQPValue::LongLongInt(90_000))
        );
        assert_eq!(
            map.get(&ShortString::from("x-dead-letter-exchange")),
            Some(&AMQPValue::LongString("notify-backbone.dlx".into()))
        );
    }

    #[test]
    fn the_shared_ingest_queue_is_a_quorum_queue_with_one_active_consumer() {
        let mut topology = Topology::for_node("n");
        topology.queue_kind = QueueKind::Shared;
        let arguments = topology.queue_arguments();
        let map = arguments.inner();
        assert_eq!(
            map.get(&ShortString::from("x-queue-type")),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            map.get(&ShortString::from("x-single-active-consumer")),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(map.get(&ShortString::from("x-expires")), None);
        assert_eq!(
            map.get(&ShortString::from("x-dead-letter-exchange")),
            Some(&AMQPValue::LongString("notify-backbone.dlx".into()))
        );
    }
}
