//! A hostile client and a careless producer against a real server and a real broker: nothing
//! one client, one message or one damaged file does may stall, crash or starve the server for
//! everyone else. Each test names the attack; the old failure is in its doc comment.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{process::Stdio, time::Duration};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use notify_backbone::{
    inbox::InboxSettings,
    ingest::dead_letter,
    pb::{self, publish_request::Body, subscribe_response::Kind},
    store::{Cursor, Durability, Journal, JournalSettings, RedbJournal},
};
use support::{
    amqp::{Names, Producer},
    *,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_notify-backbone");

// ---------------------------------------------------------------------------------------------
// Producers: messages that once stopped the ingest or ate the server's memory
// ---------------------------------------------------------------------------------------------

/// A non-JSON message with ~128 KiB of AMQP headers: its dead-letter copy (the headers plus the
/// `x-notify-*` reasons) was larger than the broker's frame, the broker closed the connection,
/// the message came back, and so on forever: nothing behind it got through. Now the copy leaves
/// the original headers out (and says so), the message leaves the queue, no reconnect happens.
#[tokio::test]
async fn a_poison_message_with_huge_headers_is_dead_lettered_and_the_ingest_goes_on() {
    let names = Names::unique("huge-headers");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;

    // As large as a header frame of the broker's default 128 KiB frames can carry.
    let mut headers = FieldTable::default();
    headers.insert(
        "x-pad".into(),
        AMQPValue::LongString(LongString::from(vec![b'p'; 130_900])),
    );
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    producer
        .publish_raw(&names.exchange, "device.error", b"not json", properties)
        .await;
    let sentinel = device_error("after-huge-headers", "u1", "d1");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut firehose, "after-huge-headers", "firehose").await;
    // Without a single reconnect: the copy that fits was sent the first time. (A copy too large
    // would cost one reconnect and then a reject, whose dead letter this test's own connection
    // could not even receive.)
    assert_eq!(server.metric("notify_ingest_reconnects_total").await, 0.0);

    let dead = producer.take(&names.dead_letter_queue, 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("not_json"));
    let copy_headers = dead[0].properties.headers().clone().unwrap_or_default();
    assert!(dead_letter::header_text(&copy_headers, "x-pad").is_none());
    assert!(
        matches!(
            copy_headers.inner().get(dead_letter::HEADERS_DROPPED_HEADER),
            Some(AMQPValue::LongLongInt(n)) if *n > 130_900
        ),
        "{copy_headers:?}"
    );
    assert_eq!(dead[0].body, b"not json");
    // Checked again now that the copy was confirmed: a reconnect it caused would have come first.
    assert_eq!(server.metric("notify_ingest_reconnects_total").await, 0.0);
    producer.clean_up(&[&names]).await;
}

/// No size limit on the AMQP path: a 16.7 MB body was decoded (500 MB of memory for one
/// message) and stored, and a 6 MB event then failed every default client (4 MB receive limit)
/// at every resume. One limit on every ingest path: over it, the message is dead-lettered
/// `too_large`, whether the body itself is too large or the event decoded from it would be.
#[tokio::test]
async fn amqp_messages_over_the_event_size_limit_are_dead_lettered_too_large() {
    let names = Names::unique("too-large");
    let producer = Producer::connect().await;
    let limit = 64 * 1024;
    let server =
        TestServer::start_amqp(&names, |config| config.limits.max_event_bytes = limit).await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;

    // A body over the limit: refused before it is parsed.
    let keys: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
    let huge = format!(r#"{{"userId":"u1","deviceId":"d1",{}}}"#, keys.join(","));
    assert!(huge.len() > limit);
    producer
        .publish(&names.exchange, "device.rebooted", huge.as_bytes())
        .await;
    // A body under the limit whose untyped event, encoded, is over it.
    let keys: Vec<String> = (0..5_000).map(|i| format!(r#""k{i}":1"#)).collect();
    let swelling = format!(r#"{{"userId":"u1","deviceId":"d1",{}}}"#, keys.join(","));
    assert!(swelling.len() < limit);
    producer
        .publish(&names.exchange, "device.rebooted", swelling.as_bytes())
        .await;
    let sentinel = device_error("after-too-large", "u1", "d1");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut firehose, "after-too-large", "firehose").await;

    let dead = producer.take(&names.dead_letter_queue, 2).await;
    let reasons: Vec<_> = dead.iter().map(|d| d.reason.as_deref()).collect();
    assert_eq!(reasons, [Some("too_large"), Some("too_large")]);
    // The same limit for Publish, with the code a limit has.
    let status = publish_json(&mut client, "device.rebooted", &huge)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--max-event-bytes"), "{status:?}");
    producer.clean_up(&[&names]).await;
}

/// Any routing key with a known prefix was accepted: `billing.#`, NULs, right-to-left
/// overrides, kilobytes of key, stored and delivered as types no subscriber pattern can name.
/// One grammar on both ingest paths.
#[tokio::test]
async fn routing_keys_outside_the_event_type_grammar_are_refused_on_both_paths() {
    let names = Names::unique("bad-keys");
    let producer = Producer::connect().await;
    let server = TestServer::start_amqp(&names, |_| {}).await;
    let mut client = server.client().await;
    let mut firehose = subscribe(&mut client, request("*")).await;
    let body = br#"{"userId":"u1","deviceId":"d1"}"#;
    // AMQP routing keys are at most 255 bytes; 200 is over the grammar's 128.
    let long = format!("billing.{}", "a".repeat(200));
    let bad = [
        "billing.#",
        "billing.*",
        "billing.a\0b",
        "billing.\u{202e}evil",
        "billing.Upper",
        long.as_str(),
    ];
    for key in bad {
        producer.publish(&names.exchange, key, body).await;
    }
    let sentinel = device_error("after-bad-keys", "u1", "d1");
    producer
        .publish(&names.exchange, "device.error", sentinel.as_bytes())
        .await;
    assert_next_is(&mut firehose, "after-bad-keys", "firehose").await;
    let dead = producer.take(&names.dead_letter_queue, bad.len()).await;
    assert_eq!(dead.len(), bad.len());
    for letter in &dead {
        assert_eq!(
            letter.reason.as_deref(),
            Some("invalid_routing_key"),
            "{}",
            letter.routing_key
        );
    }
    let huge = format!("billing.{}", "a".repeat(10_000));
    for key in bad.iter().copied().chain([huge.as_str()]) {
        let status = publish_json(&mut client, key, std::str::from_utf8(body).unwrap())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key:?}: {status:?}");
        assert!(status.message().len() < 1024, "{status:?}");
    }
    producer.clean_up(&[&names]).await;
}

/// Ids are bounded where they enter: an id a subscriber's filter cannot name (over 256 bytes)
/// was clipped in the journal while the live copy was not.
#[tokio::test]
async fn ids_longer_than_a_filter_can_name_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let long = "u".repeat(300);
    let status = publish_json(&mut client, "device.error", &device_error("e", &long, "d1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("payload.userId"), "{status:?}");
    let status = publish_json(
        &mut client,
        "device.error",
        &device_error(&long, "u1", "d1"),
    )
    .await
    .unwrap_err();
    assert!(status.message().contains("eventId"), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Clients: streams and connections that once held the server's workers or descriptors
// ---------------------------------------------------------------------------------------------

/// Many resumes from the start of a long journal by a user who owns none of its events: each
/// stream's poll once read the journal on an async worker until something matched, so 60 of
/// them held every live stream, `Publish` and health check for seconds. Now replays read on
/// the journal readers in bounded steps. (That a live stream keeps its latency during such a
/// storm is measured by `notify-bench --scenario resume-storm`, BENCHMARKS.md; here: everyone gets
/// what they should while it runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_storm_completes_for_everyone_while_live_delivery_goes_on() {
    const STORED: usize = 30_000;
    const RESUMES: usize = 40;
    let data = DataDir::new();
    let epoch = {
        let mut journal = RedbJournal::open(JournalSettings {
            dir: data.0.clone(),
            durability: Durability::Interval(Duration::from_secs(60)),
            dedupe_window: Duration::from_secs(3600),
            cache_bytes: 16 << 20,
            min_free_bytes: 0,
            checkpoint_interval: Duration::ZERO,
            inbox_types: InboxSettings::default(),
        })
        .unwrap();
        for batch in 0..STORED / 1000 {
            let mut events: Vec<pb::Event> = (0..1000)
                .map(|i| pb::Event {
                    id: format!("stored-{batch}-{i}"),
                    r#type: "device.error".into(),
                    user_id: format!("owner-{}", i % 50),
                    device_id: "d1".into(),
                    ..Default::default()
                })
                .collect();
            journal.append(&mut events).unwrap();
        }
        journal.head().epoch
    };
    let server = TestServer::restart_on(&data, |_| {}).await;
    let mut client = server.client().await;
    let mut live = subscribe(&mut client, request("live-user")).await;

    let start = Cursor { epoch, position: 0 }.to_string();
    let storm: Vec<_> = (0..RESUMES)
        .map(|_| {
            let mut client = client.clone();
            let start = start.clone();
            tokio::spawn(async move {
                let resume = pb::SubscribeRequest {
                    resume_after: start,
                    ..Default::default()
                };
                let mut stream = client
                    .subscribe(with_token(resume, &token("nobody", &["user"])))
                    .await
                    .unwrap()
                    .into_inner();
                // Nothing of the journal is this user's: the replay ends with CaughtUp alone.
                loop {
                    let message = tokio::time::timeout(PATIENCE * 6, stream.message())
                        .await
                        .expect("the replay ends in time")
                        .unwrap()
                        .unwrap();
                    match message.kind {
                        Some(Kind::CaughtUp(caught_up)) => return caught_up.cursor,
                        Some(Kind::Heartbeat(_)) => continue,
                        other => panic!("expected only CaughtUp, got {other:?}"),
                    }
                }
            })
        })
        .collect();
    // Live events reach the live subscriber, in order, while the storm runs.
    for i in 0..20 {
        let id = format!("live-{i}");
        publish_json(
            &mut client,
            "device.error",
            &device_error(&id, "live-user", "d1"),
        )
        .await
        .unwrap();
        assert_eq!(next_event(&mut live).await.id, id);
    }
    let head = Cursor {
        epoch,
        position: STORED as u64,
    };
    for resume in storm {
        let caught_up = Cursor::parse(&resume.await.unwrap()).unwrap();
        assert_eq!(caught_up.epoch, epoch);
        assert!(caught_up.position >= head.position, "{caught_up}");
    }
}

/// Connections that say nothing, or half an HTTP/2 preface, or half an HTTP/1.1 request line,
/// stayed open forever; 20,000 of them exhausted the descriptors and the server stopped
/// answering. Now a connection must send its first request within the handshake timeout.
#[tokio::test]
async fn connections_that_do_not_finish_their_handshake_are_closed() {
    let timeout = Duration::from_millis(300);
    let server = TestServer::start_with(|config| config.limits.handshake_timeout = timeout).await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n", b"POST /cloudphone.no"] {
        let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        socket.write_all(opening).await.unwrap();
        let mut buf = [0_u8; 64];
        // The server closes it: end of stream, or a reset.
        let read = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{opening:?}: still open after {PATIENCE:?}"));
        assert!(matches!(read, Ok(0) | Err(_)), "{opening:?}: {read:?}");
    }
    assert!(
        server
            .metric("notify_connections_handshake_timeouts_total")
            .await
            >= 3.0
    );
    // A client that did send a request is not cut off once the timeout has passed.
    let mut client = server.client().await;
    let mut stream = subscribe(&mut client, request("u1")).await;
    tokio::time::sleep(timeout * 3).await;
    let published = publish_json(
        &mut client,
        "device.error",
        &device_error("still", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut stream).await.id, published.id);
}

/// Connections beyond `--max-connections` are closed as soon as they are accepted; a place
/// freed is a place a real client can take.
#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 3;
        config.limits.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Accepted one at a time: wait until the server holds all three.
    eventually("all three accepted", async || {
        let connections = server.metric("notify_connections").await;
        seen_if(connections >= 3.0, connections)
    })
    .await;
    let mut extra = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0_u8; 16];
    let read = tokio::time::timeout(PATIENCE, extra.read(&mut buf))
        .await
        .expect("the extra connection is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(server.metric("notify_connections_refused_total").await >= 1.0);
    // Free a place: a real client gets in.
    drop(idle.pop());
    eventually("a place freed for a real client", async || {
        let channel = tonic::transport::Channel::from_shared(server.url())
            .unwrap()
            .connect()
            .await
            .map_err(|error| error.to_string())?;
        let mut client = pb::notification_service_client::NotificationServiceClient::new(channel);
        publish_json(&mut client, "device.error", &device_error("in", "u1", "d1"))
            .await
            .map_err(|status| format!("{status:?}"))
    })
    .await;
}

/// Health `Watch` streams need no token and were unlimited: 30,000 of them took 200 MB. Now
/// they (and reflection streams) count against the per-connection stream limit, and against a
/// server-wide limit for streams without a token.
#[tokio::test]
async fn health_watch_and_reflection_streams_are_limited() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let server = TestServer::start_with(|config| {
        config.limits.max_streams_per_connection = 3;
        config.limits.max_unauthenticated_streams = 4;
    })
    .await;
    let watch = |channel: tonic::transport::Channel| async move {
        HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
    };
    let first = server.channel().await;
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(watch(first.clone()).await.unwrap().into_inner());
    }
    // A reflection stream counts too: the connection's third.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .unwrap();
    let mut reflection = ServerReflectionClient::new(first.clone())
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(reflection.message().await.unwrap().is_some());
    let status = watch(first.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-streams-per-connection"),
        "{status:?}"
    );
    // Another connection: one more fits the server-wide limit of 4, the next does not.
    let second = server.channel().await;
    open.push(watch(second.clone()).await.unwrap().into_inner());
    let status = watch(second.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-unauthenticated-streams"),
        "{status:?}"
    );
    // Health Check (unary) is never limited, and an ended stream gives its place back.
    HealthClient::new(second.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    drop(open.pop());
    eventually("the place freed", async || watch(second.clone()).await).await;
    drop((tx, reflection));
}

/// A correctly signed token whose `exp` is 2^63 seconds or more overflowed the clock and
/// panicked the request.
#[tokio::test]
async fn a_token_that_expires_after_the_end_of_time_is_no_panic() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for exp in [1_u64 << 63, u64::MAX] {
        let claims = serde_json::json!({
            "sub": "forever", "username": "forever", "roles": ["service"],
            "iss": notify_backbone::auth::DEFAULT_ISSUER,
            "aud": notify_backbone::auth::DEFAULT_AUDIENCE,
            "exp": exp,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
        )
        .unwrap();
        let mut stream = client
            .subscribe(with_token(request(""), &token))
            .await
            .unwrap_or_else(|status| panic!("exp {exp}: {status:?}"))
            .into_inner();
        assert!(matches!(next_kind(&mut stream).await, Kind::CaughtUp(_)));
        let publish = pb::PublishRequest {
            routing_key: "device.error".into(),
            body: Some(Body::Json(
                device_error(&format!("forever-{exp}"), "forever", "d1").into_bytes(),
            )),
        };
        client.publish(with_token(publish, &token)).await.unwrap();
        assert_eq!(next_event(&mut stream).await.id, format!("forever-{exp}"));
    }
}

/// A token whose subject is `*` was put in the firehose's routing list, and only the final
/// visibility check kept other users' events from it (the routing itself is checked by
/// `grpc::service`'s unit test): it is the user `*`, nothing more. And no event can be for that
/// "user": producers could publish for `*`, the firehose's selector, on both paths; now both
/// refuse it (the AMQP path: `tests/amqp_ingest.rs`).
#[tokio::test]
async fn a_subject_named_like_a_wildcard_sees_no_one_elses_events_and_none_is_published_for_it() {
    let server =
        TestServer::start_with(|c| c.heartbeat_interval = Duration::from_millis(200)).await;
    let mut client = server.client().await;
    let star = token("*", &["user"]);
    let mut stream = client
        .subscribe(with_token(request(""), &star))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next_kind(&mut stream).await, Kind::CaughtUp(_)));
    let others = publish_json(
        &mut client,
        "device.error",
        &device_error("others", "u1", "d1"),
    )
    .await
    .unwrap();
    let status = publish_json(&mut client, "device.error", &device_error("own", "*", "d1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("payload.userId"), "{status:?}");
    // The sentinel: a heartbeat at or past the other user's event means the stream went past it
    // (a heartbeat goes only to a stream with nothing queued, at the head it has reached).
    let others = Cursor::parse(&others.cursor).unwrap();
    loop {
        match next_kind(&mut stream).await {
            Kind::Heartbeat(beat) if Cursor::parse(&beat.cursor).unwrap() >= others => break,
            Kind::Heartbeat(_) => continue,
            other => panic!("the user `*` got {other:?}"),
        }
    }
    // And it cannot ask for the firehose by name.
    let status = client
        .subscribe(with_token(request("*"), &star))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

// ---------------------------------------------------------------------------------------------
// The process: a damaged file, a dead log pipe
// ---------------------------------------------------------------------------------------------

/// A small journal with fsync at every commit in `data`, written directly as an older server
/// would have.
fn small_journal(data: &DataDir) -> RedbJournal {
    RedbJournal::open(JournalSettings {
        dir: data.0.clone(),
        durability: Durability::EveryCommit,
        dedupe_window: Duration::from_secs(60),
        cache_bytes: 1 << 20,
        min_free_bytes: 0,
        checkpoint_interval: Duration::from_millis(50),
        inbox_types: InboxSettings::default(),
    })
    .unwrap()
}

/// A truncated `journal.redb` tripped an assertion inside the storage engine: exit 101 with a
/// panic, instead of the reason; then the reason, after the panic's own line.
#[tokio::test]
async fn a_truncated_journal_stops_start_up_with_the_reason() {
    let data = DataDir::new();
    {
        let mut journal = small_journal(&data);
        let mut events: Vec<pb::Event> = (0..500)
            .map(|i| pb::Event {
                id: format!("e{i}"),
                r#type: "device.error".into(),
                user_id: "u1".into(),
                ..Default::default()
            })
            .collect();
        journal.append(&mut events).unwrap();
    }
    let file = data.0.join("journal.redb");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let output = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--jwt-secret",
            TEST_SECRET,
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data.0)
        // scripts/test exports AMQP_URL; without a broker the node cannot leave a queue behind.
        .env_remove("AMQP_URL")
        .env_remove("RUST_BACKTRACE")
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("it stops at once")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--data-dir"), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
    // Only the reason: the panic it came from was caught, and is not printed as well.
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An untyped event an older server stored with its body nested too deep for protobuf decoders
/// (60 nested arrays: level 123 in its `SubscribeResponse`) was left out of every history page
/// without a word, and stopped every stream resuming over it, at every resume. Now the page
/// holds it without its payload and goes on, the replay sends it the same way, and each read is
/// counted in `notify_unreadable_events_total` (and logged).
#[tokio::test]
async fn a_stored_event_too_deep_to_decode_is_served_without_its_payload_on_every_read_path() {
    let data = DataDir::new();
    let epoch = {
        let mut journal = small_journal(&data);
        let mut value = prost_types::Value {
            kind: Some(prost_types::value::Kind::ListValue(Default::default())),
        };
        for _ in 1..60 {
            value = prost_types::Value {
                kind: Some(prost_types::value::Kind::ListValue(
                    prost_types::ListValue {
                        values: vec![value],
                    },
                )),
            };
        }
        let event = |id: &str, r#type: &str, payload| pb::Event {
            id: id.into(),
            r#type: r#type.into(),
            user_id: "u1".into(),
            payload: Some(payload),
            ..Default::default()
        };
        let mut events = vec![
            event(
                "before",
                "device.started",
                pb::event::Payload::DeviceStarted(Default::default()),
            ),
            event(
                "deep",
                "billing.anything",
                pb::event::Payload::Untyped(prost_types::Struct {
                    fields: [("x".to_owned(), value)].into(),
                }),
            ),
            event(
                "after",
                "device.started",
                pb::event::Payload::DeviceStarted(Default::default()),
            ),
        ];
        journal.append(&mut events).unwrap();
        journal.head().epoch
    };
    let server = TestServer::restart_on(&data, |_| {}).await;
    let mut client = server.client().await;
    let u1 = token("u1", &["user"]);
    let list = |after: String| pb::ListEventsRequest {
        after,
        limit: 2,
        ..Default::default()
    };
    let page = client
        .list_events(with_token(list(String::new()), &u1))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["before", "deep"]);
    let deep = &page.events[1];
    assert_eq!(
        (deep.payload.as_ref(), deep.r#type.as_str()),
        (None, "billing.anything")
    );
    let page = client
        .list_events(with_token(list(page.next_cursor), &u1))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["after"]);
    assert!(page.end);
    assert_eq!(server.metric("notify_unreadable_events_total").await, 1.0);

    let resume = pb::SubscribeRequest {
        resume_after: Cursor { epoch, position: 0 }.to_string(),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(with_token(resume, &u1))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut stream).await;
        ids.push((event.id, event.payload.is_some()));
    }
    assert_eq!(
        ids,
        [
            ("before".to_owned(), true),
            ("deep".to_owned(), false),
            ("after".to_owned(), true)
        ]
    );
    assert!(matches!(next_kind(&mut stream).await, Kind::CaughtUp(_)));
    assert_eq!(server.metric("notify_unreadable_events_total").await, 2.0);
}

/// With stderr a closed pipe (`serve 2>&1 | head -1`, a log collector that died), the first
/// log line after SIGTERM panicked the signal handler, and only SIGKILL stopped the process.
/// Also: the soft limit on open files is raised to the hard limit at start-up.
#[tokio::test]
async fn sigterm_stops_the_server_even_when_its_log_pipe_is_gone() {
    let data = DataDir::new();
    // A low soft limit to begin with, as many systems set it.
    let command = format!(
        "ulimit -Sn 256 && exec {BIN} serve --jwt-secret {TEST_SECRET} --listen 127.0.0.1:0 \
         --metrics-listen 127.0.0.1:0 --data-dir {}",
        data.0.display()
    );
    let mut child = tokio::process::Command::new("bash")
        .args(["-c", &command])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let serving = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("serving gRPC");
            log.push(line);
            if done {
                return;
            }
        }
        panic!("the server ended before serving");
    })
    .await;
    assert!(serving.is_ok(), "not serving in time: {log:#?}");
    assert!(
        log.iter().any(|l| l.contains("open files")),
        "the open-file limit is logged: {log:#?}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files[0], open_files[1], "soft = hard: {limits}");
    // The log pipe goes away; then SIGTERM.
    drop(lines);
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("SIGTERM stopped the server")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Attacks that already failed, kept failing: bad tokens, other users' streams, bad bodies,
// bad cursors, over gRPC and grpc-web
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_old_attacks_still_fail_over_grpc_and_grpc_web() {
    let server = TestServer::start().await;
    let mut grpc = server.client().await;
    let mut web = server.grpc_web_client();
    let wrong_secret = notify_backbone::auth::mint_hs256(
        b"not the server's secret",
        "u1",
        &["admin".into()],
        Duration::from_secs(60),
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )
    .unwrap();
    let mallory = token("mallory", &["user"]);
    let future = Cursor {
        epoch: 1,
        position: 0,
    };
    let cases: Vec<(&str, pb::SubscribeRequest, String, Code)> = vec![
        (
            "no token",
            request("u1"),
            String::new(),
            Code::Unauthenticated,
        ),
        (
            "a forged token",
            request("u1"),
            wrong_secret,
            Code::Unauthenticated,
        ),
        (
            "another user's stream",
            request("u1"),
            mallory.clone(),
            Code::PermissionDenied,
        ),
        (
            "the firehose",
            request("*"),
            mallory.clone(),
            Code::PermissionDenied,
        ),
        (
            "the admin feed",
            pb::SubscribeRequest {
                admin_feed: true,
                ..Default::default()
            },
            mallory.clone(),
            Code::PermissionDenied,
        ),
        (
            "a cursor that is not one",
            pb::SubscribeRequest {
                resume_after: "'; drop table".into(),
                ..Default::default()
            },
            mallory.clone(),
            Code::InvalidArgument,
        ),
        (
            "a filter pattern that is not one",
            pb::SubscribeRequest {
                event_types: vec!["billing.#".into()],
                ..Default::default()
            },
            mallory.clone(),
            Code::InvalidArgument,
        ),
    ];
    for (case, request, token, code) in cases {
        let with = |request: pb::SubscribeRequest| {
            if token.is_empty() {
                tonic::Request::new(request)
            } else {
                with_token(request, &token)
            }
        };
        let status = grpc.subscribe(with(request.clone())).await.unwrap_err();
        assert_eq!(status.code(), code, "gRPC, {case}: {status:?}");
        let status = web.subscribe(with(request)).await.unwrap_err();
        assert_eq!(status.code(), code, "grpc-web, {case}: {status:?}");
    }
    // A cursor of this journal, but ahead of it.
    let ahead = pb::SubscribeRequest {
        resume_after: Cursor {
            epoch: server_epoch(&mut grpc).await,
            position: 1_000_000,
        }
        .to_string(),
        ..Default::default()
    };
    let status = grpc
        .subscribe(with_token(ahead, &mallory))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Publishing needs a publisher, and a body that decodes.
    let status = publish_as(&mut grpc, &mallory, "not json")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = publish_as(&mut grpc, &service_token(), "not json")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Another epoch's cursor is not refused: it gets a Gap, then the oldest events.
    let mut stream = grpc
        .subscribe(with_token(
            pb::SubscribeRequest {
                resume_after: future.to_string(),
                ..Default::default()
            },
            &mallory,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(next_kind(&mut stream).await, Kind::Gap(_)));
}

async fn publish_as(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
    token: &str,
    json: &str,
) -> Result<pb::PublishResponse, tonic::Status> {
    let request = pb::PublishRequest {
        routing_key: "device.error".into(),
        body: Some(Body::Json(json.as_bytes().to_vec())),
    };
    client
        .publish(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

/// The journal's epoch, from the cursor of a fresh stream's `CaughtUp`.
async fn server_epoch(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
) -> u64 {
    let mut stream = subscribe_raw(client).await;
    match next_kind(&mut stream).await {
        Kind::CaughtUp(caught_up) => Cursor::parse(&caught_up.cursor).unwrap().epoch,
        other => panic!("expected CaughtUp, got {other:?}"),
    }
}

async fn subscribe_raw(
    client: &mut pb::notification_service_client::NotificationServiceClient<
        tonic::transport::Channel,
    >,
) -> tonic::Streaming<pb::SubscribeResponse> {
    client
        .subscribe(with_token(request(""), &token("epoch-reader", &["user"])))
        .await
        .unwrap()
        .into_inner()
}
