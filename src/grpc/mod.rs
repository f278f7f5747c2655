//! The gRPC edge: `NotificationService`, grpc-web with CORS, health and reflection, optional
//! TLS, and the live notification [`page`], all on one port, behind the port's resource
//! [`limits`], with an OpenTelemetry server span per call ([`rpc_span`]) when tracing is on.
//!
//! Owns: everything that touches `tonic` — requests, statuses, codecs, the server builder, the
//! token's extraction from metadata. Does not own: any decision about events or access (the
//! adapters call `auth`, `schema`, `hub` and the node's `write::Writer`).
//! Errors of those modules become a `tonic::Status` in exactly one place, [`error`].

pub mod codec;
pub mod connections;
pub mod error;
mod inbox;
pub mod limits;
pub mod page;
mod publish;
mod publish_stream;
pub mod rpc_span;
mod service;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, transport::Server};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
        health_server::HealthServer,
    },
    server::{HealthReporter, HealthService},
};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use service::NotifyService;

use crate::{pb::notification_service_server::NotificationServiceServer, telemetry::Metrics};

/// Transport settings of the gRPC port.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Origins allowed to use grpc-web from a browser; `*` allows any.
    pub cors_origins: Vec<String>,
    /// With no `cors_origins`: allow pages served from this machine (`--dev`).
    pub cors_localhost: bool,
    /// HTTP/2 keepalive ping interval.
    pub http2_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub http2_keepalive_timeout: Duration,
    /// Largest request message tonic will decode (bounds memory before our own checks run).
    pub max_decoding_message_size: usize,
    /// TLS certificate chain and private key, PEM; plain text when `None`.
    pub tls: Option<TlsIdentity>,
    /// Streams per connection (HTTP/2's stream limit is set a little above it, so our check,
    /// with its clear status, trips first).
    pub max_streams_per_connection: usize,
    /// Load shedding and the time to answer.
    pub shed: limits::Shed,
    /// Serve the live notification page at `/` ([`page`]).
    pub web: bool,
    /// How many connections, and how long each may take to send its first request.
    pub connections: connections::ConnectionSettings,
    /// Where the connection counts go.
    pub metrics: Arc<Metrics>,
    /// RPC server spans, when tracing is on.
    pub tracing: crate::otel::Tracing,
}

/// HTTP/2 streams a connection may open beyond `--max-streams-per-connection`: room for unary
/// calls next to a full set of subscriptions.
const UNARY_STREAM_HEADROOM: usize = 32;

/// A TLS certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("TlsIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// The health of `NotificationService`, as seen by gRPC health checks.
#[derive(Clone)]
pub struct Health(HealthReporter);

impl Health {
    /// Reports SERVING.
    pub async fn serving(&self) {
        self.0
            .set_serving::<NotificationServiceServer<NotifyService>>()
            .await;
        self.0
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
    }

    /// Reports NOT_SERVING (shutdown has begun).
    pub async fn not_serving(&self) {
        self.0
            .set_not_serving::<NotificationServiceServer<NotifyService>>()
            .await;
        self.0
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }

    /// Reports whether the node reads the cluster's journal stream, as the health service
    /// [`JOURNAL_HEALTH_SERVICE`].
    pub async fn journal_following(&self, following: bool) {
        let status = if following {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.0
            .set_service_status(JOURNAL_HEALTH_SERVICE, status)
            .await;
    }

    /// Reports whether the journal takes writes, as the health service
    /// [`JOURNAL_HEALTH_SERVICE`] (one node; in cluster mode that name says whether the node
    /// follows the stream, see [`Health::journal_following`]).
    pub async fn journal_writable(&self, writable: bool) {
        self.journal_following(writable).await;
    }

    /// Reports whether the AMQP ingest is connected and consuming, as the health service
    /// [`INGEST_HEALTH_SERVICE`]. Without `--amqp-url` that name stays unknown (NOT_FOUND).
    pub async fn ingest_consuming(&self, consuming: bool) {
        let status = if consuming {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.0
            .set_service_status(INGEST_HEALTH_SERVICE, status)
            .await;
    }
}

/// The gRPC health service name that reports the AMQP ingest (`grpc_health_probe -service=ingest`).
pub const INGEST_HEALTH_SERVICE: &str = "ingest";

/// The gRPC health service name that reports whether the journal works: on one node, whether
/// it takes writes; in cluster mode, whether the node reads the journal stream
/// (`grpc_health_probe -service=journal`).
pub const JOURNAL_HEALTH_SERVICE: &str = "journal";

/// Serves gRPC and grpc-web on `listener` until `signal` completes, then drains open calls.
pub async fn serve(
    listener: TcpListener,
    service: NotifyService,
    settings: ServerSettings,
    health_service: HealthServer<ShutdownAwareHealth>,
    signal: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // The descriptor sets are embedded at build time, so these fail only on a build bug.
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let notify = NotificationServiceServer::new(service)
        .max_decoding_message_size(settings.max_decoding_message_size);

    let mut builder = Server::builder();
    if let Some(tls) = &settings.tls {
        // ALPN offers h2 and http/1.1, so grpc-web keeps working over TLS.
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|error| {
                anyhow::anyhow!("TLS set-up failed (--tls-cert/--tls-key): {error}")
            })?;
    }
    let incoming = connections::Incoming::new(
        listener,
        settings.connections,
        Arc::clone(&settings.metrics),
    );
    let server = builder
        .accept_http1(true)
        .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout))
        .max_concurrent_streams(u32::try_from(
            settings.max_streams_per_connection + UNARY_STREAM_HEADROOM,
        )?)
        // Outermost: any request at all completes a connection's handshake, and keeps it from
        // being idle until answered.
        .layer(connections::ActivityLayer)
        .layer(cors_layer(&settings.cors_origins, settings.cors_localhost))
        // Outside grpc-web, which refuses any HTTP/1.1 request that is not grpc-web.
        .layer(page::PageLayer::new(settings.web))
        .layer(tonic_web::GrpcWebLayer::new())
        // Inside grpc-web (browsers' calls get spans too), outside the shedding, so its
        // refusals are in the spans.
        .layer(rpc_span::RpcSpanLayer::new(settings.tracing.clone()))
        // Inside grpc-web, so its refusals are translated for browsers like any answer.
        .layer(settings.shed.clone())
        .add_service(health_service)
        .add_service(notify)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, signal);
    // The port's refusals and the HTTP/2 stack's complaints about peers are logged a few a
    // kind per interval; the count of the rest is reported beside the server, while it runs.
    let served = tokio::select! {
        served = server => served,
        never = crate::telemetry::report_suppressed_warnings() => match never {},
    };
    crate::telemetry::WARNINGS.report();
    served?;
    Ok(())
}

/// Creates the health reporter and its service. `shutdown` must be cancelled before
/// [`Health::not_serving`] is called: see [`ShutdownAwareHealth`].
pub fn health(shutdown: CancellationToken) -> (Health, HealthServer<ShutdownAwareHealth>) {
    let (reporter, _) = tonic_health::server::health_reporter();
    let inner = HealthService::from_health_reporter(reporter.clone());
    (
        Health(reporter),
        HealthServer::new(ShutdownAwareHealth { inner, shutdown }),
    )
}

/// gRPC health whose `Watch` streams end once they have told the watcher NOT_SERVING during
/// shutdown. tonic-health keeps watch streams open for the server's whole life, and graceful
/// shutdown waits for open streams, so one load balancer watching would otherwise hold every
/// shutdown for the full grace period.
pub struct ShutdownAwareHealth {
    inner: HealthService,
    shutdown: CancellationToken,
}

/// The `Watch` stream of [`ShutdownAwareHealth`].
pub type HealthWatchStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for ShutdownAwareHealth {
    type WatchStream = HealthWatchStream;

    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let updates = self.inner.watch(request).await?.into_inner();
        let shutdown = self.shutdown.clone();
        let mut told_not_serving = false;
        let updates = updates.map_while(move |update| {
            if told_not_serving {
                return None;
            }
            told_not_serving = shutdown.is_cancelled()
                && matches!(&update, Ok(r) if r.status == ServingStatus::NotServing as i32);
            Some(update)
        });
        Ok(Response::new(Box::pin(updates)))
    }
}

/// CORS for grpc-web: the headers grpc-web clients send and the ones they must be able to read.
fn cors_layer(origins: &[String], localhost: bool) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else if origins.is_empty() && localhost {
        AllowOrigin::predicate(|origin, _| is_localhost_origin(origin.as_bytes()))
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            HeaderName::from_static("content-type"),
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("authorization"),
            HeaderName::from_static("connect-protocol-version"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60))
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port: a page served from this
/// machine. The host must end where the port or the origin ends, so `localhost.evil.example`
/// does not pass.
fn is_localhost_origin(origin: &[u8]) -> bool {
    let Some(rest) = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"))
    else {
        return false;
    };
    [&b"localhost"[..], b"127.0.0.1", b"[::1]"]
        .iter()
        .any(|host| match rest.strip_prefix(*host) {
            Some([]) => true,
            Some([b':', port @ ..]) => !port.is_empty() && port.iter().all(u8::is_ascii_digit),
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    #[test]
    fn localhost_origins_are_recognised_exactly() {
        for origin in [
            "http://localhost",
            "http://localhost:5173",
            "https://127.0.0.1:8443",
            "http://[::1]:3000",
        ] {
            assert!(super::is_localhost_origin(origin.as_bytes()), "{origin}");
        }
        for origin in [
            "http://localhost.evil.example",
            "http://localhost:",
            "http://localhost:80/x",
            "http://127.0.0.1.nip.io",
            "ftp://localhost",
            "localhost",
            "null",
        ] {
            assert!(!super::is_localhost_origin(origin.as_bytes()), "{origin}");
        }
    }

    /// The server side of `NotificationService` is listed by hand in `build.rs` (to give
    /// `Subscribe` its own codec). This keeps that list and the proto in step: a method added to
    /// the proto but not to `build.rs` would otherwise be served as UNIMPLEMENTED silently.
    #[test]
    fn the_hand_built_server_serves_every_method_of_the_proto() {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let service = pool
            .get_service_by_name("cloudphone.notify.v1.NotificationService")
            .expect("service in the descriptor set");
        let mut methods: Vec<(String, bool, bool)> = service
            .methods()
            .map(|m| {
                (
                    m.name().to_owned(),
                    m.is_client_streaming(),
                    m.is_server_streaming(),
                )
            })
            .collect();
        methods.sort();
        let built_by_hand = vec![
            ("ListEvents".to_owned(), false, false),
            ("Publish".to_owned(), false, false),
            ("PublishStream".to_owned(), true, true),
            ("Subscribe".to_owned(), false, true),
        ];
        assert_eq!(methods, built_by_hand, "update build.rs's manual service");
    }
}
