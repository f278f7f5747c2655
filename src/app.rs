//! Wires the stages together and owns the server's lifetime: start-up, the background tasks,
//! and one shutdown signal that fans out to all of them.
//!
//! Shutdown order (all of it bounded by `--shutdown-grace`): health turns NOT_SERVING, the AMQP
//! ingest cancels its consumer, settles and acks what it has in flight and closes (at most half
//! the grace, so what it acked still reaches the open streams), the hub ends every open stream
//! with UNAVAILABLE and the last cursor it sent (so clients resume), the gRPC server stops
//! accepting and drains in-flight calls, the sequencer finishes what it had accepted, the
//! metrics endpoint stops.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    auth::{self, Authenticator, Policy, Verifier},
    cluster::{self, FollowState},
    config::{JournalKind, ServeConfig},
    grpc::{
        self, NotifyService, ServerSettings,
        connections::{self, ConnectionLimits},
        limits::{RateLimiter, Shed, StreamCounter},
    },
    hub::{FilterLimits, Hub, HubConfig},
    ingest::{Ingest, IngestConfig, IngestState, Topology, topology},
    otel::Tracing,
    schema::DecodeOptions,
    sequencer::{Sequencer, SequencerSettings},
    store::{
        Durability, Journal, JournalHealth, JournalMonitor, JournalSettings, Pruner, RedbJournal,
        Retention, Syncer,
    },
    telemetry::{self, Metrics},
    write::{Chain, Writer},
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
        let wanted = (config.max_connections as u64).saturating_add(256);
        if files < wanted {
            warn!(
                open_files = files,
                max_connections = config.max_connections,
                "the open-file limit is below --max-connections; connections past it will be \
                 refused by the system: raise the hard limit (ulimit -Hn) or lower \
                 --max-connections"
            );
        }
    }
    let listeners = Listeners::bind(&config).await?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
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
    let authenticator = authenticator(&config)?;
    let metrics = Arc::new(Metrics::new());
    let tracing = start_tracing(&config)?;
    // A journal that cannot be opened stops start-up here, with the reason.
    let journal = RedbJournal::open(journal_settings(&config))?;
    info!(dir = %config.data_dir.display(), head = %journal.head(), "journal open");
    let syncer = journal.syncer();
    let journal_health = journal.health();
    let journal_monitor = journal.monitor();
    let pruner = journal.pruner(Retention {
        max_age: config.retention_age,
        max_bytes: config.retention_bytes,
    });
    // The writer's side outlives the gRPC server: it stops only after in-flight publishes and
    // the ingest drained.
    let writer_stop = CancellationToken::new();
    let Core {
        hub,
        publisher,
        ingest,
        journal_state,
        writer: writer_task,
        mut tasks,
    } = match config.journal {
        JournalKind::Redb => single_node(
            &config,
            journal,
            &metrics,
            &tracing,
            &shutdown,
            &writer_stop,
        ),
        JournalKind::RabbitmqStream => {
            cluster_node(
                &config,
                journal,
                &metrics,
                &tracing,
                &shutdown,
                &writer_stop,
            )
            .await?
        }
    };
    tasks.spawn(prune_journal(
        pruner,
        config.retention_interval,
        shutdown.clone(),
    ));
    if let Some((syncer, every)) = syncer {
        tasks.spawn(sync_journal(syncer, every, shutdown.clone()));
    }
    tasks.spawn(probe_journal(journal_monitor, shutdown.clone()));
    let (health, health_service) = grpc::health(shutdown.clone());
    health.serving().await;
    tasks.spawn(report_journal_writable(
        journal_health.clone(),
        health.clone(),
        metrics.clone(),
        // In cluster mode the `journal` health service says whether the node follows the stream.
        journal_state.is_none(),
        shutdown.clone(),
    ));
    if let Some(ingest) = &ingest {
        tasks.spawn(report_ingest_health(ingest.state(), health.clone()));
    }
    if let Some(state) = &journal_state {
        tasks.spawn(report_journal_health(state.clone(), health.clone()));
    }
    let readiness = readiness(
        shutdown.clone(),
        journal_health.clone(),
        ingest.as_ref().map(Ingest::state),
        journal_state,
    );
    let streams = StreamCounter::new(
        config.max_streams_per_connection,
        config.max_streams_per_principal,
        config.max_unauthenticated_streams,
    );
    let service = NotifyService {
        hub: hub.clone(),
        publisher,
        metrics: metrics.clone(),
        decode: decode_options(&config),
        auth: Arc::new(authenticator),
        filter_limits: FilterLimits {
            max_patterns: config.max_event_types,
            max_pattern_len: config.max_pattern_len,
        },
        streams: Arc::clone(&streams),
        publish_rate: Arc::new(RateLimiter::new(config.max_publish_rate)),
        shutdown: shutdown.clone(),
        tracing: tracing.clone(),
    };
    let settings = ServerSettings {
        cors_origins: config.cors_origins.clone(),
        cors_localhost: config.dev,
        web: config.web.unwrap_or(config.dev),
        http2_keepalive_interval: config.http2_keepalive_interval,
        http2_keepalive_timeout: config.http2_keepalive_timeout,
        max_decoding_message_size: config.max_event_bytes + DECODE_HEADROOM_BYTES,
        tls: tls_identity(&config)?,
        max_streams_per_connection: config.max_streams_per_connection,
        shed: Shed::new(
            config.max_concurrent_requests,
            config.request_timeout,
            metrics.clone(),
            streams,
        ),
        connections: ConnectionLimits {
            max_connections: config.max_connections,
            max_connections_per_peer: config.max_connections_per_peer(),
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.connection_idle_timeout(),
        },
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

    let signal = {
        let (shutdown, hub, health) = (shutdown.clone(), hub.clone(), health.clone());
        // The ingest's drain is bounded by half the grace; waiting three quarters leaves it
        // room and still ends the streams in time, whatever the broker does.
        let ingest_wait = config.shutdown_grace * 3 / 4;
        let ingest = ingest.as_ref().map(Ingest::state);
        async move {
            shutdown.cancelled().await;
            info!("shutdown: health NOT_SERVING");
            health.not_serving().await;
            // The ingest settles and acks what it has in flight while the streams are still
            // open, so every event it acked reaches the subscribers connected now.
            if let Some(mut state) = ingest {
                info!("shutdown: draining the AMQP ingest");
                let stopped = state.wait_for(|s| *s == IngestState::Stopped);
                if tokio::time::timeout(ingest_wait, stopped).await.is_err() {
                    warn!("the ingest did not drain within the grace period");
                }
            }
            info!("shutdown: ending open streams");
            hub.shut_down();
        }
    };
    let server = grpc::serve(listeners.grpc, service, settings, health_service, signal);
    tokio::pin!(server);
    let served = tokio::select! {
        result = &mut server => result,
        () = grace_deadline(&shutdown, config.shutdown_grace) => {
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
    writer_stop.cancel();
    let writer_failure = match tokio::time::timeout(config.shutdown_grace, writer_task).await {
        Ok(failure) => failure.unwrap_or_else(|_| Some("its supervisor failed".into())),
        Err(_) => {
            warn!("the journal's writer did not finish within the grace period");
            None
        }
    };
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_grace, drained)
        .await
        .is_err()
    {
        warn!("background tasks did not stop within the grace period");
    }
    // Last: the spans of everything above are exported before the process ends.
    tracing.shutdown().await;
    info!("stopped");
    // The server's own error first, if it had one: it may be why everything stopped.
    served?;
    if let Some(failure) = writer_failure {
        anyhow::bail!("{failure}");
    }
    // A node stopped while its journal refused writes did not do its job: its supervisor
    // should know, whatever stopped it.
    let journal_health = journal_health.borrow().clone();
    if journal_health != JournalHealth::Writable {
        anyhow::bail!("stopped while the journal refused writes ({journal_health})");
    }
    Ok(())
}

/// The stages between the ingest and the hub, as the journal kind wants them.
struct Core {
    /// The node's hub.
    hub: Hub,
    /// Where `Publish` hands events.
    publisher: Arc<dyn Writer>,
    /// The AMQP ingest, if any.
    ingest: Option<Ingest>,
    /// Cluster mode: whether the node reads the journal stream.
    journal_state: Option<watch::Receiver<FollowState>>,
    /// The supervised task that keeps the journal going (the sequencer, or the stream's
    /// follower); resolves to why it failed, if it did.
    writer: tokio::task::JoinHandle<Option<String>>,
    /// Background tasks to join at shutdown.
    tasks: JoinSet<()>,
}

/// The journal's settings; in cluster mode the file is a replica of the stream, which is the
/// durable truth: it commits without waiting for the disk (what a crash loses is read again).
fn journal_settings(config: &ServeConfig) -> JournalSettings {
    JournalSettings {
        dir: config.data_dir.clone(),
        durability: match config.journal {
            JournalKind::Redb => config.durability,
            JournalKind::RabbitmqStream => Durability::Interval(REPLICA_SYNC_INTERVAL),
        },
        dedupe_window: config.dedupe_window,
        cache_bytes: usize::try_from(config.journal_cache).unwrap_or(usize::MAX),
        min_free_bytes: config.journal_min_free,
    }
}

/// How often a cluster node's replica is synced to disk.
const REPLICA_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

fn hub_config(config: &ServeConfig) -> HubConfig {
    HubConfig {
        queue_len: config.subscriber_queue_len,
        replay_readers: config.replay_readers(),
        heartbeat_interval: config.heartbeat_interval,
    }
}

/// One node: the sequencer journals and fans out; the ingest (with `--amqp-url`) consumes
/// this node's own queue.
fn single_node(
    config: &ServeConfig,
    journal: RedbJournal,
    metrics: &Arc<Metrics>,
    tracing: &Tracing,
    shutdown: &CancellationToken,
    writer_stop: &CancellationToken,
) -> Core {
    let hub = Hub::new(
        hub_config(config),
        journal.head(),
        metrics.clone(),
        journal.reader(),
        tracing.clone(),
    );
    let (sequencer, task) = Sequencer::spawn(
        journal,
        hub.clone(),
        metrics.clone(),
        SequencerSettings {
            queue_len: config.publish_queue_len,
            commit_delay: config.commit_delay,
        },
        writer_stop.clone(),
    );
    let writer = supervise(
        "the sequencer",
        task,
        |()| None,
        writer_stop.clone(),
        shutdown.clone(),
    );
    let ingest = config.amqp_url.as_ref().map(|url| {
        Ingest::spawn(
            ingest_config(config, url, tracing),
            sequencer.clone(),
            metrics.clone(),
            shutdown.clone(),
        )
    });
    let mut tasks = JoinSet::new();
    spawn_heartbeats(&mut tasks, &hub, config, shutdown);
    Core {
        hub,
        publisher: Arc::new(sequencer),
        ingest,
        journal_state: None,
        writer,
        tasks,
    }
}

/// Cluster mode: learn the stream's epoch, follow the stream into the replica and the hub, write
/// it when this node is the shared ingest queue's active consumer, and forward `Publish` to
/// whichever node that is.
async fn cluster_node(
    config: &ServeConfig,
    mut journal: RedbJournal,
    metrics: &Arc<Metrics>,
    tracing: &Tracing,
    shutdown: &CancellationToken,
    writer_stop: &CancellationToken,
) -> anyhow::Result<Core> {
    let url = config
        .amqp_url
        .clone()
        .context("--journal rabbitmq-stream needs --amqp-url (AMQP_URL)")?;
    let node_id = config.node_id();
    let settings = stream_settings(config);
    info!(
        stream = %settings.name,
        broker = %crate::ingest::redacted(&url),
        "cluster mode: learning the journal stream's epoch"
    );
    let joined = cluster::discover_epoch(&url, &node_id, &settings, &journal, shutdown)
        .await
        .context("cluster mode: the journal stream")?;
    let epoch = joined.epoch;
    // Which journal this node joins, so one started on names another deployment uses says so.
    info!(
        stream = %settings.name,
        epoch = %format!("{epoch:016x}"),
        first_offset = joined.first_offset,
        last_offset = joined.last_offset,
        broker_message_count = joined.messages,
        "cluster mode: {}",
        if joined.was_empty {
            "the journal stream was empty: a new journal begins"
        } else {
            "joining the journal the stream holds (this cluster's, or another deployment's if \
             the names are shared by mistake: `serve --check` shows what they hold)"
        }
    );
    if journal.adopt_epoch(epoch)? {
        info!(
            epoch = %format!("{epoch:016x}"),
            "cluster mode: the replica was new or of another epoch; it is filled from the stream"
        );
    }
    let hub = Hub::new(
        hub_config(config),
        journal.head(),
        metrics.clone(),
        journal.reader(),
        tracing.clone(),
    );
    let ids = journal.id_index();
    let follower = cluster::Follower::spawn(
        cluster::FollowerParts {
            url: url.clone(),
            node_id: node_id.clone(),
            settings: settings.clone(),
            replica: journal,
            hub: hub.clone(),
            metrics: metrics.clone(),
        },
        writer_stop.clone(),
    );
    let (writer, writer_task) = cluster::StreamWriter::spawn(
        cluster::WriterParts {
            node_id: node_id.clone(),
            stream: settings.name.clone(),
            ingest_queue: config.ingest_queue.clone(),
            epoch,
            waiters: follower.waiters.clone(),
            ids,
            metrics: metrics.clone(),
            queue_len: config.publish_queue_len,
        },
        writer_stop.clone(),
    );
    let mut ingest_settings = ingest_config(config, &url, tracing);
    ingest_settings.topology.queue = config.ingest_queue.clone();
    ingest_settings.topology.queue_kind = topology::QueueKind::Shared;
    let ingest = Ingest::spawn(ingest_settings, writer, metrics.clone(), shutdown.clone());
    let (forwarder, forward_task) = cluster::Forwarder::spawn(
        url,
        node_id,
        config.ingest_queue.clone(),
        writer_stop.clone(),
    );
    let journal_state = follower.state.clone();
    let supervised = supervise(
        "the journal stream's follower",
        follower.task,
        |outcome: Result<(), cluster::ClusterError>| outcome.err().map(|e| Chain(&e).to_string()),
        writer_stop.clone(),
        shutdown.clone(),
    );
    let mut tasks = JoinSet::new();
    spawn_heartbeats(&mut tasks, &hub, config, shutdown);
    tasks.spawn(async move {
        let _ = writer_task.await;
    });
    tasks.spawn(async move {
        let _ = forward_task.await;
    });
    Ok(Core {
        hub,
        publisher: Arc::new(forwarder),
        ingest: Some(ingest),
        journal_state: Some(journal_state),
        writer: supervised,
        tasks,
    })
}

fn spawn_heartbeats(
    tasks: &mut JoinSet<()>,
    hub: &Hub,
    config: &ServeConfig,
    shutdown: &CancellationToken,
) {
    tasks.spawn(heartbeats(
        hub.clone(),
        config.heartbeat_interval,
        shutdown.clone(),
    ));
}

/// Watches a task the journal cannot do without (the sequencer; a cluster node's follower). If
/// it ends before the server began to stop (a panic in a commit, a deleted stream), no event can
/// be journaled or delivered any more: rather than keep reporting healthy while every `Publish`
/// fails and the ingest retries forever, this cancels `shutdown`, so health turns NOT_SERVING,
/// the server stops, and the process exits non-zero for its supervisor to restart it.
/// `error_of` says whether the task's own result is a failure. Resolves to why it failed (the
/// server's exit reason), if it did.
fn supervise<T: Send + 'static>(
    what: &'static str,
    task: tokio::task::JoinHandle<T>,
    error_of: fn(T) -> Option<String>,
    stopping: CancellationToken,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Option<String>> {
    tokio::spawn(async move {
        let outcome = task.await;
        // Once the server is stopping, the task ends normally: when told to, or (the sequencer)
        // as soon as its last submitter is gone. A panic is never normal.
        let stopping = stopping.is_cancelled() || shutdown.is_cancelled();
        let reason = match outcome {
            Err(error) if error.is_panic() => "it panicked".to_owned(),
            Err(_) if stopping => return None,
            Err(_) => "it was cancelled".to_owned(),
            Ok(result) => match error_of(result) {
                Some(error) => error,
                None if stopping => return None,
                None => "it ended".to_owned(),
            },
        };
        tracing::error!(
            reason,
            "{what} stopped while the server was running: no event can be journaled; \
             stopping the server"
        );
        shutdown.cancel();
        Some(format!("{what} stopped: {reason}"))
    })
}

/// The token checks and access policy from `--jwt-*`, `--admin-role`, `--publish-role` and
/// `--dev`.
fn authenticator(config: &ServeConfig) -> anyhow::Result<Authenticator> {
    let verifier = match configured_verifier(config)? {
        Some(verifier) => verifier,
        None => {
            let secret = dev_secret()?;
            warn!(
                "DEVELOPMENT MODE (--dev): tokens are signed with the development secret in {} \
                 (generated by the first --dev server in this directory, shared by the next); \
                 mint one with `notify-backbone token --sub <user>`. Never run like this in \
                 production.",
                auth::DEV_SECRET_FILE
            );
            Verifier::hs256(
                secret.as_bytes(),
                &config.jwt_issuer,
                &config.jwt_audience,
                config.jwt_leeway,
            )
        }
    };
    Ok(Authenticator::new(
        verifier,
        Policy {
            admin_roles: config.admin_roles.iter().cloned().collect(),
            publish_roles: config.publish_roles.iter().cloned().collect(),
            publish_permission: auth::PUBLISH_PERMISSION.into(),
        },
    ))
}

/// The verifier of the configured key (`--jwt-secret`, `--jwt-public-key` or `--jwt-jwks`),
/// reading key files; `None` when there is none and `--dev` will make one up.
fn configured_verifier(config: &ServeConfig) -> anyhow::Result<Option<Verifier>> {
    let (issuer, audience, leeway) = (
        config.jwt_issuer.as_str(),
        config.jwt_audience.as_str(),
        config.jwt_leeway,
    );
    let configured = [
        config.jwt_secret.is_some(),
        config.jwt_public_key.is_some(),
        config.jwt_jwks.is_some(),
    ];
    anyhow::ensure!(
        configured.iter().filter(|&&k| k).count() <= 1,
        "give only one of --jwt-secret, --jwt-public-key and --jwt-jwks"
    );
    Ok(Some(if let Some(secret) = &config.jwt_secret {
        anyhow::ensure!(!secret.is_empty(), "--jwt-secret is empty");
        Verifier::hs256(secret.as_bytes(), issuer, audience, leeway)
    } else if let Some(path) = &config.jwt_public_key {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --jwt-public-key {}", path.display()))?;
        Verifier::public_key_pem(&pem, issuer, audience, leeway)?
    } else if let Some(path) = &config.jwt_jwks {
        let json = std::fs::read(path)
            .with_context(|| format!("cannot read --jwt-jwks {}", path.display()))?;
        Verifier::jwks(&json, issuer, audience, leeway)?
    } else if config.dev {
        return Ok(None);
    } else {
        anyhow::bail!(
            "no way to check tokens: give --jwt-secret (JWT_SECRET), --jwt-public-key or \
             --jwt-jwks, or --dev for local development"
        );
    }))
}

/// How long `serve --check` waits for the broker's account of the cluster's names.
const BROKER_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// `serve --check`: validates the configuration as `serve` would read it (the key and TLS
/// files, the broker URL's syntax, the journal directory) without starting, binding or
/// creating anything. Returns a one-line summary of what would run; in cluster mode, then what
/// the broker holds under the stream and ingest queue names (read, never written; an
/// unreachable broker is reported, not a failure), so names already in use show before a node
/// joins them.
pub async fn check(config: &ServeConfig) -> anyhow::Result<String> {
    let tokens = match configured_verifier(config)? {
        Some(_) => "tokens checked with the configured key",
        None => "DEVELOPMENT MODE: tokens signed with a generated secret",
    };
    if let Some(identity) = tls_identity(config)? {
        for (flag, pem) in [
            ("--tls-cert", &identity.cert_pem),
            ("--tls-key", &identity.key_pem),
        ] {
            anyhow::ensure!(
                pem.windows(11).any(|w| w == b"-----BEGIN "),
                "{flag} is not PEM (no -----BEGIN line)"
            );
        }
    }
    if let Some(url) = &config.amqp_url {
        url.parse::<lapin::uri::AMQPUri>()
            .map_err(|error| anyhow::anyhow!("--amqp-url does not parse: {error}"))?;
    }
    let dir = &config.data_dir;
    match std::fs::metadata(dir) {
        Ok(meta) => anyhow::ensure!(
            meta.is_dir(),
            "--data-dir {} is not a directory",
            dir.display()
        ),
        Err(_) => {
            // Created at start-up: its nearest existing ancestor must be a directory.
            let parent = dir
                .ancestors()
                .skip(1)
                .find(|a| a.as_os_str().is_empty() || a.exists())
                .map(|a| {
                    if a.as_os_str().is_empty() {
                        std::path::Path::new(".")
                    } else {
                        a
                    }
                });
            anyhow::ensure!(
                parent.is_some_and(std::path::Path::is_dir),
                "--data-dir {} cannot be created: no directory above it",
                dir.display()
            );
        }
    }
    let ingest = match (&config.amqp_url, config.journal) {
        (None, JournalKind::RabbitmqStream) => {
            anyhow::bail!("--journal rabbitmq-stream needs --amqp-url (AMQP_URL)")
        }
        (Some(url), JournalKind::RabbitmqStream) => format!(
            "cluster mode: journal stream {} and ingest queue {} on {}",
            config.stream,
            config.ingest_queue,
            crate::ingest::redacted(url)
        ),
        (Some(url), JournalKind::Redb) => format!("ingest from {}", crate::ingest::redacted(url)),
        (None, JournalKind::Redb) => "embedded (Publish only)".to_owned(),
    };
    let summary = format!(
        "configuration OK: gRPC on {}, metrics on {}, journal in {}, {ingest}, {tokens}",
        config.listen,
        config.metrics_listen,
        config.data_dir.display()
    );
    Ok(match (&config.amqp_url, config.journal) {
        (Some(url), JournalKind::RabbitmqStream) => {
            format!("{summary}\n{}", check_cluster_names(config, url).await)
        }
        _ => summary,
    })
}

/// What the broker holds under the cluster's names, or why that is not known.
async fn check_cluster_names(config: &ServeConfig, url: &str) -> String {
    let broker = crate::ingest::redacted(url);
    let (node_id, settings) = (config.node_id(), stream_settings(config));
    let inspected = cluster::inspect(url, &node_id, &settings, &config.ingest_queue);
    match tokio::time::timeout(BROKER_CHECK_TIMEOUT, inspected).await {
        Ok(Ok(report)) => format!("broker {broker}:\n{report}"),
        Ok(Err(error @ cluster::ClusterError::Connect(_))) => {
            let error = Chain(&error);
            format!("broker {broker}: unreachable ({error}); the names are not checked")
        }
        Ok(Err(error)) => format!(
            "broker {broker}: the names could not be checked: {}",
            Chain(&error)
        ),
        Err(_) => format!(
            "broker {broker}: no answer within {BROKER_CHECK_TIMEOUT:?}; the names are not checked"
        ),
    }
}

/// The journal stream as `serve` declares it.
fn stream_settings(config: &ServeConfig) -> cluster::StreamSettings {
    cluster::StreamSettings {
        name: config.stream.clone(),
        max_age: config.retention_age,
        max_bytes: config.retention_bytes,
        segment_bytes: config.stream_segment_bytes,
    }
}

/// The `--dev` secret: the one a server started here before left in `DEV_SECRET_FILE`, or a
/// fresh random one written there (readable by this user only). Reusing it means a second
/// `--dev` server in the same directory accepts the tokens minted for the first, and
/// `notify-backbone token` mints for both; overwriting it would silently invalidate every token
/// of the first. `create_new` settles two servers starting at once: one writes, the other reads.
fn dev_secret() -> anyhow::Result<String> {
    use rand::Rng as _;
    use std::io::Write as _;
    let path = std::path::Path::new(auth::DEV_SECRET_FILE);
    if let Some(existing) = read_dev_secret(path)? {
        return Ok(existing);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let bytes: [u8; 32] = rand::rng().random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(secret)
        }
        // Another server wrote it since we looked.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            read_dev_secret(path)?.with_context(|| format!("{} appeared empty", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("cannot write {}", path.display())),
    }
}

/// The secret in `path`, `None` when there is no such file. An empty or unreadable one is an
/// error naming the file (delete it to start over), never silently replaced.
fn read_dev_secret(path: &std::path::Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) => anyhow::bail!(
            "{} is empty: delete it and start again (a new secret is generated)",
            path.display()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads `--tls-cert` and `--tls-key`, if given.
fn tls_identity(config: &ServeConfig) -> anyhow::Result<Option<grpc::TlsIdentity>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    Ok(Some(grpc::TlsIdentity {
        cert_pem: read(cert, "--tls-cert")?,
        key_pem: read(key, "--tls-key")?,
    }))
}

/// What decoding accepts, the same on every ingest path.
fn decode_options(config: &ServeConfig) -> DecodeOptions {
    DecodeOptions {
        strict_schema: config.strict_schema,
        max_event_bytes: config.max_event_bytes,
    }
}

/// Tracing as configured: an OTLP exporter, or off.
fn start_tracing(config: &ServeConfig) -> anyhow::Result<Tracing> {
    let Some(endpoint) = config.otlp_traces_endpoint() else {
        return Ok(Tracing::off());
    };
    let tracing = Tracing::start(&endpoint, &config.node_id(), crate::config::VERSION)?;
    info!(
        %endpoint,
        sampler = std::env::var("OTEL_TRACES_SAMPLER").as_deref().unwrap_or("parentbased_always_on"),
        "tracing: exporting spans over OTLP/gRPC to {endpoint}"
    );
    Ok(tracing)
}

/// The ingest's settings from the server's.
fn ingest_config(config: &ServeConfig, url: &str, tracing: &Tracing) -> IngestConfig {
    let node_id = config.node_id();
    IngestConfig {
        url: url.to_owned(),
        topology: Topology {
            exchange: config.exchange.clone(),
            queue: topology::queue_name(&node_id),
            queue_kind: topology::QueueKind::Node {
                expires: config.queue_expires,
            },
            bindings: config.bindings.clone(),
            dead_letter_exchange: config.dead_letter_exchange.clone(),
            dead_letter_queue: config.dead_letter_queue.clone(),
        },
        node_id,
        prefetch: config.prefetch,
        reconnect_max_backoff: config.reconnect_max_backoff,
        decode: decode_options(config),
        // Half the grace: the streams still need the other half to flush what it acked.
        drain_timeout: config.shutdown_grace / 2,
        tracing: tracing.clone(),
    }
}

/// Mirrors the ingest's state into gRPC health (service `ingest`) until the ingest stops.
async fn report_ingest_health(mut state: watch::Receiver<IngestState>, health: grpc::Health) {
    loop {
        let consuming = *state.borrow_and_update() == IngestState::Consuming;
        health.ingest_consuming(consuming).await;
        if state.changed().await.is_err() {
            health.ingest_consuming(false).await;
            break;
        }
    }
}

/// Ready while not shutting down, while the journal takes writes, with AMQP ingest while
/// consuming, and in cluster mode while reading the journal stream.
fn readiness(
    shutdown: CancellationToken,
    store: watch::Receiver<JournalHealth>,
    ingest: Option<watch::Receiver<IngestState>>,
    journal: Option<watch::Receiver<FollowState>>,
) -> telemetry::Readiness {
    Arc::new(move || {
        if shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        let store = store.borrow();
        if *store != JournalHealth::Writable {
            return Err(format!("journal refuses writes: {}", *store));
        }
        drop(store);
        if let Some(state) = journal.as_ref().map(|state| *state.borrow())
            && state != FollowState::Following
        {
            return Err("journal stream: not reading it (connecting)".into());
        }
        match ingest.as_ref().map(|state| *state.borrow()) {
            None | Some(IngestState::Consuming) => Ok(()),
            Some(state) => Err(format!("ingest: {state}")),
        }
    })
}

/// Mirrors whether the node reads the journal stream into gRPC health (service `journal`).
async fn report_journal_health(mut state: watch::Receiver<FollowState>, health: grpc::Health) {
    loop {
        let following = *state.borrow_and_update() == FollowState::Following;
        health.journal_following(following).await;
        if state.changed().await.is_err() {
            health.journal_following(false).await;
            break;
        }
    }
}

/// How often the journal's file is looked at off the write path (a `statvfs`, and a reopen
/// after a storage failure): how soon a node whose disk got room again says it is ready, with
/// no write to find out.
const JOURNAL_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Probes the journal every [`JOURNAL_PROBE_INTERVAL`] until shutdown, off the async workers.
async fn probe_journal(monitor: JournalMonitor, shutdown: CancellationToken) {
    let monitor = Arc::new(monitor);
    let mut ticker = tokio::time::interval(JOURNAL_PROBE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let monitor = Arc::clone(&monitor);
        if let Err(error) = tokio::task::spawn_blocking(move || monitor.probe()).await {
            warn!(%error, "the journal probe failed");
        }
    }
}

/// Mirrors whether the journal takes writes into the log (one line per change), the metrics and
/// gRPC health: the server (and, with `journal_service`, the `journal` service) is NOT_SERVING
/// while writes are refused. Ends at shutdown, which owns health from then on.
async fn report_journal_writable(
    mut state: watch::Receiver<JournalHealth>,
    health: grpc::Health,
    metrics: Arc<Metrics>,
    journal_service: bool,
    shutdown: CancellationToken,
) {
    let mut was_writable = true;
    loop {
        let now = state.borrow_and_update().clone();
        let writable = now == JournalHealth::Writable;
        if writable != was_writable && !shutdown.is_cancelled() {
            if writable {
                info!("journal: writable again; taking events");
            } else {
                warn!(
                    state = %now,
                    "journal: refusing writes (reads and open streams go on); not ready                      until it recovers by itself"
                );
                metrics
                    .journal
                    .unwritable
                    .get_or_create(&telemetry::ReasonLabel {
                        reason: now.reason_code().into(),
                    })
                    .inc();
            }
            metrics.journal.writable.set(i64::from(writable));
            if writable {
                health.serving().await;
            } else {
                health.not_serving().await;
            }
            was_writable = writable;
        }
        if journal_service && !shutdown.is_cancelled() {
            health.journal_writable(writable).await;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
}

/// Completes `grace` after `shutdown` was cancelled.
async fn grace_deadline(shutdown: &CancellationToken, grace: std::time::Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

/// Ticks the hub's heartbeat until shutdown.
async fn heartbeats(hub: Hub, interval: std::time::Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => hub.heartbeat(),
            () = shutdown.cancelled() => break,
        }
    }
}

/// Applies `--retention-age` and `--retention-bytes` every `every` until `shutdown`, off the
/// async workers (a prune is a write transaction that waits for the disk).
async fn prune_journal(pruner: Pruner, every: std::time::Duration, shutdown: CancellationToken) {
    let pruner = Arc::new(pruner);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        // Batch after batch while there is a backlog, checking for shutdown in between.
        loop {
            let pruner = Arc::clone(&pruner);
            let now = crate::store::unix_millis();
            match tokio::task::spawn_blocking(move || pruner.prune_once(now)).await {
                Ok(Ok(removed)) if removed > 0 && !shutdown.is_cancelled() => {
                    info!(removed, "journal retention: removed the oldest events");
                }
                Ok(Ok(_)) => break,
                Ok(Err(error)) => {
                    warn!(%error, "journal retention failed; retrying later");
                    break;
                }
                Err(error) => {
                    warn!(%error, "journal retention task failed");
                    break;
                }
            }
        }
    }
}

/// With `--durability <interval>`: forces the journal's commits to disk every `every`, and
/// once more at shutdown, off the async workers.
async fn sync_journal(syncer: Syncer, every: std::time::Duration, shutdown: CancellationToken) {
    let syncer = Arc::new(syncer);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            () = shutdown.cancelled() => true,
        };
        let syncer = Arc::clone(&syncer);
        match tokio::task::spawn_blocking(move || syncer.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "journal sync failed; retrying"),
            Err(error) => warn!(%error, "journal sync task failed"),
        }
        if stopping {
            break;
        }
    }
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let signal = tokio::select! {
        _ = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    };
    // Cancel first, log second: nothing that can go wrong with the log may stand between a
    // signal and the shutdown.
    shutdown.cancel();
    info!("{signal} received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sequencer_that_dies_stops_the_server_one_that_is_stopped_does_not() {
        let (stopping, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let dies = tokio::spawn(async { panic!("a commit panicked") });
        let failed = supervise("test", dies, |()| None, stopping.clone(), shutdown.clone());
        assert!(failed.await.unwrap().is_some(), "reported as a failure");
        assert!(shutdown.is_cancelled(), "the server is told to stop");

        // Told to stop, or left without submitters once the server stops: a normal end.
        for told in [true, false] {
            let (stopping, shutdown) = (CancellationToken::new(), CancellationToken::new());
            let ends = tokio::spawn({
                let (stopping, shutdown) = (stopping.clone(), shutdown.clone());
                async move {
                    tokio::select! {
                        () = stopping.cancelled() => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            });
            let failed = supervise("test", ends, |()| None, stopping.clone(), shutdown.clone());
            if told {
                stopping.cancel();
            } else {
                shutdown.cancel();
            }
            assert!(failed.await.unwrap().is_none());
        }
        // A follower that ends with an error (a deleted stream) stops the server too.
        let (stopping, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let gone = tokio::spawn(async { Err::<(), _>("the stream was deleted".to_owned()) });
        let failed = supervise("test", gone, Result::err, stopping, shutdown.clone());
        let reason = failed.await.unwrap().unwrap();
        assert!(reason.contains("the stream was deleted"), "{reason}");
        assert!(shutdown.is_cancelled());
    }

    #[test]
    fn readiness_follows_the_journal_the_ingest_and_shutdown() {
        let shutdown = CancellationToken::new();
        let (store, writable) = watch::channel(JournalHealth::Writable);
        let (state, watched) = watch::channel(IngestState::Connecting);
        let ready = readiness(shutdown.clone(), writable.clone(), Some(watched), None);
        assert_eq!(ready(), Err("ingest: connecting".into()));
        state.send_replace(IngestState::Consuming);
        assert_eq!(ready(), Ok(()));
        // A broker outage: not ready until consuming again.
        state.send_replace(IngestState::Connecting);
        assert_eq!(ready(), Err("ingest: connecting".into()));
        state.send_replace(IngestState::Consuming);
        // A full disk: not ready until the journal takes writes again.
        store.send_replace(JournalHealth::DiskFull {
            free_bytes: 1,
            min_free_bytes: 2,
        });
        let refused = ready().unwrap_err();
        assert!(
            refused.contains("journal refuses writes: disk full"),
            "{refused}"
        );
        store.send_replace(JournalHealth::Writable);
        assert_eq!(ready(), Ok(()));
        shutdown.cancel();
        assert_eq!(ready(), Err("shutting down".into()));
        // Without AMQP ingest, ready until shutdown.
        let embedded = readiness(CancellationToken::new(), writable.clone(), None, None);
        assert_eq!(embedded(), Ok(()));
        // Cluster mode: not ready while not reading the journal stream.
        let (journal, watched) = watch::channel(FollowState::Connecting);
        let cluster = readiness(CancellationToken::new(), writable, None, Some(watched));
        assert!(cluster().is_err());
        journal.send_replace(FollowState::Following);
        assert_eq!(cluster(), Ok(()));
    }
}
