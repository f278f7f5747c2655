//! Logging set-up, the Prometheus metrics every stage records, and the `/metrics` endpoint.
//!
//! Owns: metric names and labels (one place, so dashboards have one reference), the HTTP
//! listener that serves them, and the bound on warnings whose rate a client controls
//! ([`LogLimiter`], [`WARNINGS`]). Does not own: deciding what to count or log — each stage
//! calls the recorder at the moment its event happens.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::schema;

/// What is logged when `RUST_LOG` is not set (`RUST_LOG` replaces all of it).
///
/// - `lapin=off`: the AMQP client logs, at ERROR, every failure it also returns to its caller
///   (a channel or connection the broker closed, a connection that broke, a refused
///   declaration), and that caller is our code, which logs each once with what it means for
///   the node: a warning when it reconnects or retries, an error when it cannot go on.
///   Left on, a broker restart, `dead-letters` asking for a queue that does not exist, or the
///   moment a just-created stream is not consumable yet (cluster nodes starting together)
///   would page an operator for something already handled. `RUST_LOG=info,lapin=debug` shows
///   lapin's own account.
/// - `opentelemetry=warn`: the OpenTelemetry SDK reports its own trouble (a collector that
///   cannot be reached, spans dropped) as warnings; its info and debug lines are for its
///   developers.
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=off,opentelemetry=warn";

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line: timestamp, level, target, fields, and the message.
    Json,
}

/// An error and its causes, `: `-separated, for a log field: an error with a `#[source]` does
/// not repeat it in its own message (the binary prints chains itself).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

/// Starts logging to stderr in `format`; `RUST_LOG` overrides `default_filter` (e.g.
/// [`DEFAULT_LOG_FILTER`]).
///
/// A log line that cannot be written is dropped silently. tracing-subscriber's default is to
/// report the failure with `eprintln!`, which panics when stderr itself is the broken pipe (a
/// log collector that died, `serve 2>&1 | head -1`): the panic then takes down whichever task
/// was logging, the signal handler included, and SIGTERM is ignored from then on.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    use std::io::IsTerminal as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour codes are noise in a file, a pipe or a collector; NO_COLOR (no-color.org) turns
    // them off on a terminal too.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let http2 = Http2WarningLimit::new(&WARNINGS);
    // A second call (tests start several servers in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(ansi).finish().with(http2).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish()
            .with(http2)
            .try_init(),
    };
}

/// Lines of one kind of warning logged per [`WARNING_INTERVAL`] at most, by [`WARNINGS`].
pub const WARNING_BURST: u32 = 5;
/// The window of [`WARNING_BURST`], and how often [`report_suppressed_warnings`] reports.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The process's bound on warnings whose rate a client controls: one per refused connection
/// (`grpc::connections`), one per connection the HTTP/2 stack closes for misbehaving (h2's own
/// lines, through [`Http2WarningLimit`]). A flood of connections would otherwise turn into a
/// flood of identical lines (a rapid-reset attack once logged 486 in 10 s), drowning the rest
/// of the log and costing the disk what the attacker pleases. The metrics still count every
/// one.
pub static WARNINGS: LogLimiter = LogLimiter::new(WARNING_BURST, WARNING_INTERVAL);

/// At most `burst` lines of each kind of warning per `interval`; the others are counted, and
/// [`LogLimiter::report`] logs one line per kind saying how many it suppressed.
///
/// A kind is a `&'static str` named at the call site (or a dependency's log target), so the
/// kinds are a fixed set and the map never grows past it.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    kinds: Mutex<BTreeMap<&'static str, Window>>,
}

/// One kind's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    logged: u32,
    /// Suppressed since the last report (not reset with the window).
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter allowing `burst` lines of each kind per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            kinds: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether a line of `kind` may be logged now; if not, it is counted as suppressed.
    pub fn admit(&self, kind: &'static str) -> bool {
        let now = Instant::now();
        // A panic while counting leaves nothing half-updated (plain integer fields): go on.
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        let window = kinds.entry(kind).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(window.started) >= self.interval {
            window.started = now;
            window.logged = 0;
        }
        if window.logged < self.burst {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }

    /// The kinds with lines suppressed since the last call, and how many; their counts start
    /// again from zero.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        let mut kinds = self.kinds.lock().unwrap_or_else(PoisonError::into_inner);
        kinds
            .iter_mut()
            .filter(|(_, window)| window.suppressed > 0)
            .map(|(kind, window)| (*kind, std::mem::take(&mut window.suppressed)))
            .collect()
    }

    /// Logs one warning per kind with lines suppressed since the last report, with the count.
    pub fn report(&self) {
        for (kind, suppressed) in self.take_suppressed() {
            tracing::warn!(
                kind,
                suppressed,
                "{suppressed} more warnings like the last ({kind}) were not logged, at most \
                 {} a kind per {:?}",
                self.burst,
                self.interval
            );
        }
    }
}

/// Reports [`WARNINGS`]' suppressed lines every [`WARNING_INTERVAL`]; never returns (drop it to
/// stop, e.g. with the server it runs beside).
pub async fn report_suppressed_warnings() -> std::convert::Infallible {
    let mut tick = tokio::time::interval(WARNING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        WARNINGS.report();
    }
}

/// A tracing layer that holds the HTTP/2 stack's own warnings (and errors) to a
/// [`LogLimiter`], one kind per h2 module.
///
/// h2 logs one line for each connection it closes because the peer misbehaved: too many
/// streams reset before they were served (`recv_reset; remotely-reset pending-accept streams
/// reached limit`, the CVE-2023-44487 "rapid reset" mitigation), too many streams it had to
/// reset itself, or a PING answer it never asked for. An attacker decides how many such
/// connections there are. h2 offers no other way to learn of these closes (tonic drops the
/// connection's error at debug level), so its lines are kept rather than filtered out by a
/// default directive: the first few of each kind per interval show h2's own words, and the
/// report says how many more there were. Events are told apart by target and level only,
/// never by their text.
#[derive(Debug, Clone, Copy)]
pub struct Http2WarningLimit {
    limiter: &'static LogLimiter,
}

impl Http2WarningLimit {
    /// The layer, counting into `limiter`.
    pub fn new(limiter: &'static LogLimiter) -> Self {
        Self { limiter }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Http2WarningLimit {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let metadata = event.metadata();
        let target = metadata.target();
        let from_h2 = target == "h2" || target.starts_with("h2::");
        // Levels order by verbosity: WARN and ERROR are the ones at or below WARN.
        if !from_h2 || *metadata.level() > tracing::Level::WARN {
            return true;
        }
        self.limiter.admit(target)
    }
}

/// Label: an event type, bounded to the known catalog (see [`type_label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The canonical event type, or `<family>.other` for untyped events.
    pub r#type: String,
}

/// Label: why an input was rejected (a `DecodeError::reason()` code or a limit).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason code.
    pub reason: String,
}

/// Every metric notify-backbone exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `notify_events_in_total{type}`: events accepted into the journal (duplicates excluded).
    pub events_in: Family<TypeLabel, Counter>,
    /// `notify_events_out_total{type}`: events queued to subscribers (one per recipient).
    pub events_out: Family<TypeLabel, Counter>,
    /// `notify_duplicates_total`: events recognised as already accepted.
    pub duplicates: Counter,
    /// `notify_conflicting_ids_total`: events refused because their id names a different stored
    /// event (another type, user, device or payload).
    pub conflicting_ids: Counter,
    /// `notify_rejected_total{reason}`: published events refused as bad input.
    pub rejected: Family<ReasonLabel, Counter>,
    /// `notify_subscribers`: open subscriptions.
    pub subscribers: Gauge,
    /// `notify_queue_overflows_total`: subscribers whose queue overflowed (they continue from
    /// the journal).
    pub queue_overflows: Counter,
    /// `notify_delivery_latency_seconds`: from an event entering the server to its subscriber's
    /// stream taking it for the wire.
    pub delivery_latency: Histogram,
    /// `notify_ingest_*`: the AMQP ingest.
    pub ingest: IngestMetrics,
    /// `notify_connections*`: the gRPC port's connections.
    pub connections: ConnectionMetrics,
    /// `notify_journal_writer`: 1 while this node writes the cluster's journal stream.
    pub journal_writer: Gauge,
    /// `notify_journal_writable`, `notify_journal_unwritable_total`: the journal's health.
    pub journal: JournalMetrics,
    /// `notify_unreadable_events_total`: stored events a read (a history page, a replay) could
    /// not decode, counted at each read (each is served without its payload, its position
    /// logged).
    pub unreadable_events: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Whether the journal takes writes.
pub struct JournalMetrics {
    /// `notify_journal_writable`: 1 while the journal takes writes, 0 while it refuses them
    /// (a full disk, a storage failure).
    pub writable: Gauge,
    /// `notify_journal_unwritable_total{reason}`: times the journal stopped taking writes, by
    /// reason (`disk_full`, `storage_failed`).
    pub unwritable: Family<ReasonLabel, Counter>,
}

impl JournalMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            writable: Gauge::default(),
            unwritable: Family::default(),
        };
        metrics.writable.set(1);
        let registry = registry.sub_registry_with_prefix("journal");
        registry.register(
            "writable",
            "1 while the journal takes writes, 0 while it refuses them (disk full, storage failure)",
            metrics.writable.clone(),
        );
        registry.register(
            "unwritable",
            "Times the journal stopped taking writes, by reason",
            metrics.unwritable.clone(),
        );
        metrics
    }
}

/// The gRPC port's connections.
pub struct ConnectionMetrics {
    /// `notify_connections`: open connections.
    pub open: Gauge,
    /// `notify_connections_refused_total`: connections closed at once because
    /// `--max-connections` were open.
    pub refused: Counter,
    /// `notify_connections_refused_per_peer_total`: connections closed at once because their
    /// peer address had `--max-connections-per-peer` open.
    pub refused_per_peer: Counter,
    /// `notify_connections_handshake_timeouts_total`: connections closed because no request
    /// arrived within `--handshake-timeout`.
    pub handshake_timeouts: Counter,
    /// `notify_connections_idle_timeouts_total`: connections closed because they had no call
    /// in flight (no open stream either) for `--connection-idle-timeout`.
    pub idle_timeouts: Counter,
    /// `notify_connections_accept_errors_total`: failed accepts (e.g. out of file descriptors).
    pub accept_errors: Counter,
}

impl ConnectionMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            open: Gauge::default(),
            refused: Counter::default(),
            refused_per_peer: Counter::default(),
            handshake_timeouts: Counter::default(),
            idle_timeouts: Counter::default(),
            accept_errors: Counter::default(),
        };
        registry.register(
            "connections",
            "Open connections on the gRPC port",
            metrics.open.clone(),
        );
        let registry = registry.sub_registry_with_prefix("connections");
        registry.register(
            "refused",
            "Connections closed at once because --max-connections were open",
            metrics.refused.clone(),
        );
        registry.register(
            "refused_per_peer",
            "Connections closed at once because their peer had --max-connections-per-peer open",
            metrics.refused_per_peer.clone(),
        );
        registry.register(
            "handshake_timeouts",
            "Connections closed because no request arrived within --handshake-timeout",
            metrics.handshake_timeouts.clone(),
        );
        registry.register(
            "idle_timeouts",
            "Connections closed after --connection-idle-timeout with no call in flight",
            metrics.idle_timeouts.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts on the gRPC port (e.g. out of file descriptors)",
            metrics.accept_errors.clone(),
        );
        metrics
    }
}

/// The AMQP ingest's metrics.
pub struct IngestMetrics {
    /// `notify_ingest_consumed_total`: deliveries received from the broker (redeliveries
    /// included).
    pub consumed: Counter,
    /// `notify_ingest_acked_total`: deliveries acknowledged (stored, duplicate or dead-lettered).
    pub acked: Counter,
    /// `notify_ingest_dead_lettered_total{reason}`: poison messages moved to the dead-letter
    /// queue.
    pub dead_lettered: Family<ReasonLabel, Counter>,
    /// `notify_ingest_reconnects_total`: broker sessions that ended by failure.
    pub reconnects: Counter,
    /// `notify_ingest_downstream_retries_total`: good events the journal or hub did not accept
    /// at once (our own failure; consumption paused and retried).
    pub downstream_retries: Counter,
    /// `notify_ingest_dead_letter_retries_total`: dead-letter copies the broker refused (retried).
    pub dead_letter_retries: Counter,
    /// `notify_ingest_drain_timeouts_total`: shutdowns whose drain ran out of time (the
    /// unsettled deliveries went back to the queue).
    pub drain_timeouts: Counter,
    /// `notify_ingest_lag_seconds`: from the producer's AMQP timestamp to the hub.
    pub lag: Histogram,
    /// `notify_ingest_consuming`: 1 while connected and consuming, else 0.
    pub consuming: Gauge,
}

impl IngestMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            consumed: Counter::default(),
            acked: Counter::default(),
            dead_lettered: Family::default(),
            reconnects: Counter::default(),
            downstream_retries: Counter::default(),
            dead_letter_retries: Counter::default(),
            drain_timeouts: Counter::default(),
            // 1 ms … ~65 s in 17 doubling steps: the producers' timestamps have millisecond
            // resolution, and a backlog after an outage is measured in seconds or minutes.
            lag: Histogram::new(exponential_buckets(1e-3, 2.0, 17)),
            consuming: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("ingest");
        registry.register(
            "consumed",
            "Deliveries received from the broker",
            metrics.consumed.clone(),
        );
        registry.register(
            "acked",
            "Deliveries acknowledged to the broker",
            metrics.acked.clone(),
        );
        registry.register(
            "dead_lettered",
            "Poison messages moved to the dead-letter queue",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "reconnects",
            "Broker sessions that ended by failure",
            metrics.reconnects.clone(),
        );
        registry.register(
            "downstream_retries",
            "Good events not accepted downstream at once (retried)",
            metrics.downstream_retries.clone(),
        );
        registry.register(
            "dead_letter_retries",
            "Dead-letter copies the broker refused (retried)",
            metrics.dead_letter_retries.clone(),
        );
        registry.register(
            "drain_timeouts",
            "Shutdowns whose ingest drain ran out of time",
            metrics.drain_timeouts.clone(),
        );
        registry.register(
            "lag_seconds",
            "From the producer's AMQP timestamp to the hub",
            metrics.lag.clone(),
        );
        registry.register(
            "consuming",
            "1 while connected to the broker and consuming",
            metrics.consuming.clone(),
        );
        metrics
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered under the `notify_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("notify");
        let events_in = Family::<TypeLabel, Counter>::default();
        let events_out = Family::<TypeLabel, Counter>::default();
        let duplicates = Counter::default();
        let conflicting_ids = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let subscribers = Gauge::default();
        let queue_overflows = Counter::default();
        // 50 µs … ~1.6 s in 16 doubling steps.
        let delivery_latency = Histogram::new(exponential_buckets(50e-6, 2.0, 16));
        registry.register(
            "events_in",
            "Events accepted into the journal",
            events_in.clone(),
        );
        registry.register(
            "events_out",
            "Events queued to subscribers",
            events_out.clone(),
        );
        registry.register(
            "duplicates",
            "Events recognised as already accepted",
            duplicates.clone(),
        );
        registry.register(
            "conflicting_ids",
            "Events refused because their id names a different stored event",
            conflicting_ids.clone(),
        );
        registry.register(
            "rejected",
            "Published events refused as bad input",
            rejected.clone(),
        );
        registry.register("subscribers", "Open subscriptions", subscribers.clone());
        registry.register(
            "queue_overflows",
            "Subscribers whose queue overflowed (they continue from the journal)",
            queue_overflows.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From an event entering the server to its stream taking it for the wire",
            delivery_latency.clone(),
        );
        let ingest = IngestMetrics::register(&mut registry);
        let connections = ConnectionMetrics::register(&mut registry);
        let journal = JournalMetrics::register(&mut registry);
        let journal_writer = Gauge::default();
        registry.register(
            "journal_writer",
            "1 while this node writes the cluster's journal stream (cluster mode)",
            journal_writer.clone(),
        );
        let unreadable_events = Counter::default();
        registry.register(
            "unreadable_events",
            "Stored events a read could not decode (served without their payload)",
            unreadable_events.clone(),
        );
        Self {
            journal_writer,
            journal,
            unreadable_events,
            ingest,
            connections,
            registry: Mutex::new(registry),
            events_in,
            events_out,
            duplicates,
            conflicting_ids,
            rejected,
            subscribers,
            queue_overflows,
            delivery_latency,
        }
    }

    /// Counts one accepted event.
    pub fn record_event_in(&self, event_type: &str) {
        self.events_in.get_or_create(&type_label(event_type)).inc();
    }

    /// Counts one event's fan-out to `recipients` subscribers.
    pub fn record_fan_out(&self, event_type: &str, recipients: u64) {
        if recipients > 0 {
            self.events_out
                .get_or_create(&type_label(event_type))
                .inc_by(recipients);
        }
    }

    /// Counts one rejected input.
    pub fn record_rejected(&self, reason: &str) {
        self.rejected.get_or_create(&reason_label(reason)).inc();
    }

    /// Counts one dead-lettered message.
    pub fn record_dead_lettered(&self, reason: &str) {
        self.ingest
            .dead_lettered
            .get_or_create(&reason_label(reason))
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

fn reason_label(reason: &str) -> ReasonLabel {
    ReasonLabel {
        reason: reason.to_owned(),
    }
}

/// Keeps label cardinality bounded: producers may invent routing keys, metrics must not grow
/// with them. Known types keep their name; anything else becomes `<family>.other`.
fn type_label(event_type: &str) -> TypeLabel {
    let label = if schema::is_typed(event_type) || event_type == schema::ADMIN_NOTICE_TYPE {
        event_type.to_owned()
    } else {
        match schema::family_of(event_type) {
            Some(family) => format!("{family}.other"),
            None => "other".to_owned(),
        }
    };
    TypeLabel { r#type: label }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_routing_keys_do_not_grow_label_sets() {
        assert_eq!(type_label("quota.updated").r#type, "quota.updated");
        assert_eq!(type_label("quota.brand_new").r#type, "quota.other");
        assert_eq!(type_label("zzz.yyy").r#type, "other");
    }

    /// Log lines written to memory, for the tests of what gets logged.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().unwrap();
            String::from_utf8_lossy(&bytes)
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// A rapid-reset attack made h2 log one warning per connection it closed (486 in 10 s).
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_http2_warnings_logs_a_few_lines_and_then_a_count() {
        let limiter: &'static LogLimiter =
            Box::leak(Box::new(LogLimiter::new(3, Duration::from_secs(10))));
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .finish()
            .with(Http2WarningLimit::new(limiter));
        let reset = || {
            tracing::warn!(
                target: "h2::proto::streams::recv",
                "recv_reset; remotely-reset pending-accept streams reached limit (20)"
            );
        };
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                reset();
            }
            // Other modules of h2 are kinds of their own; other crates' lines are untouched.
            tracing::warn!(target: "h2::proto::ping_pong", "recv PING ack that we never sent");
            for _ in 0..10 {
                tracing::warn!("our own warning");
                tracing::debug!(target: "h2::codec", "h2's own debug lines are not counted");
            }
            limiter.report();
        });
        let lines = captured.lines();
        let resets = lines.iter().filter(|l| l.contains("recv_reset")).count();
        assert_eq!(resets, 3, "{lines:#?}");
        assert_eq!(lines.iter().filter(|l| l.contains("PING ack")).count(), 1);
        assert_eq!(lines.iter().filter(|l| l.contains("our own")).count(), 10);
        let reports: Vec<_> = lines
            .iter()
            .filter(|l| l.contains("were not logged"))
            .collect();
        assert_eq!(reports.len(), 1, "{lines:#?}");
        assert!(
            reports[0].contains("97 more") && reports[0].contains("h2::proto::streams::recv"),
            "{reports:?}"
        );

        // Nothing suppressed since: no report. A new window: lines again.
        assert!(limiter.take_suppressed().is_empty());
        tokio::time::advance(Duration::from_secs(10)).await;
        tracing::subscriber::with_default(
            tracing_subscriber::fmt()
                .with_writer({
                    let captured = captured.clone();
                    move || captured.clone()
                })
                .finish()
                .with(Http2WarningLimit::new(limiter)),
            reset,
        );
        let resets = captured
            .lines()
            .iter()
            .filter(|l| l.contains("recv_reset"))
            .count();
        assert_eq!(resets, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_kind_of_warning_is_admitted_a_burst_per_interval() {
        let limiter = LogLimiter::new(2, Duration::from_secs(10));
        let admitted = |kind| (0..5).filter(|_| limiter.admit(kind)).count();
        assert_eq!(admitted("refused"), 2);
        assert_eq!(admitted("refused_per_peer"), 2);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(admitted("refused"), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(admitted("refused"), 2);
        assert_eq!(
            limiter.take_suppressed(),
            vec![("refused", 11), ("refused_per_peer", 3)]
        );
        assert!(limiter.take_suppressed().is_empty());
    }

    #[test]
    fn render_contains_registered_metrics() {
        let metrics = Metrics::new();
        metrics.record_event_in("billing.payment_success");
        let text = metrics.render();
        assert!(
            text.contains("notify_events_in_total{type=\"billing.payment_success\"} 1"),
            "{text}"
        );
        assert!(text.contains("notify_subscribers"), "{text}");
    }
}
