//! `PublishStream`: many publishes on one call, answered one by one in order, each once its
//! event is journaled; a bad request is answered with its error and the stream goes on.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::time::{Duration, SystemTime};

use notify_backbone::pb::{
    self, publish_request::Body, publish_stream_response::Result as Outcome,
};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

fn json(routing_key: &str, body: &str) -> pb::PublishStreamRequest {
    pb::PublishStreamRequest {
        publish: Some(pb::PublishRequest {
            routing_key: routing_key.into(),
            body: Some(Body::Json(body.as_bytes().to_vec())),
        }),
    }
}

/// Opens a `PublishStream` with `token`; the sender feeds its requests.
async fn open(
    client: &mut pb::notification_service_client::NotificationServiceClient<Channel>,
    token: &str,
) -> Result<
    (
        mpsc::Sender<pb::PublishStreamRequest>,
        Streaming<pb::PublishStreamResponse>,
    ),
    tonic::Status,
> {
    let (requests, outbox) = mpsc::channel(64);
    let answers = client
        .publish_stream(with_token(ReceiverStream::new(outbox), token))
        .await?
        .into_inner();
    Ok((requests, answers))
}

async fn next_answer(answers: &mut Streaming<pb::PublishStreamResponse>) -> Outcome {
    tokio::time::timeout(PATIENCE, answers.message())
        .await
        .expect("an answer in time")
        .expect("the stream goes on")
        .expect("an answer, not the end")
        .result
        .expect("result set")
}

fn published(outcome: Outcome) -> pb::PublishResponse {
    match outcome {
        Outcome::Published(published) => published,
        Outcome::Error(error) => panic!("expected published, got {error:?}"),
    }
}

fn refused(outcome: Outcome) -> pb::PublishError {
    match outcome {
        Outcome::Error(error) => error,
        Outcome::Published(published) => panic!("expected an error, got {published:?}"),
    }
}

#[tokio::test]
async fn answers_come_in_request_order_and_a_bad_request_does_not_end_the_stream() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;
    let (requests, mut answers) = open(&mut client, &service_token()).await.unwrap();
    let sent = [
        json("device.error", &device_error("ps-1", "alice", "d1")),
        json("device.error", "{not json"),
        json("device.error", &device_error("ps-2", "bob", "d2")),
        json("device.error", &device_error("ps-1", "alice", "d1")),
        pb::PublishStreamRequest {
            publish: Some(pb::PublishRequest {
                routing_key: "device.error".into(),
                body: None,
            }),
        },
        pb::PublishStreamRequest { publish: None },
        json("device.error", &device_error("ps-3", "alice", "d3")),
    ];
    for request in sent {
        requests.send(request).await.unwrap();
    }
    drop(requests); // the client has sent everything

    let first = published(next_answer(&mut answers).await);
    assert_eq!((first.id.as_str(), first.duplicate), ("ps-1", false));
    let bad_json = refused(next_answer(&mut answers).await);
    assert_eq!(bad_json.code, Code::InvalidArgument as i32, "{bad_json:?}");
    assert_eq!(bad_json.reason, "not_json");
    let second = published(next_answer(&mut answers).await);
    assert_eq!(second.id, "ps-2");
    let again = published(next_answer(&mut answers).await);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(
        again.cursor, first.cursor,
        "a duplicate answers the first one's cursor"
    );
    for what in ["no body", "no publish"] {
        let missing = refused(next_answer(&mut answers).await);
        assert_eq!(
            (missing.code, missing.reason.as_str()),
            (Code::InvalidArgument as i32, "missing_field"),
            "{what}"
        );
    }
    let third = published(next_answer(&mut answers).await);
    assert_eq!(third.id, "ps-3");
    // Every request answered, the stream ends OK.
    let end = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");

    // Journaled in request order, with the answered cursors, once each.
    for expected in [&first, &second, &third] {
        let event = next_event(&mut firehose).await;
        assert_eq!((&event.id, &event.cursor), (&expected.id, &expected.cursor));
    }
    let sentinel = publish_json(
        &mut client,
        "device.error",
        &device_error("ps-sentinel", "alice", "d9"),
    )
    .await
    .unwrap();
    assert_next_is(&mut firehose, &sentinel.id, "the firehose").await;
}

#[tokio::test]
async fn the_stream_is_refused_when_it_opens_without_a_token_that_may_publish() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let user = open(&mut client, &token("alice", &["user"])).await;
    assert_eq!(user.err().map(|s| s.code()), Some(Code::PermissionDenied));
    let nobody = open(&mut client, "not-a-token").await;
    assert_eq!(nobody.err().map(|s| s.code()), Some(Code::Unauthenticated));
}

#[tokio::test]
async fn the_publish_rate_limit_refuses_requests_one_by_one() {
    let server = TestServer::start_with(|config| config.limits.max_publish_rate = 1).await;
    let mut client = server.client().await;
    let (requests, mut answers) = open(&mut client, &service_token()).await.unwrap();
    // Far more than one second's worth, sent at once: some are over the limit.
    const SENT: usize = 50;
    for n in 0..SENT {
        let body = device_error(&format!("rate-{n}"), "alice", "d1");
        requests.send(json("device.error", &body)).await.unwrap();
    }
    drop(requests);
    let (mut accepted, mut limited) = (0, 0);
    for _ in 0..SENT {
        match next_answer(&mut answers).await {
            Outcome::Published(_) => accepted += 1,
            Outcome::Error(error) => {
                assert_eq!(
                    (error.code, error.reason.as_str()),
                    (Code::ResourceExhausted as i32, "limit_publish_rate")
                );
                limited += 1;
            }
        }
    }
    assert!(
        accepted >= 1 && limited >= 1,
        "{accepted} accepted, {limited} limited"
    );
    let end = tokio::time::timeout(PATIENCE, answers.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn the_stream_ends_unauthenticated_when_its_token_expires() {
    let server = TestServer::start_with(|config| config.auth.jwt_leeway = Duration::ZERO).await;
    let mut client = server.client().await;
    // A machine too slow to open the stream before the token expires tries again with a
    // token valid for longer.
    let mut valid_for = Duration::from_secs(2);
    let (requests, mut answers, expires_at) = loop {
        assert!(
            valid_for <= Duration::from_secs(64),
            "could not open the stream"
        );
        let expires_at = SystemTime::now() + valid_for;
        let token = token_for("test-service", &["service"], valid_for);
        valid_for *= 2;
        match open(&mut client, &token).await {
            Ok((requests, answers)) => break (requests, answers, expires_at),
            Err(status) => assert_eq!(status.code(), Code::Unauthenticated),
        }
    };
    requests
        .send(json("device.error", &device_error("exp-1", "alice", "d1")))
        .await
        .unwrap();
    // The request stays open: only the token's expiry ends the stream. What was read before
    // is answered first.
    let wait = expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + PATIENCE;
    let status = tokio::time::timeout(wait, async {
        loop {
            match answers.message().await {
                Ok(Some(answer)) => {
                    published(answer.result.unwrap());
                }
                Ok(None) => panic!("ended OK, expected UNAUTHENTICATED"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream ends at the token's expiry");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("token expired"), "{status:?}");
    // Whole seconds: the token's `exp` is rounded down.
    assert!(
        SystemTime::now() + Duration::from_secs(1) >= expires_at,
        "ended early: {status:?}"
    );
    drop(requests);
}

/// On a `PublishStream` too: a body nested too deep and an event for the user `*` are each
/// answered with `INVALID_ARGUMENT`, their reason and the field at fault, and the stream goes on.
#[tokio::test]
async fn a_body_nested_too_deep_and_an_event_for_user_star_are_refused_and_the_stream_goes_on() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (requests, mut answers) = open(&mut client, &service_token()).await.unwrap();
    let deep = body::nested_arrays(60);
    for request in [
        json("billing.anything", &deep),
        json("device.error", &device_error("for-star", "*", "d1")),
        json("device.error", &device_error("fine", "u1", "d1")),
    ] {
        requests.send(request).await.unwrap();
    }
    drop(requests);
    let too_deep = refused(next_answer(&mut answers).await);
    assert_eq!(
        (too_deep.code, too_deep.reason.as_str()),
        (Code::InvalidArgument as i32, "too_deep"),
        "{too_deep:?}"
    );
    assert!(too_deep.message.contains("x[0][0]"), "{too_deep:?}");
    let for_star = refused(next_answer(&mut answers).await);
    assert_eq!(
        (for_star.code, for_star.reason.as_str()),
        (Code::InvalidArgument as i32, "invalid_field"),
        "{for_star:?}"
    );
    assert!(for_star.message.contains("payload.userId"), "{for_star:?}");
    assert_eq!(published(next_answer(&mut answers).await).id, "fine");
}
