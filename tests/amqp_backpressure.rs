//! The ingest never holds more than the prefetch, and our own failures pause consumption
//! instead of rejecting good events. The ingest runs here against a writer that stalls or
//! fails on purpose.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use notify_backbone::{
    config::ServeConfig,
    ingest::{Ingest, IngestSettings, IngestState, Topology},
    otel::EventTrace,
    schema::{DecodeSettings, Decoded},
    store::{Cursor, StoreError},
    telemetry::Metrics,
    write::{Published, Receipt, Reply, Submitting, WriteError, Writer},
};
use support::{
    PATIENCE,
    amqp::{Names, Producer, amqp_url, queue_counts},
    eventually, seen_if,
};
use tokio_util::sync::CancellationToken;

/// A writer that refuses the first `refuse` events (as a failing journal would), then
/// accepts, or never answers at all when `stall` is set.
#[derive(Clone, Default)]
struct Scripted {
    stall: bool,
    refuse: usize,
    submitted: Arc<AtomicUsize>,
    accepted: Arc<std::sync::Mutex<Vec<String>>>,
    /// A stalled writer's replies, kept so that its receipts never resolve.
    stalled: Arc<std::sync::Mutex<Vec<Reply>>>,
}

impl Writer for Scripted {
    fn submit_traced(&self, decoded: Decoded, _trace: Option<EventTrace>) -> Submitting<'_> {
        let n = self.submitted.fetch_add(1, Ordering::SeqCst);
        let (reply, receipt) = Receipt::new();
        if self.stall {
            self.stalled.lock().unwrap().push(reply);
        } else if n < self.refuse {
            let _ = reply.send(Err(WriteError::Journal(StoreError::Unavailable(
                "disk on fire (test)".into(),
            ))));
        } else {
            self.accepted
                .lock()
                .unwrap()
                .push(decoded.event.device_id.clone());
            let _ = reply.send(Ok(Published {
                id: decoded.event.id,
                cursor: Cursor {
                    epoch: 1,
                    position: n as u64,
                },
                duplicate: false,
            }));
        }
        Box::pin(std::future::ready(Ok(receipt)))
    }
}

fn config(names: &Names, prefetch: u16) -> IngestSettings {
    let mut serve = ServeConfig::default();
    names.apply(&mut serve);
    let mut topology = Topology::for_node(&names.node_id);
    topology.exchange = names.exchange.clone();
    topology.dead_letter_exchange = names.dead_letter_exchange.clone();
    topology.dead_letter_queue = names.dead_letter_queue.clone();
    topology.queue_kind = notify_backbone::ingest::topology::QueueKind::Node {
        expires: serve.amqp.queue_expires,
    };
    IngestSettings {
        url: amqp_url(),
        node_id: names.node_id.clone(),
        topology,
        prefetch,
        reconnect_max_backoff: Duration::from_secs(1),
        decode: DecodeSettings::default(),
        drain_timeout: Duration::from_secs(1),
        tracing: notify_backbone::otel::Tracing::off(),
    }
}

async fn consuming(ingest: &Ingest) {
    let mut state = ingest.state();
    tokio::time::timeout(PATIENCE, state.wait_for(|s| *s == IngestState::Consuming))
        .await
        .expect("consuming in time")
        .unwrap();
}

fn event(n: usize) -> String {
    support::body::device_started(&format!("d{n}"), "u1")
}

/// The prefetch count of each consumer of `queue`, as the broker enforces it.
async fn consumer_prefetch(queue: &str) -> Vec<u64> {
    let listing = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_consumers",
            "--quiet",
            "--no-table-headers",
            "queue_name",
            "prefetch_count",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    let text = String::from_utf8_lossy(&listing.stdout).into_owned();
    text.lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [name, prefetch] if name == queue => Some(prefetch.parse().unwrap()),
                _ => None,
            },
        )
        .collect()
}

#[tokio::test]
async fn never_more_unacked_deliveries_than_the_prefetch() {
    let names = Names::unique("prefetch");
    let producer = Producer::connect().await;
    let downstream = Scripted {
        stall: true,
        ..Scripted::default()
    };
    let shutdown = CancellationToken::new();
    let ingest = Ingest::spawn(
        config(&names, 5),
        downstream.clone(),
        Arc::new(Metrics::new()),
        shutdown.clone(),
    );
    consuming(&ingest).await;
    for n in 0..30 {
        producer
            .publish(&names.exchange, "device.started", event(n).as_bytes())
            .await;
    }
    let queue = names.queue();
    eventually("25 ready and 5 handed downstream", async || {
        let seen = (
            producer.ready(&queue).await,
            downstream.submitted.load(Ordering::SeqCst),
        );
        seen_if(seen == (25, 5), seen)
    })
    .await;
    // Held there, by the broker itself: five unacknowledged deliveries to the one consumer,
    // whose prefetch is five, so the broker sends it nothing more until it acks.
    assert_eq!(queue_counts(&queue).await, (25, 5, 1));
    assert_eq!(consumer_prefetch(&queue).await, [5]);
    assert_eq!(downstream.submitted.load(Ordering::SeqCst), 5);

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, ingest.stopped())
        .await
        .expect("stops although its downstream never answered");
    // The five it held go back to the queue, unacknowledged: nothing lost.
    eventually("30 ready again", async || {
        let ready = producer.ready(&queue).await;
        seen_if(ready == 30, ready)
    })
    .await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn our_own_failures_pause_consumption_and_dead_letter_nothing() {
    let names = Names::unique("own-failure");
    let producer = Producer::connect().await;
    let downstream = Scripted {
        refuse: 3,
        ..Scripted::default()
    };
    let metrics = Arc::new(Metrics::new());
    let shutdown = CancellationToken::new();
    let ingest = Ingest::spawn(
        config(&names, 16),
        downstream.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    consuming(&ingest).await;
    for n in 0..10 {
        producer
            .publish(&names.exchange, "device.started", event(n).as_bytes())
            .await;
    }
    eventually("all ten accepted", async || {
        let accepted = downstream.accepted.lock().unwrap().len();
        seen_if(accepted == 10, accepted)
    })
    .await;
    let mut accepted = downstream.accepted.lock().unwrap().clone();
    accepted.sort();
    let mut expected: Vec<String> = (0..10).map(|n| format!("d{n}")).collect();
    expected.sort();
    assert_eq!(accepted, expected, "each good event accepted exactly once");
    assert_eq!(metrics.ingest.downstream_retries.get(), 3);
    eventually("all acked", async || {
        let acked = metrics.ingest.acked.get();
        seen_if(acked == 10, acked)
    })
    .await;
    assert_eq!(producer.ready(&names.dead_letter_queue).await, 0);
    assert_eq!(producer.ready(&names.queue()).await, 0);
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, ingest.stopped())
        .await
        .unwrap();
    producer.clean_up(&[&names]).await;
}
