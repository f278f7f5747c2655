//! The gRPC edge: `NotificationService`, grpc-web with CORS, health and reflection, all on one
//! port.
//!
//! Owns: everything that touches `tonic` — requests, statuses, codecs, the server builder. Does
//! not own: any decision about events (the adapters call `schema`, `hub` and `sequencer`).
//! Errors of those modules become a `tonic::Status` in exactly one place, [`error`].

pub mod codec;
pub mod error;
mod service;

use std::{future::Future, time::Duration};

use http::{HeaderName, HeaderValue, Method};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{pb::health_server::HealthServer, server::HealthReporter};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use service::{NotifyService, SubscribeStream};

use crate::pb::notification_service_server::NotificationServiceServer;

/// Transport settings of the gRPC port.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Origins allowed to use grpc-web from a browser; `*` allows any.
    pub cors_origins: Vec<String>,
    /// HTTP/2 keepalive ping interval.
    pub http2_keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    pub http2_keepalive_timeout: Duration,
    /// Largest request message tonic will decode (bounds memory before our own checks run).
    pub max_decoding_message_size: usize,
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
}

/// Serves gRPC and grpc-web on `listener` until `signal` completes, then drains open calls.
pub async fn serve(
    listener: TcpListener,
    service: NotifyService,
    settings: ServerSettings,
    health_service: HealthServer<impl tonic_health::pb::health_server::Health>,
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

    Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(settings.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(settings.http2_keepalive_timeout))
        .layer(cors_layer(&settings.cors_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        .add_service(notify)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await?;
    Ok(())
}

/// Creates the health reporter and its service.
pub fn health() -> (
    Health,
    HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    (Health(reporter), service)
}

/// CORS for grpc-web: the headers grpc-web clients send and the ones they must be able to read.
fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
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
