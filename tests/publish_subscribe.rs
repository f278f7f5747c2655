//! Events published through `Publish` reach exactly the subscribers that selected them, typed.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use notify_backbone::pb::{self, event::Payload, publish_request::Body};
use support::*;

#[tokio::test]
async fn every_wire_fixture_arrives_typed_on_the_firehose() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;
    let fixtures = wire_fixtures();
    assert!(fixtures.len() >= 17, "fixtures missing: {}", fixtures.len());
    for (routing_key, name, body) in &fixtures {
        let published = publish_json(&mut client, routing_key, body)
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"));
        if published.duplicate {
            continue; // two fixtures of one outbox event share an id
        }
        let event = next_event(&mut firehose).await;
        assert_eq!(event.id, published.id, "{name}");
        assert_eq!(event.cursor, published.cursor, "{name}");
        let canonical = match routing_key.as_str() {
            "app.install.failed" => "app.install_failed",
            "app.install.completed" => "app.installed",
            key => key,
        };
        assert_eq!(event.r#type, canonical, "{name}");
        assert!(
            !matches!(event.payload, None | Some(Payload::Untyped(_))),
            "{name}: catalog events are typed, got {:?}",
            event.payload
        );
        assert!(
            event.occurred_at.is_some() && event.received_at.is_some(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_user_sees_their_events_and_nobody_elses() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut alice = subscribe(&mut client, request("alice")).await;
    let mut bob = subscribe(&mut client, request("bob")).await;
    publish_json(
        &mut client,
        "device.error",
        &device_error("e-bob", "bob", "d9"),
    )
    .await
    .unwrap();
    publish_json(
        &mut client,
        "device.error",
        &device_error("e-alice", "alice", "d1"),
    )
    .await
    .unwrap();
    let event = next_event(&mut alice).await;
    assert_eq!(
        (event.id.as_str(), event.user_id.as_str()),
        ("e-alice", "alice")
    );
    assert_eq!(event.device_id, "d1");
    match event.payload {
        Some(Payload::DeviceError(error)) => {
            assert_eq!(error.error_type, "adb_disconnected");
            assert_eq!(error.device_name, "phone-1");
        }
        other => panic!("expected DeviceError, got {other:?}"),
    }
    // Bob's (published first) is not on its way to Alice: her next event is the next she gets.
    publish_json(
        &mut client,
        "device.error",
        &device_error("e-alice-2", "alice", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut alice, "e-alice-2", "alice").await;
    assert_eq!(next_event(&mut bob).await.id, "e-bob");
}

#[tokio::test]
async fn money_keeps_its_exact_decimal_value() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    let body = r#"{"userId":"u1","paymentId":"p1","paymentMethod":"alipay","amount":99.9,
                   "newBalance":100.10,"paidAt":"2025-11-20T10:00:00.000Z","_trace":{}}"#;
    publish_json(&mut client, "billing.payment_success", body)
        .await
        .unwrap();
    match next_event(&mut stream).await.payload {
        Some(Payload::BillingPaymentSuccess(p)) => {
            assert_eq!(p.amount.unwrap().value, "99.9");
            assert_eq!(p.new_balance.unwrap().value, "100.10");
        }
        other => panic!("expected a payment, got {other:?}"),
    }
}

#[tokio::test]
async fn a_typed_event_can_be_published_too() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u7")).await;
    let event = pb::Event {
        user_id: "u7".into(),
        device_id: "d7".into(),
        payload: Some(Payload::DeviceStarted(pb::DeviceStarted {
            tenant_id: String::new(),
            provider_type: "redroid".into(),
        })),
        ..Default::default()
    };
    let request = pb::PublishRequest {
        routing_key: "device.started".into(),
        body: Some(Body::Event(event)),
    };
    let published = client
        .publish(with_token(request, &service_token()))
        .await
        .unwrap()
        .into_inner();
    let received = next_event(&mut stream).await;
    assert_eq!(received.id, published.id);
    assert_eq!(received.r#type, "device.started");
    assert!(
        matches!(received.payload, Some(Payload::DeviceStarted(ref d)) if d.provider_type == "redroid")
    );
}

#[tokio::test]
async fn a_resent_outbox_body_is_delivered_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    let body = |trace: &str| {
        format!(
            r#"{{"deviceId":"d1","userId":"u1","tenantId":null,"startedAt":"2025-11-20T10:00:00.000Z","providerType":"redroid","_trace":{trace}}}"#
        )
    };
    let first = publish_json(&mut client, "device.started", &body("{}"))
        .await
        .unwrap();
    let again = publish_json(
        &mut client,
        "device.started",
        &body(r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#),
    )
    .await
    .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(
        (again.id.as_str(), again.cursor.as_str()),
        (first.id.as_str(), first.cursor.as_str())
    );
    assert_eq!(next_event(&mut stream).await.id, first.id);
    // The re-send is not delivered after all: the next event is the next to arrive.
    publish_json(
        &mut client,
        "device.error",
        &device_error("after-resend", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut stream, "after-resend", "u1").await;
}

#[tokio::test]
async fn the_trace_context_travels_with_the_event() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let body = format!(
        r#"{{"type":"app.installed","timestamp":"2025-11-20T10:00:00.000Z","installationId":"i1","applicationId":"a1","deviceId":"d1","userId":"u1","_trace":{{"traceparent":"{traceparent}"}}}}"#
    );
    publish_json(&mut client, "app.installed", &body)
        .await
        .unwrap();
    let event = next_event(&mut stream).await;
    assert_eq!(event.traceparent, traceparent);
    assert!(matches!(event.payload, Some(Payload::AppInstalled(ref a)) if a.app_id == "a1"));
}

#[tokio::test]
async fn metrics_count_what_flowed() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    publish_json(&mut client, "device.error", &device_error("m1", "u1", "d1"))
        .await
        .unwrap();
    next_event(&mut stream).await;
    let text = server.metrics_text().await;
    assert!(
        text.contains(r#"notify_events_in_total{type="device.error"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"notify_events_out_total{type="device.error"} 1"#),
        "{text}"
    );
    assert!(text.contains("notify_subscribers 1"), "{text}");
    assert!(
        text.contains("notify_delivery_latency_seconds_count 1"),
        "{text}"
    );
}

/// An id reused for another event (another user) was answered as a duplicate with the first
/// event's cursor: another user's event position, handed to the producer. Now ALREADY_EXISTS,
/// counted; the stored event stays as it was, and a true re-send is still a duplicate.
#[tokio::test]
async fn an_id_reused_for_a_different_event_is_refused_with_already_exists() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u2")).await;
    let first = publish_json(
        &mut client,
        "device.error",
        &device_error("reused", "u1", "d1"),
    )
    .await
    .unwrap();
    let refused = publish_json(
        &mut client,
        "device.error",
        &device_error("reused", "u2", "d2"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("already used for a different event")
    );
    assert!(!refused.message().contains(&first.cursor), "{refused:?}");
    let again = publish_json(
        &mut client,
        "device.error",
        &device_error("reused", "u1", "d1"),
    )
    .await
    .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.cursor, first.cursor);
    assert_eq!(server.metric("notify_conflicting_ids_total").await, 1.0);
    // u2 got nothing under that id: the next event u2 sees is the sentinel.
    publish_json(
        &mut client,
        "device.error",
        &device_error("for-u2", "u2", "d2"),
    )
    .await
    .unwrap();
    assert_next_is(&mut stream, "for-u2", "u2").await;
}
