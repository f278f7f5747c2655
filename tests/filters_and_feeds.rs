//! Type and device filters, the admin feed and the firehose, end to end.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use notify_backbone::pb::{self, event::Payload};
use support::*;

const QUOTA_EXCEEDED: &str = r#"{"userId":"u1","quotaId":"q1","type":"exceeded",
  "limits":{"maxDevices":2},"usage":{"currentDevices":3},"usagePercent":150,
  "timestamp":"2025-11-20T10:00:00.000Z","_trace":{}}"#;

#[tokio::test]
async fn type_filters_take_exact_types_and_families() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut billing = subscribe(
        &mut client,
        pb::SubscribeRequest {
            user_id: "u1".into(),
            event_types: vec!["billing.*".into(), "device.error".into()],
            ..Default::default()
        },
    )
    .await;
    publish_json(&mut client, "quota.exceeded", QUOTA_EXCEEDED)
        .await
        .unwrap();
    let order = r#"{"orderId":"o1","userId":"u1","reason":"user","_trace":{}}"#;
    publish_json(&mut client, "billing.order.cancelled", order)
        .await
        .unwrap();
    publish_json(&mut client, "device.error", &device_error("x1", "u1", "d1"))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut billing).await.r#type,
        "billing.order.cancelled"
    );
    assert_eq!(next_event(&mut billing).await.r#type, "device.error");
    // The quota event is not coming: another billing event of u1's is the next to arrive.
    let order = r#"{"orderId":"o-sentinel","userId":"u1","reason":"user","_trace":{}}"#;
    let sentinel = publish_json(&mut client, "billing.order.cancelled", order)
        .await
        .unwrap();
    assert_next_is(&mut billing, &sentinel.id, "billing.* and device.error").await;
}

#[tokio::test]
async fn a_device_filter_keeps_only_that_device() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut d2 = subscribe(
        &mut client,
        pb::SubscribeRequest {
            user_id: "u1".into(),
            device_id: "d2".into(),
            ..Default::default()
        },
    )
    .await;
    publish_json(&mut client, "device.error", &device_error("a", "u1", "d1"))
        .await
        .unwrap();
    publish_json(&mut client, "device.error", &device_error("b", "u1", "d2"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut d2).await.id, "b");
    // Nor was "a" merely late: the next event on d2 comes first.
    publish_json(&mut client, "device.error", &device_error("c", "u1", "d2"))
        .await
        .unwrap();
    assert_next_is(&mut d2, "c", "device d2").await;
}

#[tokio::test]
async fn the_admin_feed_receives_derived_notices() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut admin = subscribe(&mut client, admin_feed_only()).await;
    let mut user = subscribe(&mut client, request("u1")).await;
    let published = publish_json(&mut client, "quota.exceeded", QUOTA_EXCEEDED)
        .await
        .unwrap();

    let notice = next_event(&mut admin).await;
    assert_eq!(notice.r#type, "admin.notice");
    assert!(notice.user_id.is_empty(), "notices are not per-user events");
    match notice.payload {
        Some(Payload::AdminNotice(n)) => {
            assert_eq!(n.severity, i32::from(pb::NoticeSeverity::Error));
            assert_eq!(n.subject_user_id, "u1");
            assert_eq!(n.source_event_type, "quota.exceeded");
            assert_eq!(n.source_event_id, published.id);
        }
        other => panic!("expected an admin notice, got {other:?}"),
    }
    // The user gets the event itself, never the admin notice.
    assert_eq!(next_event(&mut user).await.r#type, "quota.exceeded");
    // Nothing more is on its way to either: the user's next event is the next the user
    // receives, and a quota update (carried by the feed as it is) the next the feed receives.
    publish_json(
        &mut client,
        "device.error",
        &device_error("u1-sentinel", "u1", "d1"),
    )
    .await
    .unwrap();
    let update = body::quota_updated("u1", "q-sentinel");
    let quota = publish_json(&mut client, "quota.updated", &update)
        .await
        .unwrap();
    assert_next_is(&mut user, "u1-sentinel", "user u1").await;
    assert_next_is(&mut admin, &quota.id, "admin feed").await;
}

#[tokio::test]
async fn the_admin_feed_carries_every_quota_update() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut admin = subscribe(&mut client, admin_feed_only()).await;
    let update = body::quota_updated("u5", "q5");
    publish_json(&mut client, "quota.updated", &update)
        .await
        .unwrap();
    publish_json(&mut client, "device.error", &device_error("z", "u5", "d5"))
        .await
        .unwrap();
    let event = next_event(&mut admin).await;
    assert_eq!(
        (event.r#type.as_str(), event.user_id.as_str()),
        ("quota.updated", "u5")
    );
    // The device error is not coming: the next quota update is the next event on the feed.
    let sentinel = publish_json(
        &mut client,
        "quota.updated",
        &body::quota_updated("u5", "q6"),
    )
    .await
    .unwrap();
    assert_next_is(&mut admin, &sentinel.id, "admin feed").await;
}

#[tokio::test]
async fn the_firehose_sees_all_users_and_userless_events() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;
    publish_json(&mut client, "device.error", &device_error("f1", "u1", "d1"))
        .await
        .unwrap();
    publish_json(&mut client, "device.error", &device_error("f2", "u2", "d2"))
        .await
        .unwrap();
    let catalog = r#"{"appId":"a1","packageName":"com.example","versionName":"2.0",
                      "updatedFields":["versionName"],"_trace":{}}"#;
    publish_json(&mut client, "app.updated", catalog)
        .await
        .unwrap();
    assert_eq!(next_event(&mut firehose).await.id, "f1");
    assert_eq!(next_event(&mut firehose).await.id, "f2");
    let app = next_event(&mut firehose).await;
    assert_eq!(
        (app.r#type.as_str(), app.user_id.as_str()),
        ("app.updated", "")
    );
}

/// The admin feed and nothing else.
fn admin_feed_only() -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        admin_feed: true,
        ..Default::default()
    }
}
