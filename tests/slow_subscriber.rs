//! A subscriber that stops reading is ended with RESOURCE_EXHAUSTED naming the last cursor it
//! was sent; everyone else keeps receiving.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use notify_backbone::pb::{self, subscribe_response::Kind};
use support::*;
use tonic::Code;

const EVENTS: usize = 3000;

#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_and_told_where_to_resume() {
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

    // Now the stalled one reads: a prefix of the events, then the status.
    let mut last_event_cursor = None;
    let mut stalled_ids = Vec::new();
    let status = loop {
        let message = tokio::time::timeout(PATIENCE, stalled.message()).await;
        match message.expect("the stalled stream ends with a status, not silence") {
            Ok(Some(pb::SubscribeResponse {
                kind: Some(Kind::Event(event)),
            })) => {
                stalled_ids.push(event.id);
                last_event_cursor = Some(event.cursor);
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(!stalled_ids.is_empty() && stalled_ids.len() < EVENTS);
    assert_eq!(
        stalled_ids,
        expected[..stalled_ids.len()],
        "a gap-free, in-order prefix"
    );
    let last = last_event_cursor.expect("some events arrived before the cut");
    assert!(
        status.message().contains(&format!("resume_after={last}")),
        "{:?} should name {last}",
        status.message()
    );
    assert!(
        server
            .metrics_text()
            .await
            .contains("notify_queue_overflows_total 1")
    );
}
