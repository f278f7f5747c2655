//! A subscriber that stops reading falls out of the live feed, continues from the journal at its
//! own pace and loses nothing; everyone else keeps receiving.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use notify_backbone::pb::{self, subscribe_response::Kind};
use support::*;

const EVENTS: usize = 3000;

#[tokio::test]
async fn a_stalled_subscriber_catches_up_from_the_journal_and_loses_nothing() {
    let server = TestServer::start_with(|c| c.subscriber_queue_len = 16).await;
    let mut client = server.client().await;
    // Its own connection with small HTTP/2 windows, never read while events flow: flow control
    // stalls its stream after a few KiB, so its server-side queue fills up.
    let small_windows = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .initial_stream_window_size(8 * 1024)
        .initial_connection_window_size(8 * 1024)
        .connect()
        .await
        .unwrap();
    let mut stalled_client =
        pb::notification_service_client::NotificationServiceClient::new(small_windows);
    let mut stalled = subscribe(&mut stalled_client, request("*")).await;
    let mut reader = subscribe(&mut client, request("*")).await;

    let reading = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < EVENTS {
            ids.push(next_event(&mut reader).await.id);
        }
        ids
    });
    let mut published = Vec::new();
    for i in 0..EVENTS {
        let body = device_error(&format!("s{i}"), "u1", "d1");
        published.push(
            publish_json(&mut client, "device.error", &body)
                .await
                .unwrap(),
        );
    }
    let received = reading.await.unwrap();
    let expected: Vec<String> = published.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        received, expected,
        "the reading subscriber got everything in order"
    );

    // Its queue overflowed while it was stalled...
    assert!(
        server
            .metrics_text()
            .await
            .contains("notify_queue_overflows_total 1")
    );
    // ...and now that it reads, it gets every event, in order, once, and stays open.
    let mut stalled_ids = Vec::new();
    while stalled_ids.len() < EVENTS {
        let message = tokio::time::timeout(PATIENCE, stalled.message())
            .await
            .expect("the stalled stream delivers, not silence")
            .expect("the stream stays open");
        match message {
            Some(pb::SubscribeResponse {
                kind: Some(Kind::Event(event)),
            }) => stalled_ids.push(event.id),
            Some(pb::SubscribeResponse {
                kind: Some(Kind::Gap(gap)),
            }) => panic!("no gap within retention: {gap:?}"),
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    }
    assert_eq!(stalled_ids, expected, "every event, in order, once");
    // Back on the live feed.
    publish_json(
        &mut client,
        "device.error",
        &device_error("after", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut stalled).await.id, "after");
}
