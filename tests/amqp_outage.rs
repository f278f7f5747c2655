//! Broker trouble and shutdown lose nothing: a subscriber's stream survives the ingest's
//! connection being closed under it, and a node shut down mid-ingest acks only what its
//! subscribers got and leaves the rest in its queue.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use notify_backbone::pb::subscribe_response::Kind;
use support::{
    amqp::{Names, Producer, close_connections, connection_pids, queue_counts},
    *,
};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use notify_backbone::pb;

/// Event `n` for user `u-steady`; its device id names it.
fn event(n: usize) -> String {
    body::device_started(&format!("d{n}"), "u-steady")
}

/// Publishes events 0, 1, 2, ... one every `every`, each confirmed by the broker, until `stop`
/// is cancelled; `published` counts them as they go. Returns how many it published.
fn publish_until_stopped(
    names: &Names,
    every: Duration,
    stop: CancellationToken,
    published: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    let exchange = names.exchange.clone();
    tokio::spawn(async move {
        let producer = Producer::connect().await;
        let mut ticker = tokio::time::interval(every);
        let mut n = 0;
        while !stop.is_cancelled() {
            ticker.tick().await;
            producer
                .publish(&exchange, "device.started", event(n).as_bytes())
                .await;
            n += 1;
            published.store(n, Ordering::SeqCst);
        }
        n
    })
}

/// Reads device ids until the stream ends (or `want` arrived), failing on a duplicate;
/// `received` follows how many arrived.
async fn collect(
    stream: &mut Streaming<pb::SubscribeResponse>,
    want: usize,
    seen: &mut HashSet<String>,
    received: &AtomicUsize,
) -> Option<tonic::Status> {
    // Heartbeats keep an idle stream busy, so the limit is on the whole collection.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < want {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!("only {} of {want} events arrived", seen.len()),
            Ok(Err(status)) => return Some(status),
            Ok(Ok(None)) => return None,
            Ok(Ok(Some(message))) => {
                if let Some(Kind::Event(event)) = message.kind {
                    assert!(
                        seen.insert(event.device_id.clone()),
                        "{} delivered twice",
                        event.device_id
                    );
                    received.store(seen.len(), Ordering::SeqCst);
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn a_broker_outage_breaks_no_stream_and_loses_or_repeats_no_event() {
    /// Cuts before the test gives up on the broker redelivering anything.
    const MAX_CUTS: usize = 3;
    let names = Names::unique("outage");
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u-steady")).await;

    // Fast enough that deliveries are always in flight (acks go out every 20 ms), so the cut
    // leaves some unacked and the broker redelivers them: dedupe is exercised. Publishing goes
    // on until events flow again after the cut, however long `rabbitmqctl` takes to act.
    let stop = CancellationToken::new();
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = publish_until_stopped(
        &names,
        Duration::from_millis(2),
        stop.clone(),
        Arc::clone(&published),
    );
    let received = AtomicUsize::new(0);
    let mut seen = HashSet::new();
    let mut cuts = 0;
    loop {
        // `rabbitmqctl` takes about a second per call: look the connection up before the cut.
        let pids = connection_pids(&names.node_id).await;
        // Events are flowing when the connection is cut.
        let ended = collect(&mut stream, seen.len() + 20, &mut seen, &received).await;
        assert!(ended.is_none(), "the stream broke: {ended:?}");
        close_connections(pids).await;
        cuts += 1;
        eventually("the ingest reconnects", async || {
            let reconnects = server.metric("notify_ingest_reconnects_total").await;
            seen_if(reconnects >= cuts as f64, reconnects)
        })
        .await;
        server.wait_ready().await;
        // Events published since the reconnect arrive (the broker redelivers what the cut left
        // unacknowledged ahead of them).
        let since = published.load(Ordering::SeqCst);
        let ended = collect(&mut stream, since + 20, &mut seen, &received).await;
        assert!(ended.is_none(), "the stream broke: {ended:?}");
        if server.metric("notify_duplicates_total").await >= 1.0 {
            break;
        }
        // A cut that happened to find nothing unacknowledged proves less: cut again.
        assert!(
            cuts < MAX_CUTS,
            "{cuts} cuts and the broker redelivered nothing: the test did not exercise \
             redelivery"
        );
    }
    stop.cancel();
    let total = publishing.await.unwrap();
    let ended = collect(&mut stream, total, &mut seen, &received).await;
    assert!(ended.is_none(), "the stream broke: {ended:?}");
    assert_eq!(seen.len(), total);
    // Nothing more is on its way (no late repeat): an event published after them all, by the
    // same path, is the next to arrive.
    let producer = Producer::connect().await;
    let sentinel = device_error("outage-sentinel", "u-steady", "d-sentinel");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut stream, "outage-sentinel", "u-steady").await;
    assert!(server.metric("notify_ingest_reconnects_total").await >= cuts as f64);
    let consumed = server.metric("notify_ingest_consumed_total").await;
    let duplicates = server.metric("notify_duplicates_total").await;
    assert!(
        consumed > (total + 1) as f64 && duplicates >= 1.0,
        "the broker redelivered nothing (consumed {consumed}, duplicates {duplicates}): the \
         test did not exercise redelivery"
    );
    server.wait_ready().await;
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn shutdown_mid_ingest_acks_only_what_subscribers_got_and_leaves_the_rest_queued() {
    let names = Names::unique("shutdown");
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u-steady")).await;

    let stop = CancellationToken::new();
    let published = Arc::new(AtomicUsize::new(0));
    let publishing = publish_until_stopped(
        &names,
        Duration::from_millis(5),
        stop.clone(),
        Arc::clone(&published),
    );
    let received = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let received = Arc::clone(&received);
        async move {
            let mut seen = HashSet::new();
            let ended = collect(&mut stream, usize::MAX, &mut seen, &received).await;
            (seen, ended)
        }
    });
    // Mid-ingest: events are reaching the subscriber, and publishing goes on.
    eventually("events reach the subscriber", async || {
        let received = received.load(Ordering::SeqCst);
        seen_if(received >= 20, received)
    })
    .await;
    server.stop_within(PATIENCE).await;
    let (before, ended) = reader.await.unwrap();
    assert_eq!(
        ended.map(|s| s.code()),
        Some(tonic::Code::Unavailable),
        "the stream ends with UNAVAILABLE and a cursor to resume from"
    );
    // Some events are published while the node is down: they can only wait in its queue.
    let at_stop = published.load(Ordering::SeqCst);
    eventually("publishing goes on", async || {
        let published = published.load(Ordering::SeqCst);
        seen_if(published >= at_stop + 10, published)
    })
    .await;
    stop.cancel();
    let events = publishing.await.unwrap();
    assert!(
        !before.is_empty() && before.len() < events,
        "{} of {events}",
        before.len()
    );

    // Nothing left unacknowledged, no consumer; acked = delivered, the rest is still queued.
    let (ready, unacked, consumers) = queue_counts(&names.queue()).await;
    assert_eq!((unacked, consumers), (0, 0));
    assert_eq!(before.len() + ready as usize, events);

    // What is left is intact in the queue: exactly the events no subscriber got.
    let producer = Producer::connect().await;
    let left: HashSet<String> = producer
        .take(&names.queue(), ready as usize)
        .await
        .iter()
        .map(|message| {
            let body: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
            body["deviceId"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(left.len(), ready as usize);
    assert!(before.is_disjoint(&left));
    Producer::connect().await.clean_up(&[&names]).await;
}
