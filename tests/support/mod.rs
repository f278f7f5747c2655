//! A real notify-backbone on 127.0.0.1:0 for integration tests, and small client helpers.
#![allow(dead_code, clippy::unwrap_used)]

pub mod amqp;
pub mod body;
pub mod eventually;
pub mod otlp;
pub mod process;
pub mod tmpfs;

use std::{net::SocketAddr, time::Duration};

use notify_backbone::{
    app::{self, Listeners},
    config::ServeConfig,
    pb::{
        self, notification_service_client::NotificationServiceClient, publish_request::Body,
        subscribe_response::Kind,
    },
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Streaming, transport::Channel};

// The most published body, at its former path; not every test binary sends one.
#[allow(unused_imports)]
pub use body::device_error;
pub use eventually::{Wait, eventually, seen_if};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The server's journal directory, removed with the server.
    pub data: DataDir,
}

/// A journal directory of one test server's own (`.0`, not created yet: the server makes it),
/// inside a temporary directory removed when dropped.
pub struct DataDir(pub std::path::PathBuf, tempfile::TempDir);

impl DataDir {
    pub fn new() -> Self {
        let parent = tempfile::Builder::new()
            .prefix("notify-test-journal-")
            .tempdir()
            .unwrap();
        Self(parent.path().join("journal"), parent)
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), adjust).await
    }

    /// A server whose gRPC port is `addr` (a fixed one, for clients that must find it again
    /// after a restart, like a browser page).
    pub async fn start_at(addr: SocketAddr, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let data = DataDir::new();
        let mut config = ServeConfig::default();
        config.auth.jwt_secret = Some(TEST_SECRET.into());
        config.journal.data_dir = data.0.clone();
        adjust(&mut config);
        let grpc = TcpListener::bind(addr).await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app::run(
            config,
            Listeners { grpc, metrics },
            shutdown.clone(),
        ));
        Self {
            addr,
            metrics_addr,
            shutdown,
            task,
            data,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> NotificationServiceClient<Channel> {
        NotificationServiceClient::connect(self.url())
            .await
            .unwrap()
    }

    /// A grpc-web client over HTTP/1.1, as a browser would speak to the server.
    pub fn grpc_web_client(&self) -> NotificationServiceClient<GrpcWebService> {
        let http1 =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let service = tower::ServiceBuilder::new()
            .layer(tonic_web::GrpcWebClientLayer::new())
            .service(http1);
        NotificationServiceClient::with_origin(service, self.url().parse().unwrap())
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops the server and waits for it, failing the test if it takes longer than `limit`.
    /// Returns its journal directory (removed when dropped), for a restart on the same data.
    pub async fn stop_within(self, limit: Duration) -> DataDir {
        self.shutdown.cancel();
        tokio::time::timeout(limit, self.task)
            .await
            .expect("server stopped in time")
            .unwrap()
            .unwrap();
        self.data
    }

    /// A server on the journal of a stopped one (see [`TestServer::stop_within`]).
    pub async fn restart_on(data: &DataDir, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = data.0.clone();
        let mut server = Self::start_with(|c| {
            c.journal.data_dir = dir;
            adjust(c);
        })
        .await;
        // The new server's own (unused) directory goes; the caller's stays the caller's.
        server.data = DataDir::new();
        server
    }

    pub async fn metrics_text(&self) -> String {
        self.http_get("/metrics").await
    }

    /// The whole HTTP response (status line, headers, body) to `GET path` on the metrics port.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.metrics_addr
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).await.unwrap();
        response
    }

    /// Starts a server that ingests from the test broker under `names`, and waits until its
    /// ingest is consuming (`/readyz` says ready).
    pub async fn start_amqp(names: &amqp::Names, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let server = Self::start_with(|config| {
            names.apply(config);
            adjust(config);
        })
        .await;
        server.wait_ready().await;
        server
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually("/readyz answers 200", async || {
            let response = self.http_get("/readyz").await;
            seen_if(response.starts_with("HTTP/1.1 200"), response)
        })
        .await;
    }

    /// The value of the sample `name` (with its labels, as written in the exposition).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                (key == name).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }
}

/// The HS256 secret test servers verify tokens with.
pub const TEST_SECRET: &str = "test-secret-not-for-production";

/// A token for `user` with `roles`, valid for an hour.
pub fn token(user: &str, roles: &[&str]) -> String {
    token_for(user, roles, Duration::from_secs(3600))
}

/// A token for `user` with `roles`, valid for `ttl`.
pub fn token_for(user: &str, roles: &[&str], ttl: Duration) -> String {
    let roles: Vec<String> = roles.iter().map(|&r| r.into()).collect();
    notify_backbone::auth::mint_hs256(
        TEST_SECRET.as_bytes(),
        user,
        &roles,
        ttl,
        notify_backbone::auth::DEFAULT_ISSUER,
        notify_backbone::auth::DEFAULT_AUDIENCE,
    )
    .unwrap()
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The token a test subscriber uses for `request`: an admin's for the firehose or the admin
/// feed, else the requested user's own.
pub fn token_for_request(request: &pb::SubscribeRequest) -> String {
    if request.user_id == "*" || request.admin_feed {
        token("test-admin", &["admin"])
    } else {
        token(&request.user_id, &["user"])
    }
}

/// A service token that may publish.
pub fn service_token() -> String {
    token("test-service", &["service"])
}

pub fn request(user: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        user_id: user.into(),
        ..Default::default()
    }
}

/// The client side of grpc-web over HTTP/1.1 ([`TestServer::grpc_web_client`]).
pub type GrpcWebService = tonic_web::GrpcWebClientService<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic_web::GrpcWebCall<tonic::body::Body>,
    >,
>;

/// Opens a stream with the token [`token_for_request`] picks, as it comes (nothing consumed).
pub async fn open_stream(
    client: &mut NotificationServiceClient<Channel>,
    request: pb::SubscribeRequest,
) -> Streaming<pb::SubscribeResponse> {
    let token = token_for_request(&request);
    client
        .subscribe(with_token(request, &token))
        .await
        .unwrap()
        .into_inner()
}

/// Opens a stream and consumes its leading `CaughtUp`, so the stream is live when this returns.
pub async fn subscribe(
    client: &mut NotificationServiceClient<Channel>,
    request: pb::SubscribeRequest,
) -> Streaming<pb::SubscribeResponse> {
    let mut stream = open_stream(client, request).await;
    match next_kind(&mut stream).await {
        Kind::CaughtUp(_) => stream,
        other => panic!("expected CaughtUp first, got {other:?}"),
    }
}

pub async fn next_kind(stream: &mut Streaming<pb::SubscribeResponse>) -> Kind {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("a message in time")
        .expect("stream ok")
        .expect("stream open")
        .kind
        .expect("kind set")
}

/// The next event, skipping heartbeats.
pub async fn next_event(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::Event {
    loop {
        match next_kind(stream).await {
            Kind::Event(event) => return event,
            Kind::Heartbeat(_) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

pub async fn publish_json(
    client: &mut NotificationServiceClient<Channel>,
    routing_key: &str,
    json: &str,
) -> Result<pb::PublishResponse, tonic::Status> {
    let request = pb::PublishRequest {
        routing_key: routing_key.into(),
        body: Some(Body::Json(json.as_bytes().to_vec())),
    };
    client
        .publish(with_token(request, &service_token()))
        .await
        .map(|r| r.into_inner())
}

/// The wire fixtures: (routing key, file name, body).
pub fn wire_fixtures() -> Vec<(String, String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        // <routing-key>.<variant>.json; routing keys contain dots themselves.
        let Some((routing_key, _variant)) = stem.rsplit_once('.') else {
            continue;
        };
        out.push((
            routing_key.to_owned(),
            name.clone(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    out.sort();
    out
}

/// The wire fixture `file` (in tests/fixtures/wire) rewritten to be about `user`: every
/// `userId` field, at any depth, becomes `user`, and every `eventId` gets `user` appended (so
/// each test's copy is a new event, not a duplicate of another test's). Returns the routing
/// key and the body.
pub fn fixture_for(file: &str, user: &str) -> (String, String) {
    fn rewrite(value: &mut serde_json::Value, user: &str) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match (key.as_str(), &*value) {
                        ("userId", _) => *value = user.into(),
                        ("eventId", serde_json::Value::String(id)) => {
                            *value = format!("{id}-{user}").into();
                        }
                        _ => rewrite(value, user),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, user)),
            _ => {}
        }
    }
    let (routing_key, _, body) = wire_fixtures()
        .into_iter()
        .find(|(_, name, _)| name == file)
        .unwrap_or_else(|| panic!("no fixture {file}"));
    let mut json: serde_json::Value = serde_json::from_str(&body).unwrap();
    rewrite(&mut json, user);
    (routing_key, json.to_string())
}

/// Asserts that the next event `stream` (called `what` in the failure message) receives,
/// heartbeats skipped, is the sentinel `sentinel_id`.
///
/// The sentinel is an event published after everything the stream must not receive, and one
/// the stream does select. A stream delivers events in journal order, so the sentinel arriving
/// first proves nothing published before it is still on its way: no quiet period to wait out,
/// and no wall clock to race.
pub async fn assert_next_is(
    stream: &mut Streaming<pb::SubscribeResponse>,
    sentinel_id: &str,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let message = match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(message) => message,
            Err(_) => panic!("{what}: the sentinel {sentinel_id} did not arrive in {PATIENCE:?}"),
        };
        match message {
            Ok(Some(pb::SubscribeResponse {
                kind: Some(Kind::Heartbeat(_)),
            })) => continue,
            Ok(Some(pb::SubscribeResponse {
                kind: Some(Kind::Event(event)),
            })) => {
                assert!(
                    event.id == sentinel_id,
                    "{what}: expected only the sentinel {sentinel_id}, but event {:?} ({}, user \
                     {:?}) arrived before it: {event:?}",
                    event.id,
                    event.r#type,
                    event.user_id
                );
                return;
            }
            other => panic!("{what}: expected only the sentinel {sentinel_id}, got {other:?}"),
        }
    }
}
