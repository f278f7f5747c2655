//! The real RabbitMQ at `AMQP_URL`, used the way the platform's NestJS producers use it, and
//! unique broker names per test so tests run in parallel without touching each other.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use notify_backbone::{config::ServeConfig, ingest::dead_letter};

use super::{PATIENCE, Wait};

/// The broker tests use; CI makes sure one is running (a missing broker fails the test).
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Broker names no other test (or run) uses.
#[derive(Debug, Clone)]
pub struct Names {
    pub exchange: String,
    pub node_id: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
}

impl Names {
    pub fn unique(test: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let tag = format!(
            "test-{}-{nanos}-{}-{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Self {
            exchange: format!("{tag}.events"),
            node_id: format!("{tag}.node"),
            dead_letter_exchange: format!("{tag}.dlx"),
            dead_letter_queue: format!("{tag}.dead-letter"),
        }
    }

    /// The same exchange and dead letters, another node.
    pub fn other_node(&self, suffix: &str) -> Self {
        Self {
            node_id: format!("{}-{suffix}", self.node_id),
            ..self.clone()
        }
    }

    pub fn queue(&self) -> String {
        format!("notify-backbone.{}", self.node_id)
    }

    /// Points `config` at the broker with these names.
    pub fn apply(&self, config: &mut ServeConfig) {
        config.amqp.amqp_url = Some(amqp_url());
        config.amqp.node_id = Some(self.node_id.clone());
        config.amqp.exchange = self.exchange.clone();
        config.amqp.dead_letter_exchange = self.dead_letter_exchange.clone();
        config.amqp.dead_letter_queue = self.dead_letter_queue.clone();
        // A test that dies before cleaning up leaves a queue that goes away by itself.
        config.amqp.queue_expires = Duration::from_secs(120);
        config.amqp.reconnect_max_backoff = Duration::from_secs(1);
    }
}

/// A producer connection, publishing with confirms like the NestJS services.
pub struct Producer {
    pub connection: Connection,
    pub channel: Channel,
}

impl Producer {
    pub async fn connect() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {}: {e}", amqp_url()));
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            connection,
            channel,
        }
    }

    /// Publishes `body` the way the producers do (`docs/wire-format.md` "The AMQP message"):
    /// persistent, `timestamp` in milliseconds, no content type, no message id, no headers;
    /// waits for the broker's confirm.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8]) {
        self.publish_at(exchange, routing_key, body, now_ms()).await;
    }

    /// Like [`Producer::publish`] with the given AMQP timestamp.
    pub async fn publish_at(&self, exchange: &str, routing_key: &str, body: &[u8], ms: u64) {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(ms);
        self.publish_raw(exchange, routing_key, body, properties)
            .await;
    }

    /// Publishes `body` like [`Producer::publish`] (mandatory too: unroutable comes back as a
    /// return) without waiting: the confirm to await, for tests that keep many in flight.
    pub async fn start_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> lapin::PublisherConfirm {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(now_ms());
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .unwrap()
    }

    /// Publishes `body` with `properties` as they are, and waits for the confirm.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack(), "broker refused the publish");
    }

    /// Messages ready (not delivered) in `queue`.
    pub async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Takes up to `n` dead letters from `queue`, waiting for them up to the test's patience.
    pub async fn take(&self, queue: &str, n: usize) -> Vec<DeadLetter> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut out = Vec::new();
        while out.len() < n && tokio::time::Instant::now() < deadline {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap();
            match got {
                Some(message) => {
                    let delivery = message.delivery;
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                    let headers = delivery.properties.headers().clone().unwrap_or_default();
                    let header = |key| {
                        dead_letter::header_text(&headers, key)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    };
                    out.push(DeadLetter {
                        routing_key: delivery.routing_key.to_string(),
                        reason: header(dead_letter::ERROR_HEADER),
                        field: header(dead_letter::ERROR_FIELD_HEADER),
                        original_exchange: header(dead_letter::ORIGINAL_EXCHANGE_HEADER),
                        timestamp: *delivery.properties.timestamp(),
                        properties: delivery.properties.clone(),
                        body: delivery.data,
                    });
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        out
    }

    /// Deletes what a test declared (best effort: a missing object is fine).
    pub async fn clean_up(&self, names: &[&Names]) {
        for names in names {
            for queue in [names.queue(), names.dead_letter_queue.clone()] {
                let channel = self.connection.create_channel().await.unwrap();
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in [&names.exchange, &names.dead_letter_exchange] {
                let channel = self.connection.create_channel().await.unwrap();
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
    }
}

/// One message from a dead-letter queue.
#[derive(Debug)]
pub struct DeadLetter {
    pub routing_key: String,
    pub reason: Option<String>,
    pub field: Option<String>,
    pub original_exchange: Option<String>,
    pub timestamp: Option<u64>,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Closes the broker side of node `node_id`'s connection, as an operator or a network cut
/// would (`rabbitmqctl close_connection`).
pub async fn force_close_connection(node_id: &str) {
    close_connections(connection_pids(node_id).await).await;
}

/// The broker's ids of node `node_id`'s consuming connection (`rabbitmqctl` takes about a
/// second per call: look them up before the moment the test wants to cut).
pub async fn connection_pids(node_id: &str) -> Vec<String> {
    connection_pids_named(&notify_backbone::ingest::connection_name(node_id)).await
}

/// The broker's ids of the connections named exactly `name`.
pub async fn connection_pids_named(name: &str) -> Vec<String> {
    // Quoted, as the listing prints it: exactly this connection, not another whose name starts
    // the same (another node, the node's dead-letter connection).
    let wanted = format!("\"{name}\"");
    let wait = Wait::within(PATIENCE).every(Duration::from_millis(200));
    wait.until(format!("a connection named {wanted}"), async || {
        let listing = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "--quiet",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .output()
            .await
            .expect("rabbitmqctl runs (it comes with the RabbitMQ server)");
        let text = String::from_utf8_lossy(&listing.stdout).into_owned();
        let pids: Vec<String> = text
            .lines()
            .filter(|line| line.contains(&wanted))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        if pids.is_empty() {
            Err(format!("the listing:\n{text}"))
        } else {
            Ok(pids)
        }
    })
    .await
}

/// Closes the connections `pids` from the broker's side.
pub async fn close_connections(pids: Vec<String>) {
    for pid in pids {
        let closed = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "test: broker outage"])
            .output()
            .await
            .unwrap();
        assert!(closed.status.success(), "{closed:?}");
    }
}

/// Runs `rabbitmqctl list_queues` for one queue: (ready, unacknowledged, consumers).
pub async fn queue_counts(queue: &str) -> (u64, u64, u64) {
    let listing = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&listing.stdout).into_owned();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&queue) && fields.len() == 4 {
            let n = |i: usize| fields[i].parse().unwrap();
            return (n(1), n(2), n(3));
        }
    }
    panic!("queue {queue} not listed:\n{text}");
}
