//! Events published to RabbitMQ exactly as the platform's producers publish them reach gRPC
//! subscribers typed; poison goes to the dead-letter queue with its reason; every node gets
//! every event.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{collections::HashSet, time::SystemTime};

use notify_backbone::{
    pb::event::Payload,
    schema::{self, DecodeSettings, Properties},
};
use support::{
    amqp::{Names, Producer},
    *,
};

#[tokio::test]
async fn every_wire_fixture_published_like_the_producers_arrives_typed() {
    let names = Names::unique("fixtures");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;

    let mut seen = HashSet::new();
    let fixtures = wire_fixtures();
    assert!(fixtures.len() >= 17, "fixtures missing: {}", fixtures.len());
    for (i, (routing_key, name, body)) in fixtures.iter().enumerate() {
        let sent_ms = 1_732_096_800_000 + i as u64;
        producer
            .publish_at(&names.exchange, routing_key, body.as_bytes(), sent_ms)
            .await;
        // What the decoder makes of this body and timestamp is what must arrive.
        let props = Properties {
            timestamp_ms: Some(sent_ms as i64),
            received_at: SystemTime::now(),
        };
        let expected = schema::decode(
            routing_key,
            body.as_bytes(),
            &props,
            DecodeSettings::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .event;
        if !seen.insert(expected.id.clone()) {
            continue; // an outbox re-send of an event already delivered: stored once
        }
        let event = next_event(&mut firehose).await;
        assert_eq!(event.id, expected.id, "{name}");
        assert_eq!(event.r#type, expected.r#type, "{name}");
        assert_eq!(event.user_id, expected.user_id, "{name}");
        assert_eq!(event.device_id, expected.device_id, "{name}");
        assert_eq!(event.occurred_at, expected.occurred_at, "{name}");
        assert_eq!(event.traceparent, expected.traceparent, "{name}");
        assert_eq!(event.tracestate, expected.tracestate, "{name}");
        assert_eq!(event.payload, expected.payload, "{name}");
        assert!(
            !matches!(event.payload, None | Some(Payload::Untyped(_))),
            "{name}: catalog events are typed"
        );
        assert!(!event.cursor.is_empty(), "{name}");
        // And independently of the decoder, straight from the producer's JSON.
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        let field = |key: &str| {
            json.get("payload")
                .and_then(|p| p.get(key))
                .or_else(|| json.get(key))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(event.user_id, field("userId"), "{name}");
        assert_eq!(event.device_id, field("deviceId"), "{name}");
        let traceparent = json["_trace"]["traceparent"].as_str().unwrap_or_default();
        assert_eq!(event.traceparent, traceparent, "{name}");
    }
    // Nothing more is on its way (no fixture twice): an event published after them all, the
    // same way, is the next to arrive.
    let sentinel = device_error("fixtures-sentinel", "u-sentinel", "d-sentinel");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut firehose, "fixtures-sentinel", "firehose").await;
    // Everything was acked: nothing waits in the node's queue.
    assert_eq!(producer.ready(&names.queue()).await, 0);
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn the_amqp_timestamp_in_milliseconds_or_seconds_dates_an_event_without_one() {
    let names = Names::unique("timestamp");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut user = subscribe(&mut client, request("u-ts")).await;
    // Outbox shape C: no `type`, no `timestamp`, no date of its own. The platform's producers
    // put milliseconds in the AMQP timestamp; the AMQP spec (and pika, amqplib ...) seconds.
    for (device, sent, expected) in [
        ("d1", 1_732_096_800_123, (1_732_096_800, 123_000_000)),
        ("d2", 1_732_096_801, (1_732_096_801, 0)),
    ] {
        let body = format!(
            r#"{{"deviceId":"{device}","userId":"u-ts","deviceName":"p","tenantId":null,"_trace":{{}}}}"#
        );
        producer
            .publish_at(&names.exchange, "device.deleted", body.as_bytes(), sent)
            .await;
        let event = next_event(&mut user).await;
        assert_eq!(event.r#type, "device.deleted");
        assert_eq!(event.user_id, "u-ts");
        assert_eq!(event.device_id, device);
        let occurred = event.occurred_at.unwrap();
        assert_eq!((occurred.seconds, occurred.nanos), expected, "sent {sent}");
    }
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

/// A good per-user event for user `u-good`, unique by `n`.
fn good(n: usize) -> (&'static str, String) {
    (
        "device.started",
        format!(
            r#"{{"deviceId":"d{n}","userId":"u-good","startedAt":"2025-11-20T10:00:0{}.000Z","providerType":"redroid","_trace":{{}}}}"#,
            n % 10
        ),
    )
}

#[tokio::test]
async fn poison_is_dead_lettered_with_its_reason_and_the_next_good_message_flows() {
    let names = Names::unique("poison");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |config| config.strict_schema = true).await;
    let mut client = server.client().await;
    let mut user = subscribe(&mut client, request("u-good")).await;

    // (routing key, body, reason, field)
    let poison: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        ("device.started", vec![0xff, 0xfe, b'{'], "not_utf8", None),
        ("device.started", b"{not json".to_vec(), "not_json", None),
        ("device.started", b"[1,2,3]".to_vec(), "not_object", None),
        ("device.started", Vec::new(), "empty_body", None),
        (
            "quota.updated",
            br#"{"userId":"u-good","quotaId":"q1","type":"updated","limits":"lots","usage":{},"status":"active"}"#.to_vec(),
            "invalid_field",
            Some("limits"),
        ),
        (
            "device.started",
            br#"{"deviceId":"d1","startedAt":"2025-11-20T10:00:00.000Z","providerType":"redroid","_trace":{}}"#.to_vec(),
            "missing_field",
            Some("userId"),
        ),
        (
            "device.error",
            br#"{"eventId":"e1","eventType":"device.error","payload":{"deviceId":"d1","errorType":"x","errorMessage":"y"},"_trace":{}}"#.to_vec(),
            "missing_field",
            Some("payload.userId"),
        ),
        (
            "quota.brand_new",
            br#"{"userId":"u-good","_trace":{}}"#.to_vec(),
            "untyped_strict",
            None,
        ),
    ];
    for (n, (routing_key, body, reason, _)) in poison.iter().enumerate() {
        producer.publish(&names.exchange, routing_key, body).await;
        // The good message right behind the poison arrives at once: no loop, no stall.
        let (key, good_body) = good(n);
        producer
            .publish(&names.exchange, key, good_body.as_bytes())
            .await;
        let event = next_event(&mut user).await;
        assert_eq!(event.device_id, format!("d{n}"), "after {reason}");
    }
    // None of the poison arrives after all: an event published after it all, the same way, is
    // the next to arrive.
    let sentinel = device_error("poison-sentinel", "u-good", "d-sentinel");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut user, "poison-sentinel", "u-good").await;

    // Exactly the poison is dead-lettered: the rest was delivered above, so once the poison's
    // letters are all there, nothing else can follow them.
    let dead = producer.take(&names.dead_letter_queue, poison.len()).await;
    assert_eq!(dead.len(), poison.len(), "the poison is dead-lettered");
    assert_eq!(
        producer.ready(&names.dead_letter_queue).await,
        0,
        "exactly the poison is dead-lettered"
    );
    for ((routing_key, body, reason, field), letter) in poison.iter().zip(&dead) {
        assert_eq!(letter.reason.as_deref(), Some(*reason), "{letter:?}");
        assert_eq!(letter.field.as_deref(), *field, "{letter:?}");
        assert_eq!(&letter.routing_key, routing_key);
        assert_eq!(&letter.body, body, "the original body is kept for replay");
        assert_eq!(
            letter.original_exchange.as_deref(),
            Some(names.exchange.as_str())
        );
        assert!(
            letter.timestamp.is_some(),
            "the original properties are kept"
        );
    }
    // Each poison message was consumed once: nothing was requeued and redelivered in a loop.
    // (The good messages and the sentinel make up the rest.)
    let consumed = server.metric("notify_ingest_consumed_total").await;
    assert_eq!(consumed, (2 * poison.len() + 1) as f64);
    let missing = server
        .metric("notify_ingest_dead_lettered_total{reason=\"missing_field\"}")
        .await;
    assert_eq!(missing, 2.0);
    assert_eq!(producer.ready(&names.queue()).await, 0);
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

/// The hardening issue's reproduction: an untyped event nested 61 levels deep was accepted,
/// became a frame no protobuf decoder takes (level 123), and broke every stream it reached, the
/// admin firehose first, at every resume. And an event for the user `*`, the firehose's
/// selector, was accepted too. Both are dead-lettered now, each with its reason and the field at
/// fault, and the admin's stream goes on: the sentinel behind them is the next event it gets.
#[tokio::test]
async fn a_body_nested_too_deep_and_an_event_for_user_star_are_dead_lettered() {
    let names = Names::unique("too-deep");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut admin = subscribe(&mut client, request("*")).await;

    let deep = body::nested_arrays(60);
    // `x` is at level 2; the first array past the 24 levels allowed is 23 arrays below it.
    let deep_field = format!("x{}", "[0]".repeat(schema::MAX_BODY_DEPTH - 1));
    let poison: [(&str, Vec<u8>, &str, &str); 3] = [
        (
            "billing.anything",
            deep.into_bytes(),
            "too_deep",
            &deep_field,
        ),
        (
            "device.error",
            device_error("for-star", "*", "d1").into_bytes(),
            "invalid_field",
            "payload.userId",
        ),
        (
            "app.anything",
            br#"{"userId":"*"}"#.to_vec(),
            "invalid_field",
            "userId",
        ),
    ];
    for (routing_key, body, _, _) in &poison {
        producer.publish(&names.exchange, routing_key, body).await;
    }
    let sentinel = device_error("after-poison", "u1", "d1");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut admin, "after-poison", "the admin firehose").await;

    let dead = producer.take(&names.dead_letter_queue, poison.len()).await;
    assert_eq!(dead.len(), poison.len());
    for ((routing_key, body, reason, field), letter) in poison.iter().zip(&dead) {
        assert_eq!(&letter.routing_key, routing_key);
        assert_eq!(letter.reason.as_deref(), Some(*reason), "{letter:?}");
        assert_eq!(letter.field.as_deref(), Some(*field), "{letter:?}");
        assert_eq!(&letter.body, body);
    }
    assert_eq!(
        server
            .metric("notify_ingest_dead_lettered_total{reason=\"too_deep\"}")
            .await,
        1.0
    );
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn two_nodes_on_one_broker_each_receive_every_event() {
    let names_a = Names::unique("two-nodes");
    let names_b = names_a.other_node("b");
    let producer = Producer::connect().await;
    let a = TestServer::start_amqp(&names_a, |_| {}).await;
    let b = TestServer::start_amqp(&names_b, |_| {}).await;
    let mut client_a = a.client().await;
    let mut client_b = b.client().await;
    let mut on_a = subscribe(&mut client_a, request("u-good")).await;
    let mut on_b = subscribe(&mut client_b, request("u-good")).await;
    for n in 0..20 {
        let (key, body) = good(n);
        producer
            .publish(&names_a.exchange, key, body.as_bytes())
            .await;
    }
    // Then one more, the same way: once it arrives, nothing published before it is still
    // coming (no event twice).
    let sentinel = device_error("two-nodes-sentinel", "u-good", "d-sentinel");
    producer
        .publish(&names_a.exchange, "device.error", sentinel.as_bytes())
        .await;
    for (node, stream) in [("node a", &mut on_a), ("node b", &mut on_b)] {
        let mut devices = Vec::new();
        for _ in 0..20 {
            devices.push(next_event(stream).await.device_id);
        }
        let expected: Vec<String> = (0..20).map(|n| format!("d{n}")).collect();
        assert_eq!(devices, expected, "every event, in order, on {node}");
        assert_next_is(stream, "two-nodes-sentinel", node).await;
    }
    a.stop_within(PATIENCE).await;
    b.stop_within(PATIENCE).await;
    producer.clean_up(&[&names_a, &names_b]).await;
}

#[tokio::test]
async fn readiness_and_health_report_the_ingest() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let names = Names::unique("ready");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut health = HealthClient::new(server.channel().await);
    let status = health
        .check(HealthCheckRequest {
            service: "ingest".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING while consuming");
    assert_eq!(server.metric("notify_ingest_consuming").await, 1.0);

    // A server with a broker it cannot reach is not ready, and says why.
    let unreachable = TestServer::start_with(|config| {
        names.other_node("x").apply(config);
        config.amqp.amqp_url = Some("amqp://guest:guest@127.0.0.1:1/%2f".into());
    })
    .await;
    let response = unreachable.http_get("/readyz").await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("ingest: connecting"), "{response}");
    unreachable.stop_within(PATIENCE).await;
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn a_dead_letter_replayed_into_a_nodes_queue_keeps_its_event_type() {
    let names = Names::unique("replay");
    let producer = Producer::connect().await;
    // Refused under --strict-schema: an event type with no typed schema yet.
    let strict = TestServer::start_amqp(&names, |config| config.strict_schema = true).await;
    let body = body::refund_issued("u-replay", "r1");
    producer
        .publish(&names.exchange, "billing.refund_issued", body.as_bytes())
        .await;
    let dead = producer.take(&names.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("untyped_strict"));
    strict.stop_within(PATIENCE).await;

    // The cause fixed (strict schema off), the operator moves it into the node's own queue, as
    // a shovel with `dest-queue` or the UI's "Move messages" does: through the default
    // exchange, whose routing key is the queue's name.
    let fixed = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = fixed.client().await;
    let mut user = subscribe(&mut client, request("u-replay")).await;
    producer
        .publish_raw(
            "",
            &names.queue(),
            &dead[0].body,
            dead[0].properties.clone(),
        )
        .await;
    let event = next_event(&mut user).await;
    assert_eq!(event.r#type, "billing.refund_issued");
    assert_eq!(producer.ready(&names.dead_letter_queue).await, 0);
    fixed.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn a_poison_message_is_not_acked_while_its_dead_letter_copy_has_nowhere_to_go() {
    let names = Names::unique("no-dlq");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    // An operator deletes the dead-letter queue under the running node.
    let channel = producer.connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            names.dead_letter_queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    producer
        .publish(&names.exchange, "device.started", b"{not json")
        .await;
    // The copy came back unroutable, so the original was not acked; the node reconnects and
    // declares the dead-letter queue again (a probe of a missing queue closes its channel, so
    // each probe gets its own).
    let wait = Wait::within(PATIENCE).every(std::time::Duration::from_millis(100));
    wait.until("the poison message dead-lettered", async || {
        let probe = producer.connection.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = probe
            .queue_declare(
                names.dead_letter_queue.as_str().into(),
                passive,
                Default::default(),
            )
            .await;
        match declared.map(|queue| queue.message_count()) {
            Ok(count) if count > 0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let dead = producer.take(&names.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1, "the poison message was lost");
    assert_eq!(dead[0].reason.as_deref(), Some("not_json"));
    assert_eq!(producer.ready(&names.queue()).await, 0);
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}

/// The same `eventId` for another event (here: another user) was dropped as a harmless re-send,
/// without a word, and the producer was answered with the other user's event position. Now it
/// is dead-lettered (`conflicting_id`), counted and logged; a true re-send is still a duplicate.
#[tokio::test]
async fn an_event_reusing_the_id_of_a_different_event_is_dead_lettered_not_taken_for_a_re_send() {
    let names = Names::unique("conflicting-id");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut admin = subscribe(&mut client, request("*")).await;

    let first = device_error("shared-id", "u1", "d1");
    producer
        .publish(&names.exchange, "device.error", first.as_bytes())
        .await;
    assert_next_is(&mut admin, "shared-id", "the admin firehose").await;
    // A re-send (the same event) and another event under the same id.
    producer
        .publish(&names.exchange, "device.error", first.as_bytes())
        .await;
    let other = device_error("shared-id", "u2", "d9");
    producer
        .publish(&names.exchange, "device.error", other.as_bytes())
        .await;
    let sentinel = device_error("after-conflict", "u1", "d1");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    // Neither the re-send nor the other event reaches anyone.
    assert_next_is(&mut admin, "after-conflict", "the admin firehose").await;

    let dead = producer.take(&names.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].reason.as_deref(),
        Some("conflicting_id"),
        "{:?}",
        dead[0]
    );
    assert_eq!(dead[0].field.as_deref(), Some("eventId"));
    assert_eq!(dead[0].body, other.as_bytes());
    assert_eq!(server.metric("notify_conflicting_ids_total").await, 1.0);
    assert_eq!(server.metric("notify_duplicates_total").await, 1.0);
    server.stop_within(PATIENCE).await;
    producer.clean_up(&[&names]).await;
}
