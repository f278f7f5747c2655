//! Bad input gets INVALID_ARGUMENT with a message naming the problem, and nothing is published.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use notify_backbone::pb::{self, publish_request::Body};
use support::*;
use tonic::Code;

async fn expect_invalid(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
    request: pb::PublishRequest,
    needle: &str,
) {
    let status = client
        .publish(with_token(request, &service_token()))
        .await
        .expect_err("must be refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
}

fn json(routing_key: &str, body: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        routing_key: routing_key.into(),
        body: Some(Body::Json(body.as_bytes().to_vec())),
    }
}

#[tokio::test]
async fn bad_publishes_are_refused_and_nothing_is_half_published() {
    // (A body over --max-event-bytes is a limit, RESOURCE_EXHAUSTED: tests/limits.rs.)
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;

    let cases: Vec<(pb::PublishRequest, &str)> = vec![
        (json("weather.sunny", r#"{"userId":"u1"}"#), "weather.sunny"),
        (json("device.started", "[1,2,3]"), "not an object"),
        (json("device.started", "{not json"), "not JSON"),
        (json("device.started", ""), "empty"),
        (
            json(
                "device.started",
                r#"{"deviceId":"d1","providerType":"redroid"}"#,
            ),
            "userId",
        ),
        (json("", r#"{"userId":"u1"}"#), "routing_key"),
        (
            pb::PublishRequest {
                routing_key: "device.started".into(),
                body: None,
            },
            "body",
        ),
        (
            pb::PublishRequest {
                routing_key: "device.started".into(),
                body: Some(Body::Event(pb::Event {
                    user_id: "u1".into(),
                    payload: Some(pb::event::Payload::BillingOrderCancelled(Default::default())),
                    ..Default::default()
                })),
            },
            "device.started",
        ),
    ];
    for (request, needle) in cases {
        expect_invalid(&mut client, request, needle).await;
    }
    // Nothing of the above reached anyone; a good event still flows at once.
    publish_json(
        &mut client,
        "device.error",
        &device_error("good", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut firehose).await.id, "good");
    let text = server.metrics_text().await;
    assert!(text.contains("notify_rejected_total"), "{text}");
}

#[tokio::test]
async fn strict_schema_refuses_untyped_family_events() {
    let lenient = TestServer::start().await;
    let mut client = lenient.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    publish_json(
        &mut client,
        "billing.refund_issued",
        &body::refund_issued("u1", "r1"),
    )
    .await
    .unwrap();
    let event = next_event(&mut stream).await;
    assert!(
        matches!(event.payload, Some(pb::event::Payload::Untyped(_))),
        "{event:?}"
    );

    let strict = TestServer::start_with(|c| c.strict_schema = true).await;
    let mut client = strict.client().await;
    expect_invalid(
        &mut client,
        json("billing.refund_issued", &body::refund_issued("u1", "r1")),
        "billing.refund_issued",
    )
    .await;
}

#[tokio::test]
async fn bad_subscriptions_are_refused_with_the_field_at_fault() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    // (An empty `user_id` is no longer an error: it means the caller's own events.)
    let cases = [
        (
            pb::SubscribeRequest {
                user_id: "u1".into(),
                event_types: vec!["Billing".into()],
                ..Default::default()
            },
            "event_types[0]",
        ),
        (
            pb::SubscribeRequest {
                user_id: "u1".into(),
                resume_after: "not-a-cursor".into(),
                ..Default::default()
            },
            "resume_after",
        ),
        (
            pb::SubscribeRequest {
                user_id: "u1".into(),
                resume_after: "ffffffffffffffff0000000000000000".into(),
                ..Default::default()
            },
            "",
        ),
    ];
    for (request, needle) in cases {
        // A cursor from another journal is not an error: it is an in-band gap.
        if needle.is_empty() {
            let mut stream = open_stream(&mut client, request).await;
            assert!(matches!(
                next_kind(&mut stream).await,
                pb::subscribe_response::Kind::Gap(_)
            ));
            continue;
        }
        let token = token_for_request(&request);
        let status = client
            .subscribe(with_token(request, &token))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }
}

/// A body nested deeper than clients' protobuf decoders take once it is a `Struct`, and an event
/// for the user `*` (the firehose's selector), were accepted and delivered: the first broke
/// every stream it reached. Both are refused with the field at fault, JSON or typed, and nothing
/// of them reaches the admin firehose (the sentinel behind them is the next event there).
#[tokio::test]
async fn a_body_nested_too_deep_and_an_event_for_user_star_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;

    let deep = body::nested_arrays(60);
    let deep_field = format!(
        "x{}",
        "[0]".repeat(notify_backbone::schema::MAX_BODY_DEPTH - 1)
    );
    expect_invalid(&mut client, json("billing.anything", &deep), &deep_field).await;
    expect_invalid(
        &mut client,
        json("device.error", &device_error("for-star", "*", "d1")),
        "payload.userId",
    )
    .await;
    let typed_for_star = pb::PublishRequest {
        routing_key: "device.started".into(),
        body: Some(Body::Event(pb::Event {
            user_id: "*".into(),
            device_id: "d1".into(),
            payload: Some(pb::event::Payload::DeviceStarted(Default::default())),
            ..Default::default()
        })),
    };
    expect_invalid(&mut client, typed_for_star, "user_id").await;
    // A typed `Struct` as deep as the JSON above: bounded in protobuf levels.
    let mut value = prost_types::Value {
        kind: Some(prost_types::value::Kind::ListValue(Default::default())),
    };
    for _ in 1..45 {
        value = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(
                prost_types::ListValue {
                    values: vec![value],
                },
            )),
        };
    }
    let typed_deep = pb::PublishRequest {
        routing_key: "billing.anything".into(),
        body: Some(Body::Event(pb::Event {
            user_id: "u1".into(),
            payload: Some(pb::event::Payload::Untyped(prost_types::Struct {
                fields: [("x".to_owned(), value)].into(),
            })),
            ..Default::default()
        })),
    };
    expect_invalid(&mut client, typed_deep, "untyped").await;

    publish_json(
        &mut client,
        "device.error",
        &device_error("after-refusals", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut firehose, "after-refusals", "the admin firehose").await;
    assert_eq!(
        server
            .metric("notify_rejected_total{reason=\"too_deep\"}")
            .await,
        2.0
    );
}
