//! Every limit of the gRPC port trips with RESOURCE_EXHAUSTED naming what was exceeded, and the
//! server keeps serving everyone else.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{net::SocketAddr, time::Duration};

use notify_backbone::pb::{self, publish_request::Body};
use support::*;
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const PUBLISH_PATH: &str = "/cloudphone.notify.v1.NotificationService/Publish";

fn assert_exhausted(status: &Status, names: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(names),
        "{:?} does not name {names:?}",
        status.message()
    );
}

/// A publish of `body` under `routing_key` as `token`'s subject.
async fn publish_as(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
    token: &str,
    body: Body,
) -> Result<pb::PublishResponse, Status> {
    let request = pb::PublishRequest {
        routing_key: "device.error".into(),
        body: Some(body),
    };
    client
        .publish(with_token(request, token))
        .await
        .map(|r| r.into_inner())
}

fn json(id: &str) -> Body {
    Body::Json(device_error(id, "u1", "d1").into_bytes())
}

/// A `Publish` whose request body is announced but never sent: the server holds it in flight
/// until it gives up. Returns the response future and the body sender (keep it alive).
async fn stalled_publish(
    addr: SocketAddr,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::post(format!("http://{addr}{PUBLISH_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {}", service_token()))
        .body(())
        .unwrap();
    let (response, mut body) = sender
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    // A gRPC frame header promising 100 bytes that never come.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 100]), false)
        .unwrap();
    (response, body, driver)
}

/// The gRPC status of a trailers-only HTTP/2 response.
fn grpc_status(response: &http::Response<h2::RecvStream>) -> (String, String) {
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    (header("grpc-status"), header("grpc-message"))
}

#[tokio::test]
async fn publish_bodies_over_the_limit_are_refused_small_or_huge() {
    let server = TestServer::start_with(|c| c.limits.max_event_bytes = 1024).await;
    let mut client = server.client().await;
    let service = service_token();

    let padded = |size: usize| {
        let pad = "x".repeat(size);
        Body::Json(
            format!(r#"{{"userId":"u1","deviceId":"d1","errorType":"e","pad":"{pad}"}}"#)
                .into_bytes(),
        )
    };
    // Just over the limit: our own check, which says how large and what limit.
    let status = publish_as(&mut client, &service, padded(2000))
        .await
        .unwrap_err();
    assert_exhausted(&status, "--max-event-bytes");
    assert!(status.message().contains("1024"), "{status:?}");
    // Far over it: refused by the decoder before the message is read, with the same code.
    let status = publish_as(&mut client, &service, padded(1 << 20))
        .await
        .unwrap_err();
    assert_exhausted(&status, "--max-event-bytes");
    // The same connection still works.
    publish_as(&mut client, &service, json("fits"))
        .await
        .unwrap();
    let text = server.metrics_text().await;
    assert!(text.contains(r#"reason="too_large""#), "{text}");
}

#[tokio::test]
async fn event_type_patterns_are_limited_in_number_and_length() {
    let server = TestServer::start_with(|c| {
        c.limits.max_event_types = 2;
        c.limits.max_pattern_len = 12;
    })
    .await;
    let mut client = server.client().await;
    let open = |types: &[&str]| pb::SubscribeRequest {
        user_id: "u1".into(),
        event_types: types.iter().map(|&t| t.into()).collect(),
        ..Default::default()
    };
    let token = token("u1", &["user"]);
    let status = client
        .subscribe(with_token(open(&["a.b", "c.d", "e.f"]), &token))
        .await
        .unwrap_err();
    assert_exhausted(&status, "--max-event-types");
    let status = client
        .subscribe(with_token(open(&["billing.payment_success"]), &token))
        .await
        .unwrap_err();
    assert_exhausted(&status, "--max-pattern-len");
    assert!(status.message().contains("event_types[0]"), "{status:?}");

    // Within both limits, the subscription works.
    let mut stream = subscribe(&mut client, open(&["device.*", "quota.*"])).await;
    publish_json(&mut client, "device.error", &device_error("e1", "u1", "d1"))
        .await
        .unwrap();
    assert_eq!(next_event(&mut stream).await.id, "e1");
}

#[tokio::test]
async fn streams_per_connection_are_limited_and_freed_when_a_stream_ends() {
    let server = TestServer::start_with(|c| c.limits.max_streams_per_connection = 2).await;
    // Two users, so the per-principal limit is not what trips.
    let mut crowded = server.client().await;
    let _first = subscribe(&mut crowded, request("a")).await;
    let second = subscribe(&mut crowded, request("b")).await;
    let status = crowded
        .subscribe(with_token(request("c"), &token("c", &["user"])))
        .await
        .unwrap_err();
    assert_exhausted(&status, "--max-streams-per-connection");

    // Another connection is not affected, and receives its events.
    let mut other = server.client().await;
    let mut c_stream = subscribe(&mut other, request("c")).await;
    publish_json(
        &mut other,
        "device.error",
        &device_error("for-c", "c", "d1"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut c_stream).await.id, "for-c");

    // Ending a stream frees its place (the server learns of it from the stream's reset).
    drop(second);
    eventually("the ended stream's place freed", async || {
        let subscribed = crowded
            .subscribe(with_token(request("d"), &token("d", &["user"])))
            .await;
        still_exhausted(subscribed)
    })
    .await;
}

#[tokio::test]
async fn streams_per_principal_are_limited_across_connections() {
    let server = TestServer::start_with(|c| c.limits.max_streams_per_principal = 2).await;
    let mut one = server.client().await;
    let mut two = server.client().await;
    let mut three = server.client().await;
    let mut alice = subscribe(&mut one, request("alice")).await;
    let _alice_again = subscribe(&mut two, request("alice")).await;
    let status = three
        .subscribe(with_token(request("alice"), &token("alice", &["user"])))
        .await
        .unwrap_err();
    assert_exhausted(&status, "--max-streams-per-principal");
    // Nothing about whether the limit is reached leaks to others: bob opens as usual.
    let mut bob = subscribe(&mut three, request("bob")).await;
    publish_json(&mut three, "device.error", &device_error("b1", "bob", "d"))
        .await
        .unwrap();
    publish_json(
        &mut three,
        "device.error",
        &device_error("a1", "alice", "d"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut bob).await.id, "b1");
    assert_eq!(next_event(&mut alice).await.id, "a1");
}

#[tokio::test]
async fn the_publish_rate_is_limited_per_principal() {
    let server = TestServer::start_with(|c| c.limits.max_publish_rate = 3).await;
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    let busy = token("busy-service", &["service"]);
    // A burst of three is allowed (the bucket starts full); publishing on without pause is
    // refused as soon as the bucket is empty. Refill is 3/s: a slow machine may get a few more
    // through first, so publish until refused rather than a fixed number of times.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut i = 0;
    let (at, status) = loop {
        match publish_as(&mut client, &busy, json(&format!("burst-{i}"))).await {
            Ok(_) => i += 1,
            Err(status) => break (i, status),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{i} publishes in a burst and none refused"
        );
    };
    assert!(at >= 3, "refused after only {at} publishes");
    assert_exhausted(&status, "--max-publish-rate");
    // Another service has its own budget, and subscribers keep receiving.
    let calm = token("calm-service", &["service"]);
    publish_as(&mut client, &calm, json("calm")).await.unwrap();
    for i in 0..at {
        assert_eq!(next_event(&mut stream).await.id, format!("burst-{i}"));
    }
    assert_eq!(next_event(&mut stream).await.id, "calm");
    // The refused publish was not stored: the next one is the next event to arrive.
    publish_as(&mut client, &calm, json("calm-again"))
        .await
        .unwrap();
    assert_next_is(&mut stream, "calm-again", "u1").await;
    let text = server.metrics_text().await;
    assert!(text.contains(r#"reason="limit_publish_rate""#), "{text}");
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_and_health_still_answers() {
    let server = TestServer::start_with(|c| c.limits.max_concurrent_requests = 2).await;
    let (_r1, body1, driver1) = stalled_publish(server.addr).await;
    let (_r2, body2, driver2) = stalled_publish(server.addr).await;
    let mut client = server.client().await;

    // The two stalled calls hold both places (they have reached the server once a third call
    // is shed; poll briefly, as their headers travel on other connections).
    let status = eventually(
        "a third concurrent request shed",
        async || match publish_as(&mut client, &service_token(), json("shed")).await {
            Err(status) => Ok(status),
            Ok(answer) => Err(answer),
        },
    )
    .await;
    assert_exhausted(&status, "--max-concurrent-requests");
    // Probes see the real state, not the load.
    let mut health = HealthClient::new(server.channel().await);
    let health = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    // When the stalled calls go away, service resumes.
    drop((body1, body2));
    driver1.abort();
    driver2.abort();
    eventually("places given back", async || {
        still_exhausted(publish_as(&mut client, &service_token(), json("after")).await)
    })
    .await;
}

#[tokio::test]
async fn a_call_that_does_not_answer_in_time_is_ended_and_others_go_on() {
    let server =
        TestServer::start_with(|c| c.limits.request_timeout = Duration::from_millis(300)).await;
    // A subscription opened before the stalled call: by the time the timeout answers that
    // call, the subscription has been open for longer than the timeout too.
    let mut client = server.client().await;
    let u1 = token("u1", &["user"]);
    let mut stream = retry_timed_out("subscribe", async || {
        let opened = client.subscribe(with_token(request("u1"), &u1)).await?;
        Ok(opened.into_inner())
    })
    .await;
    assert!(matches!(
        next_kind(&mut stream).await,
        pb::subscribe_response::Kind::CaughtUp(_)
    ));
    let (response, _body, _driver) = stalled_publish(server.addr).await;
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("the stalled call is answered by the timeout")
        .unwrap();
    let (code, message) = grpc_status(&response);
    assert_eq!(
        code,
        (Code::ResourceExhausted as i32).to_string(),
        "{message}"
    );
    assert!(message.contains("--request-timeout"), "{message}");

    // The subscription outlives the timeout: only its opening is timed.
    let late = device_error("late", "u1", "d");
    retry_timed_out("publish", async || {
        publish_json(&mut client, "device.error", &late).await
    })
    .await;
    assert_eq!(next_event(&mut stream).await.id, "late");
}

/// For [`eventually`]: `result` as it is, after checking that a refusal, while waiting for a
/// place, is the limit's (`RESOURCE_EXHAUSTED`) and nothing else.
fn still_exhausted<T>(result: Result<T, Status>) -> Result<T, Status> {
    if let Err(status) = &result {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    result
}

/// `call`, again as long as the server sheds it for `--request-timeout` (a machine too slow to
/// answer even a quick call within the short timeout of a test), up to the test's patience.
/// For calls that may be repeated: a repeated publish is a duplicate, stored once.
async fn retry_timed_out<T>(what: &str, mut call: impl AsyncFnMut() -> Result<T, Status>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && status.message().contains("--request-timeout")
                    && tokio::time::Instant::now() < deadline => {}
            Err(status) => panic!("{what}: {status:?}"),
        }
    }
}
