//! Broker trouble and shutdown lose nothing: a subscriber's stream survives the ingest's
//! connection being closed under it, and a node shut down mid-ingest acks only what its
//! subscribers got and leaves the rest in its queue.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{collections::HashSet, time::Duration};

use notify_backbone::pb::subscribe_response::Kind;
use support::{
    amqp::{Names, Producer, close_connections, connection_pids, queue_counts},
    *,
};
use tonic::Streaming;

use notify_backbone::pb;

/// Event `n` for user `u-steady`; its device id names it.
fn event(n: usize) -> String {
    format!(
        r#"{{"deviceId":"d{n}","userId":"u-steady","startedAt":"2025-11-20T10:00:00.000Z","providerType":"redroid","_trace":{{}}}}"#
    )
}

/// Publishes events `range` one every `every`, each confirmed by the broker.
fn publish_steadily(
    names: &Names,
    range: std::ops::Range<usize>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let exchange = names.exchange.clone();
    tokio::spawn(async move {
        let producer = Producer::connect().await;
        let mut ticker = tokio::time::interval(every);
        for n in range {
            ticker.tick().await;
            producer
                .publish(&exchange, "device.started", event(n).as_bytes())
                .await;
        }
    })
}

/// Reads device ids until the stream ends (or `want` arrived), failing on a duplicate.
async fn collect(
    stream: &mut Streaming<pb::SubscribeResponse>,
    want: usize,
    seen: &mut HashSet<String>,
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
                }
            }
        }
    }
    None
}

#[tokio::test]
async fn a_broker_outage_breaks_no_stream_and_loses_or_repeats_no_event() {
    // 2 s of publishing: `rabbitmqctl` itself takes about a second to act.
    const EVENTS: usize = 1000;
    let names = Names::unique("outage");
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u-steady")).await;

    // Fast enough that deliveries are always in flight (acks go out every 20 ms), so the cut
    // leaves some unacked and the broker redelivers them: dedupe is exercised every time.
    let pids = connection_pids(&names.node_id).await;
    let publishing = publish_steadily(&names, 0..EVENTS, Duration::from_millis(2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    close_connections(pids).await;
    let mut seen = HashSet::new();
    let ended = collect(&mut stream, EVENTS, &mut seen).await;
    assert!(ended.is_none(), "the stream broke: {ended:?}");
    publishing.await.unwrap();
    assert_eq!(seen.len(), EVENTS);
    assert_quiet(&mut stream).await;
    assert!(server.metric("notify_ingest_reconnects_total").await >= 1.0);
    let consumed = server.metric("notify_ingest_consumed_total").await;
    let duplicates = server.metric("notify_duplicates_total").await;
    assert!(
        consumed > EVENTS as f64 && duplicates >= 1.0,
        "the broker redelivered nothing (consumed {consumed}, duplicates {duplicates}): the \
         test did not exercise redelivery"
    );
    server.wait_ready().await;
    server.stop_within(PATIENCE).await;
    Producer::connect().await.clean_up(&[&names]).await;
}

#[tokio::test]
async fn shutdown_mid_ingest_acks_only_what_subscribers_got_and_leaves_the_rest_queued() {
    const EVENTS: usize = 400;
    let names = Names::unique("shutdown");
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u-steady")).await;

    let publishing = publish_steadily(&names, 0..EVENTS, Duration::from_millis(5));
    let reader = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let ended = collect(&mut stream, EVENTS, &mut seen).await;
        (seen, ended)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.stop_within(PATIENCE).await;
    let (before, ended) = reader.await.unwrap();
    assert_eq!(
        ended.map(|s| s.code()),
        Some(tonic::Code::Unavailable),
        "the stream ends with UNAVAILABLE and a cursor to resume from"
    );
    assert!(
        !before.is_empty() && before.len() < EVENTS,
        "{}",
        before.len()
    );
    publishing.await.unwrap();

    // Nothing left unacknowledged, no consumer; acked = delivered, the rest is still queued.
    let (ready, unacked, consumers) = queue_counts(&names.queue()).await;
    assert_eq!((unacked, consumers), (0, 0));
    assert_eq!(before.len() + ready as usize, EVENTS);

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
