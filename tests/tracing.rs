//! OpenTelemetry tracing against an in-test OTLP collector: an event's spans in its producer's
//! trace (through RabbitMQ and through `Publish`), a refused message's reason, the RPC spans,
//! and nothing at all when the exporter is off.
//!
//! Spans are exported in batches; stopping the server exports what is left, so each test stops
//! the server before it looks: no waiting on the exporter's timer.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use notify_backbone::pb::subscribe_response::Kind;
use support::{amqp::*, otlp::*, process::*, *};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// `device_error` with the producer's trace context in `_trace`, as the platform's services
/// write it.
fn traced_device_error(id: &str, user: &str, trace: &str) -> String {
    let mut body: serde_json::Value = serde_json::from_str(&device_error(id, user, "d1")).unwrap();
    body["_trace"] = serde_json::json!({ "traceparent": traceparent(trace, PRODUCER_SPAN) });
    body.to_string()
}

#[tokio::test]
async fn an_event_from_rabbitmq_is_traced_from_the_producers_span_to_the_subscriber() {
    let collector = Collector::start().await;
    let names = Names::unique("trace-amqp");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |config| {
        config.tracing.otlp_endpoint = Some(collector.endpoint());
    })
    .await;
    let mut client = server.client().await;
    let mut user = subscribe(&mut client, request("u-trace")).await;

    let body = traced_device_error("traced-1", "u-trace", TRACE);
    producer
        .publish(&names.exchange, "device.error", body.as_bytes())
        .await;
    let event = next_event(&mut user).await;
    assert_eq!(event.id, "traced-1");
    // Subscribers keep the producer's context.
    assert_eq!(event.traceparent, traceparent(TRACE, PRODUCER_SPAN));

    // A `traceparent` AMQP header (what OpenTelemetry's messaging instrumentations write) wins
    // over the body's.
    let header_trace = "7bf92f3577b34da6a3ce929d0e0e4738";
    let header_span = "10f067aa0ba902b8";
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "traceparent".into(),
        lapin::types::AMQPValue::LongString(traceparent(header_trace, header_span).into()),
    );
    producer
        .publish_raw(
            &names.exchange,
            "device.error",
            traced_device_error("traced-2", "u-trace", TRACE).as_bytes(),
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(headers),
        )
        .await;
    let by_header_event = next_event(&mut user).await;
    assert_eq!(by_header_event.id, "traced-2");
    // Its spans are in the header's trace, so that is the trace subscribers are pointed at.
    assert!(
        by_header_event
            .traceparent
            .starts_with(&format!("00-{header_trace}-")),
        "{}",
        by_header_event.traceparent
    );

    // A producer that did not sample its span (flags 00): the default sampler follows it, so
    // the event is not traced, and it keeps the producer's traceparent as it was.
    let unsampled_trace = "8bf92f3577b34da6a3ce929d0e0e4739";
    let mut unsampled: serde_json::Value =
        serde_json::from_str(&device_error("untraced-1", "u-trace", "d1")).unwrap();
    let unsampled_parent = format!("00-{unsampled_trace}-{PRODUCER_SPAN}-00");
    unsampled["_trace"] = serde_json::json!({ "traceparent": unsampled_parent });
    producer
        .publish(
            &names.exchange,
            "device.error",
            unsampled.to_string().as_bytes(),
        )
        .await;
    let untraced = next_event(&mut user).await;
    assert_eq!(untraced.id, "untraced-1");
    assert_eq!(untraced.traceparent, unsampled_parent);

    // A poison message in a trace of its own: its span says why it was refused.
    let poison_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut poison: serde_json::Value =
        serde_json::from_str(&traced_device_error("poison-1", "u-trace", poison_trace)).unwrap();
    poison["payload"].as_object_mut().unwrap().remove("userId");
    producer
        .publish(
            &names.exchange,
            "device.error",
            poison.to_string().as_bytes(),
        )
        .await;
    assert_eq!(producer.take(&names.dead_letter_queue, 1).await.len(), 1);

    drop(user);
    server.stop_within(PATIENCE).await;

    let spans = collector.trace(TRACE);
    let ingest = one(&spans, "notify.ingest");
    assert_eq!(ingest.parent_span_id, PRODUCER_SPAN, "{spans:#?}");
    assert_eq!(ingest.kind, 5, "a consumer span");
    assert_eq!(ingest.service, "notify-backbone");
    assert_eq!(ingest.attr("messaging.system"), "rabbitmq");
    assert_eq!(ingest.attr("messaging.destination.name"), names.exchange);
    assert_eq!(
        ingest.attr("messaging.rabbitmq.destination.routing_key"),
        "device.error"
    );
    assert_eq!(ingest.attr("notify.event.type"), "device.error");
    assert_eq!(ingest.attr("notify.event.id"), "traced-1");
    assert_eq!(
        ingest.attr("messaging.message.body.size"),
        body.len().to_string()
    );
    for stage in ["notify.journal.append", "notify.fanout", "notify.deliver"] {
        let span = one(&spans, stage);
        assert_eq!(span.parent_span_id, ingest.span_id, "{stage}: {spans:#?}");
    }
    let batch: u64 = one(&spans, "notify.journal.append")
        .attr("notify.journal.batch_size")
        .parse()
        .unwrap();
    assert!(batch >= 1);
    assert_eq!(
        one(&spans, "notify.fanout").attr("notify.fanout.subscribers"),
        "1"
    );
    assert_eq!(
        one(&spans, "notify.deliver").attr("notify.delivery"),
        "live"
    );

    // The subscriber's stream: one server span for its life, the event as a span event.
    let all = collector.spans();
    let subscribe = one(&all, "cloudphone.notify.v1.NotificationService/Subscribe");
    assert_eq!(subscribe.kind, 2, "a server span");
    assert_eq!(subscribe.attr("rpc.system"), "grpc");
    assert_eq!(
        subscribe.attr("rpc.service"),
        "cloudphone.notify.v1.NotificationService"
    );
    assert_eq!(subscribe.attr("rpc.method"), "Subscribe");
    assert!(
        subscribe
            .events
            .iter()
            .any(|(name, attributes)| name == "notify.event"
                && attributes.get("notify.event.trace_id").map(String::as_str) == Some(TRACE)),
        "{subscribe:#?}"
    );

    assert!(
        collector.trace(unsampled_trace).is_empty(),
        "{:#?}",
        collector.trace(unsampled_trace)
    );
    let by_header = collector.trace(header_trace);
    let ingest = one(&by_header, "notify.ingest");
    assert_eq!(ingest.parent_span_id, header_span);
    assert_eq!(ingest.attr("notify.event.id"), "traced-2");

    let refused = collector.trace(poison_trace);
    let refused = one(&refused, "notify.ingest");
    assert_eq!(refused.parent_span_id, PRODUCER_SPAN);
    assert_eq!(refused.attr("error.type"), "missing_field");
    assert_eq!(refused.status, 2, "an error: {refused:?}");
    assert!(
        refused.status_message.contains("missing_field"),
        "{refused:?}"
    );
    producer.clean_up(&[&names]).await;
}

#[tokio::test]
async fn a_publish_call_with_traceparent_metadata_is_traced_through_its_event() {
    let collector = Collector::start().await;
    let server = TestServer::start_with(|config| {
        config.tracing.otlp_endpoint = Some(collector.endpoint());
    })
    .await;
    let mut client = server.client().await;
    let mut user = open_stream(&mut client, request("u-pub")).await;
    let Kind::CaughtUp(before) = next_kind(&mut user).await else {
        panic!("CaughtUp first");
    };
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut call = with_token(
        pb_publish("device.error", &device_error("pub-1", "u-pub", "d1")),
        &service_token(),
    );
    call.metadata_mut().insert(
        "traceparent",
        traceparent(trace, PRODUCER_SPAN).parse().unwrap(),
    );
    client.publish(call).await.unwrap();
    let event = next_event(&mut user).await;
    // The body had no context: the event carries the one it was ingested in.
    assert!(
        event.traceparent.starts_with(&format!("00-{trace}-")),
        "{}",
        event.traceparent
    );
    // Without metadata, a body's `_trace` is the parent: the call started a trace of its own.
    let body_trace = "9bf92f3577b34da6a3ce929d0e0e473a";
    let call = with_token(
        pb_publish(
            "device.error",
            &traced_device_error("pub-2", "u-pub", body_trace),
        ),
        &service_token(),
    );
    client.publish(call).await.unwrap();
    assert_eq!(next_event(&mut user).await.id, "pub-2");

    // A second subscriber resumes from before it: the replayed event's hand-off is traced too.
    let mut resumed = open_stream(
        &mut client,
        notify_backbone::pb::SubscribeRequest {
            resume_after: before.cursor,
            ..request("u-pub")
        },
    )
    .await;
    assert_eq!(next_event(&mut resumed).await.id, "pub-1");
    assert_eq!(next_event(&mut resumed).await.id, "pub-2");
    assert!(matches!(next_kind(&mut resumed).await, Kind::CaughtUp(_)));
    drop((user, resumed));
    server.stop_within(PATIENCE).await;

    let spans = collector.trace(trace);
    let rpc = one(&spans, "cloudphone.notify.v1.NotificationService/Publish");
    assert_eq!(rpc.parent_span_id, PRODUCER_SPAN, "{spans:#?}");
    assert_eq!(rpc.kind, 2);
    assert_eq!(rpc.attr("rpc.grpc.status_code"), "0");
    let ingest = one(&spans, "notify.ingest");
    assert_eq!(ingest.parent_span_id, rpc.span_id);
    assert_eq!(ingest.attr("notify.event.id"), "pub-1");
    for stage in ["notify.journal.append", "notify.fanout"] {
        assert_eq!(one(&spans, stage).parent_span_id, ingest.span_id, "{stage}");
    }
    let mut deliveries: Vec<_> = spans
        .iter()
        .filter(|span| span.name == "notify.deliver")
        .map(|span| {
            assert_eq!(span.parent_span_id, ingest.span_id);
            span.attr("notify.delivery").to_owned()
        })
        .collect();
    deliveries.sort();
    assert_eq!(deliveries, ["live", "resume"]);
    assert_eq!(
        event.traceparent,
        format!("00-{trace}-{}-01", ingest.span_id),
        "the event points at its ingest span"
    );
    let from_body = collector.trace(body_trace);
    let ingest = one(&from_body, "notify.ingest");
    assert_eq!(ingest.parent_span_id, PRODUCER_SPAN, "{from_body:#?}");
    assert_eq!(ingest.attr("notify.event.id"), "pub-2");
}

fn pb_publish(routing_key: &str, json: &str) -> notify_backbone::pb::PublishRequest {
    notify_backbone::pb::PublishRequest {
        routing_key: routing_key.into(),
        body: Some(notify_backbone::pb::publish_request::Body::Json(
            json.as_bytes().to_vec(),
        )),
    }
}

/// The names of the process's threads (Linux: `/proc/<pid>/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// The SDK's batch exporter runs on a thread of its own, `OpenTelemetry.Traces.BatchProcessor`
/// (15 characters of it in `comm`).
const EXPORTER_THREAD: &str = "OpenTelemetry.T";

#[tokio::test]
async fn with_the_exporter_off_nothing_is_exported_and_no_exporter_runs() {
    let collector = Collector::start().await;
    let logs = Logs::default();
    let on_data = DataDir::new();
    let off_data = DataDir::new();
    let on = start_node(
        &["--otlp-endpoint".into(), collector.endpoint()],
        &on_data.0,
        1,
        &logs,
    )
    .await;
    let off = start_node(&[], &off_data.0, 2, &logs).await;
    let on_threads = thread_names(on.child.id().unwrap());
    assert!(
        on_threads.iter().any(|name| name == EXPORTER_THREAD),
        "{on_threads:?}"
    );
    let off_threads = thread_names(off.child.id().unwrap());
    assert!(
        !off_threads
            .iter()
            .any(|name| name.starts_with("OpenTelemetry")),
        "{off_threads:?}"
    );
    // Both serve an event; only the one exporting sends spans, and only of its own.
    for (node, id) in [(&off, "off-1"), (&on, "on-1")] {
        let channel = tonic::transport::Endpoint::from_shared(node.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client =
            notify_backbone::pb::notification_service_client::NotificationServiceClient::new(
                channel,
            );
        let call = with_token(
            pb_publish("device.error", &device_error(id, "u1", "d1")),
            &service_token(),
        );
        client.publish(call).await.unwrap();
    }
    for node in [on, off] {
        node.stop(&logs).await;
    }
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .any(|span| span.name == "notify.ingest" && span.attr("notify.event.id") == "on-1"),
        "{spans:#?}"
    );
    assert!(
        !spans.iter().any(
            |span| span.attributes.get("notify.event.id").map(String::as_str) == Some("off-1")
        ),
        "{spans:#?}"
    );
}
