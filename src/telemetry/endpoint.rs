//! The metrics port: `GET /metrics` (the registry, Prometheus text), `GET /readyz` and
//! `GET /healthz`. Does not own what readiness means: the caller's [`Readiness`] answers it.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Answers `/readyz`: `Ok` when the server should get traffic, else why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `GET /metrics`, `GET /readyz` and `GET /healthz` on `listener` until `shutdown` is
/// cancelled.
///
/// `/readyz` answers 200 `ready` or 503 with the reason (e.g. `ingest: connecting`), for load
/// balancers and orchestrators. `/healthz` (liveness) answers 200 `alive` while the process
/// serves this port: a node that is not ready because it waits for its broker or for disk space
/// recovers by itself, and restarting it would not help.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::{
        http::{StatusCode, header},
        routing::get,
    };
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| std::future::ready("alive\n")))
        .route(
            "/readyz",
            get(move || {
                let answer = match readiness() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                };
                std::future::ready(answer)
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The address a listener is bound to, for log lines.
pub fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_else(|_| "?".into())
}
