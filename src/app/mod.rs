//! Wires the stages together and owns the server's lifetime: start-up, the background tasks,
//! and one shutdown signal that fans out to all of them, bounded by one deadline.
//!
//! - this file: [`serve`] and [`run`], the start-up in order, and the gRPC port's settings;
//! - `node`: the stages between the ingest and the hub, one node or a cluster node;
//! - `supervise`: the journal's writer task, whose end stops the server;
//! - `background`: heartbeats, retention, the interval sync, the journal's probe;
//! - `health`: readiness and gRPC health, mirrored from the stages' states;
//! - `credentials`: the token keys, the development secret and the TLS files, read at start;
//! - `check`: `serve --check`;
//! - `shutdown`: the order of shutdown and the one deadline all of its waits keep.

mod background;
mod check;
mod credentials;
mod health;
mod node;
mod shutdown;
mod supervise;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use check::check;

use self::{
    node::{Core, Node},
    shutdown::Deadline,
};
use crate::{
    config::{JournalKind, ServeConfig},
    grpc::{
        self, NotifyService, ServerSettings,
        connections::{self},
        limits::{RateLimiter, Shed, StreamCounter},
    },
    hub::Hub,
    ingest::Ingest,
    otel::Tracing,
    pipeline::Pipeline,
    store::{Journal, JournalHealth, RedbJournal},
    telemetry::{self, Metrics},
};

/// Room for the gRPC framing around the largest publish body, so an oversized body reaches our
/// own check (and its clear message) instead of tonic's generic one.
const DECODE_HEADROOM_BYTES: usize = 64 * 1024;

/// The bound sockets the server runs on (tests pass their own `127.0.0.1:0` listeners).
pub struct Listeners {
    /// gRPC and grpc-web.
    pub grpc: TcpListener,
    /// `/metrics`.
    pub metrics: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &ServeConfig) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
        let metrics = TcpListener::bind(config.metrics_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (--metrics-listen)",
                    config.metrics_listen
                )
            })?;
        Ok(Self { grpc, metrics })
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    info!(version = crate::config::VERSION, "notify-backbone starting");
    if let Some(files) = connections::raise_fd_limit() {
        // Room for the connections plus the journal, the broker and the metrics port.
        let wanted = (config.limits.max_connections as u64).saturating_add(256);
        if files < wanted {
            warn!(
                open_files = files,
                max_connections = config.limits.max_connections,
                "the open-file limit is below --max-connections; connections past it will be \
                 refused by the system: raise the hard limit (ulimit -Hn) or lower \
                 --max-connections"
            );
        }
    }
    let listeners = Listeners::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(shutdown::cancel_on_signal(shutdown.clone()));
    let result = run(config, listeners, shutdown).await;
    signals.abort();
    result
}

/// Runs the server on `listeners` until `shutdown` is cancelled, then shuts down in order.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Refuse to start without a way to check tokens before anything else runs.
    let authenticator = credentials::authenticator(&config.auth)?;
    let metrics = Arc::new(Metrics::new());
    let tracing = start_tracing(&config)?;
    // A journal that cannot be opened stops start-up here, with the reason.
    let journal = RedbJournal::open(config.journal.settings(config.cluster.journal))?;
    info!(dir = %config.journal.data_dir.display(), head = %journal.head(), "journal open");
    let syncer = journal.syncer();
    let journal_health = journal.health();
    let journal_monitor = journal.monitor();
    let pruner = journal.pruner(config.journal.retention());
    // The writer's side outlives the gRPC server: it stops only after in-flight publishes and
    // the ingest drained.
    let writer_stop = CancellationToken::new();
    let node = match config.cluster.journal {
        JournalKind::Redb => Node::Single(journal),
        JournalKind::RabbitmqStream => {
            Node::Cluster(node::join_cluster(&config, journal, &shutdown).await?)
        }
    };
    // One hub, whichever the journal, on its head as it is now (a cluster node's replica has
    // taken the stream's epoch).
    let hub = Hub::new(
        config.hub_settings(),
        node.journal().head(),
        metrics.clone(),
        node.journal().reader(),
        tracing.clone(),
    );
    // Dropped when `run` returns, after every stage on it has been joined.
    let pipeline = Pipeline::start().context("starting the event path's thread")?;
    let wiring = node::Wiring {
        config: &config,
        hub: &hub,
        metrics: &metrics,
        tracing: &tracing,
        shutdown: &shutdown,
        writer_stop: &writer_stop,
        pipeline: &pipeline,
    };
    let Core {
        publisher,
        ingest,
        journal_state,
        writer: writer_task,
        mut tasks,
    } = match node {
        Node::Single(journal) => wiring.single_node(journal),
        Node::Cluster(joined) => wiring.cluster_node(joined),
    };
    tasks.spawn(background::heartbeats(
        hub.clone(),
        config.heartbeat_interval,
        shutdown.clone(),
    ));
    tasks.spawn(background::prune_journal(
        pruner,
        config.journal.retention_interval,
        shutdown.clone(),
    ));
    if let Some((syncer, every)) = syncer {
        tasks.spawn(background::sync_journal(syncer, every, shutdown.clone()));
    }
    tasks.spawn(background::probe_journal(journal_monitor, shutdown.clone()));
    let (health, health_service) = grpc::health(shutdown.clone());
    health.serving().await;
    tasks.spawn(health::report_journal_writable(
        journal_health.clone(),
        health.clone(),
        metrics.clone(),
        // In cluster mode the `journal` health service says whether the node follows the stream.
        journal_state.is_none(),
        shutdown.clone(),
    ));
    if let Some(ingest) = &ingest {
        tasks.spawn(health::report_ingest_health(ingest.state(), health.clone()));
    }
    if let Some(state) = &journal_state {
        tasks.spawn(health::report_journal_health(state.clone(), health.clone()));
    }
    let readiness = health::readiness(
        shutdown.clone(),
        journal_health.clone(),
        ingest.as_ref().map(Ingest::state),
        journal_state,
    );
    let streams = StreamCounter::new(
        config.limits.max_streams_per_connection,
        config.limits.max_streams_per_principal,
        config.limits.max_unauthenticated_streams,
    );
    let service = NotifyService {
        hub: hub.clone(),
        publisher,
        metrics: metrics.clone(),
        decode: config.decode_options(),
        auth: Arc::new(authenticator),
        filter_limits: config.limits.filter_limits(),
        streams: Arc::clone(&streams),
        publish_rate: Arc::new(RateLimiter::new(config.limits.max_publish_rate)),
        inbox_rate: Arc::new(RateLimiter::for_inbox(config.limits.max_inbox_rate)),
        shutdown: shutdown.clone(),
        tracing: tracing.clone(),
    };
    let settings = ServerSettings {
        cors_origins: config.cors_origins.clone(),
        cors_localhost: config.auth.dev,
        web: config.web.unwrap_or(config.auth.dev),
        http2_keepalive_interval: config.http2_keepalive_interval,
        http2_keepalive_timeout: config.http2_keepalive_timeout,
        max_decoding_message_size: config.limits.max_event_bytes + DECODE_HEADROOM_BYTES,
        tls: credentials::tls_identity(&config.tls)?,
        max_streams_per_connection: config.limits.max_streams_per_connection,
        shed: Shed::new(
            config.limits.max_concurrent_requests,
            config.limits.request_timeout,
            metrics.clone(),
            streams,
        ),
        connections: config.limits.connection_limits(),
        metrics: metrics.clone(),
        tracing: tracing.clone(),
    };
    info!(addr = %telemetry::local_addr(&listeners.metrics), "metrics on http://{}/metrics", telemetry::local_addr(&listeners.metrics));
    tasks.spawn({
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        async move {
            if let Err(error) =
                telemetry::serve_metrics(listeners.metrics, metrics, readiness, shutdown).await
            {
                warn!(%error, "metrics endpoint stopped");
            }
        }
    });
    let grpc_addr = telemetry::local_addr(&listeners.grpc);
    info!(addr = %grpc_addr, "serving gRPC and grpc-web on {grpc_addr}");
    if settings.web {
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        info!("live notification page on {scheme}://{grpc_addr}/ (open it with ?token=...)");
    }

    let deadline = Deadline::new(shutdown.clone(), config.shutdown_grace);
    let signal = shutdown::begin(
        &deadline,
        hub.clone(),
        health.clone(),
        ingest.as_ref().map(Ingest::state),
    );
    let server = grpc::serve(listeners.grpc, service, settings, health_service, signal);
    tokio::pin!(server);
    let served = tokio::select! {
        result = &mut server => result,
        () = deadline.reached() => {
            warn!(grace = ?config.shutdown_grace, "shutdown grace period over; stopping without waiting for the remaining calls");
            Ok(())
        }
    };
    // Whether the server ended by itself or by error, everything else stops too.
    shutdown.cancel();
    if let Some(ingest) = ingest {
        tasks.spawn(async move {
            if let Err(error) = ingest.into_task().await {
                warn!(%error, "ingest task failed");
            }
        });
    }
    let writer_failure =
        shutdown::finish(&deadline, &writer_stop, writer_task, tasks, &tracing).await;
    info!("stopped");
    // The server's own error first, if it had one: it may be why everything stopped.
    served?;
    if let Some(failure) = writer_failure {
        return Err(failure);
    }
    // A node stopped while its journal refused writes did not do its job: its supervisor
    // should know, whatever stopped it.
    let journal_health = journal_health.borrow().clone();
    if journal_health != JournalHealth::Writable {
        anyhow::bail!("stopped while the journal refused writes ({journal_health})");
    }
    Ok(())
}

/// Tracing as configured: an OTLP exporter, or off.
fn start_tracing(config: &ServeConfig) -> anyhow::Result<Tracing> {
    let Some(endpoint) = config.tracing.otlp_traces_endpoint() else {
        return Ok(Tracing::off());
    };
    let tracing = Tracing::start(&endpoint, &config.amqp.node_id(), crate::config::VERSION)?;
    info!(
        %endpoint,
        sampler = std::env::var("OTEL_TRACES_SAMPLER").as_deref().unwrap_or("parentbased_always_on"),
        "tracing: exporting spans over OTLP/gRPC to {endpoint}"
    );
    Ok(tracing)
}
