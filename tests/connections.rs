//! The gRPC port's connections: one client cannot take every place (`--max-connections-per-peer`),
//! a connection that does nothing is closed (`--connection-idle-timeout`) while one with an open
//! stream is not, and a flood of misbehaving connections costs a few log lines, not one each.
#![allow(clippy::unwrap_used)] // a panic is how a test reports failure

mod support;

use std::{net::SocketAddr, time::Duration};

use support::{process::*, *};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A connection of its own that has made one health check: a real client, counted by the server.
async fn checked_channel(server: &TestServer) -> Result<Channel, tonic::Status> {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;
    Ok(channel)
}

/// Like [`checked_channel`], from the loopback address `source` (Linux answers on all of
/// 127.0.0.0/8): a second peer on one machine.
#[cfg(target_os = "linux")]
async fn checked_channel_from(
    server: &TestServer,
    source: std::net::Ipv4Addr,
) -> Result<Channel, tonic::Status> {
    let addr = server.addr;
    let connector = tower::service_fn(move |_: http::Uri| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = socket.connect(addr).await?;
        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
    });
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect_with_connector(connector)
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;
    Ok(channel)
}

/// Whether the server closes a connection it has just accepted (end of stream, or a reset),
/// rather than waiting for it to speak.
async fn is_closed_at_once(addr: SocketAddr) -> bool {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0_u8; 16];
    match tokio::time::timeout(PATIENCE, socket.read(&mut buf)).await {
        Ok(read) => matches!(read, Ok(0) | Err(_)),
        Err(_) => false,
    }
}

/// One process opening `--max-connections` connections that each made one health check locked
/// every other client out (`Unknown: transport error`) for as long as it liked. Every test
/// client is 127.0.0.1, so here that process is the test: over its cap it is refused, and a
/// place it frees is a place it can take again. On Linux a second peer, 127.0.0.2, has its own
/// share.
#[tokio::test]
async fn a_peer_over_its_cap_is_refused_while_another_peer_is_served() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 200;
        config.limits.max_connections_per_peer = Some(3);
        config.limits.handshake_timeout = Duration::from_secs(600);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(checked_channel(&server).await.unwrap());
    }
    assert!(
        is_closed_at_once(server.addr).await,
        "a 4th connection from the same peer was accepted"
    );
    // A real client is refused too, at once (its call fails with the closed connection).
    let refused = tokio::time::timeout(PATIENCE, checked_channel(&server)).await;
    assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
    assert!(
        server
            .metric("notify_connections_refused_per_peer_total")
            .await
            >= 2.0
    );
    // The port's own cap was not what refused them.
    assert_eq!(server.metric("notify_connections_refused_total").await, 0.0);
    // The connections held are served as before, and another peer is not held back.
    HealthClient::new(held[0].clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    #[cfg(target_os = "linux")]
    {
        let other = [127, 0, 0, 2].into();
        let mut others = Vec::new();
        for _ in 0..3 {
            others.push(checked_channel_from(&server, other).await.unwrap());
        }
        assert!(checked_channel_from(&server, other).await.is_err());
    }

    // Close one: its place is freed once the server sees it go.
    drop(held.pop());
    let channel = eventually("the freed place taken", async || {
        checked_channel(&server).await
    })
    .await;
    let mut client = pb_client(channel);
    publish_json(&mut client, "device.error", &device_error("in", "u1", "d1"))
        .await
        .unwrap();
}

/// Behind a proxy every connection comes from the proxy: with the per-peer cap off (0), one
/// address may hold as many connections as the port allows, far more than the default share
/// (16 at this `--max-connections`).
#[tokio::test]
async fn with_the_per_peer_cap_off_one_address_may_hold_every_connection() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 24;
        config.limits.max_connections_per_peer = Some(0);
    })
    .await;
    let mut held = Vec::new();
    for i in 0..24 {
        let channel = checked_channel(&server).await;
        held.push(channel.unwrap_or_else(|status| panic!("connection {i}: {status:?}")));
    }
    // The port's own cap still holds.
    assert!(is_closed_at_once(server.addr).await);
    assert_eq!(server.metric("notify_connections_refused_total").await, 1.0);
    assert_eq!(
        server
            .metric("notify_connections_refused_per_peer_total")
            .await,
        0.0
    );
}

/// An HTTP/2 connection that makes one health check and then sends nothing; the handle ends
/// when the server closes the connection. Keep the sender: without one, the client closes it.
async fn one_health_check_then_nothing(
    addr: SocketAddr,
) -> (
    tokio::task::JoinHandle<()>,
    h2::client::SendRequest<bytes::Bytes>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        // A close by the server ends it, with or without an error.
        let _ = connection.await;
    });
    let request = http::Request::post(format!("http://{addr}{HEALTH_CHECK}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut sender = sender.ready().await.unwrap();
    let (response, mut body) = sender.send_request(request, false).unwrap();
    // An empty HealthCheckRequest: a gRPC frame header of length 0.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let mut response = tokio::time::timeout(PATIENCE, response)
        .await
        .unwrap()
        .unwrap()
        .into_body();
    while let Some(data) = response.data().await {
        data.unwrap();
    }
    let trailers = response.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    (driver, sender)
}

/// An HTTP/1.1 connection (as a browser's grpc-web) that makes one health check and then sends
/// nothing; the handle ends when the server closes the connection, with what it read.
async fn one_grpc_web_check_then_nothing(addr: SocketAddr) -> tokio::task::JoinHandle<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {HEALTH_CHECK} HTTP/1.1\r\nhost: {addr}\r\n\
         content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
         content-length: 5\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.write_all(&[0, 0, 0, 0, 0]).await.unwrap();
    tokio::spawn(async move {
        let mut read = Vec::new();
        // Until the end of stream, or a reset.
        let _ = socket.read_to_end(&mut read).await;
        String::from_utf8_lossy(&read).into_owned()
    })
}

/// Connections that made one call and then sat idle held their places for ever. Now one with
/// no call in flight for `--connection-idle-timeout` is closed, while one whose streams are
/// open (a `Subscribe`, a health `Watch`) is kept however long they last.
#[tokio::test]
async fn an_idle_connection_is_closed_and_ones_with_open_streams_are_not() {
    let timeout = Duration::from_millis(400);
    let server =
        TestServer::start_with(|config| config.limits.connection_idle_timeout = timeout).await;
    let mut subscriber = server.client().await;
    let mut stream = subscribe(&mut subscriber, request("u1")).await;
    let mut watch = HealthClient::new(server.channel().await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let opened = tokio::time::Instant::now();

    let (idle, _sender) = one_health_check_then_nothing(server.addr).await;
    let idle_http1 = one_grpc_web_check_then_nothing(server.addr).await;
    tokio::time::timeout(PATIENCE, idle)
        .await
        .expect("the idle connection was not closed")
        .unwrap();
    let answered = tokio::time::timeout(PATIENCE, idle_http1)
        .await
        .expect("the idle HTTP/1.1 connection was not closed")
        .unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(opened.elapsed() >= timeout, "closed before its timeout");
    // Both closed for idleness, not for anything else.
    assert_eq!(
        server
            .metric("notify_connections_idle_timeouts_total")
            .await,
        2.0
    );

    // The stream's connection is older than the timeout, and still open: an event published
    // now reaches it.
    let mut publisher = server.client().await;
    publish_json(
        &mut publisher,
        "device.error",
        &device_error("after-idle", "u1", "d1"),
    )
    .await
    .unwrap();
    assert_next_is(&mut stream, "after-idle", "the subscriber").await;
    // So is the watch's: at shutdown it is told NOT_SERVING (a closed one would have failed).
    server.shutdown.cancel();
    let update = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the watch is told of the shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(update.status, ServingStatus::NotServing as i32);
}

/// The connections' client, on `channel`.
fn pb_client(
    channel: Channel,
) -> notify_backbone::pb::notification_service_client::NotificationServiceClient<Channel> {
    notify_backbone::pb::notification_service_client::NotificationServiceClient::new(channel)
}

/// A rapid-reset connection (CVE-2023-44487): streams opened and reset at once, until the server
/// closes the connection.
async fn rapid_reset(addr: SocketAddr) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok((mut sender, connection)) = h2::client::handshake(tcp).await else {
        return;
    };
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    for i in 0..2_000 {
        let request = http::Request::post(format!("http://{addr}{HEALTH_CHECK}"))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let Ok(ready) = sender.ready().await else {
            break;
        };
        sender = ready;
        let Ok((_response, mut body)) = sender.send_request(request, false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        if i % 16 == 0 {
            // Let the connection's driver write what was queued, and read the server's GOAWAY.
            tokio::task::yield_now().await;
        }
    }
    let _ = tokio::time::timeout(PATIENCE, driver).await;
}

/// HTTP/2's rapid-reset guard logged one warning for every connection it closed, as fast as
/// an attacker opened them (486 lines in 10 s). Now a few are logged per 10 s, then one line
/// with the count of the rest.
#[tokio::test]
async fn a_rapid_reset_flood_logs_a_few_lines_and_then_their_count() {
    const ATTACKS: usize = 40;
    let logs = Logs::default();
    let data = DataDir::new();
    let args: Vec<String> = ["--max-connections-per-peer", "2"].map(String::from).into();
    let node = start_node(&args, &data.0, 0, &logs).await;
    let addr: SocketAddr = node.url.trim_start_matches("http://").parse().unwrap();
    let started = tokio::time::Instant::now();
    for _ in 0..ATTACKS {
        rapid_reset(addr).await;
    }
    let attack = started.elapsed();
    // A sentinel line, logged after every attacking connection has been closed: a connection
    // over the per-peer cap is refused, and the first refusal is always logged.
    let _held = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let sentinel = "connection refused: this peer has --max-connections-per-peer open";
    eventually("the refusal logged", async || {
        if logs.tail(usize::MAX).contains(sentinel) {
            return Ok(());
        }
        is_closed_at_once(addr).await;
        Err(format!("the log:\n{}", logs.tail(20)))
    })
    .await;
    let lines = logs.tail(usize::MAX);
    let before_sentinel = &lines[..lines.find(sentinel).unwrap()];
    let h2_lines = before_sentinel
        .lines()
        .filter(|line| line.contains(" WARN h2::"))
        .count();
    // Five a kind per 10 s, in however many windows the attack spanned.
    let windows = attack.as_secs() as usize / 10 + 2;
    assert!(
        (1..=5 * windows).contains(&h2_lines),
        "{h2_lines} h2 warnings for {ATTACKS} attacking connections in {attack:?}:\n{}",
        logs.tail(20)
    );
    // Then the count of the others (reported every 10 s).
    let report = "more warnings like the last (h2::proto::streams::recv) were not logged";
    let wait = Wait::within(PATIENCE + Duration::from_secs(10)).every(Duration::from_millis(50));
    wait.until("a count of the suppressed warnings", async || {
        if logs.tail(usize::MAX).contains(report) {
            return Ok(());
        }
        Err(format!("the log:\n{}", logs.tail(20)))
    })
    .await;
    eprintln!(
        "{ATTACKS} rapid-reset connections in {attack:?}: {h2_lines} h2 lines, then:\n{}",
        logs.tail(usize::MAX)
            .lines()
            .filter(|line| line.contains("were not logged"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
