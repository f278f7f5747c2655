//! Every Prometheus metric the stages record, with its name, help and labels in one place (one
//! reference for dashboards), and the bounded label sets (event types and reasons are mapped
//! onto the catalog, so a producer's invented routing key cannot grow a label set). Does not
//! own deciding what to count: each stage calls the recorder when its event happens.

use std::sync::Mutex;

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

use crate::schema;

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
    /// `notify_conflated_total`: state events that streams with storm control skipped because
    /// a later event of the same key superseded them (each reported to its stream).
    pub conflated: Counter,
    /// `notify_coalesced_notices_total`: admin notices folded into a coalesced one on a
    /// `conflate` admin stream (not counting the notice that stands for the burst).
    pub coalesced_notices: Counter,
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
        let conflated = Counter::default();
        let coalesced_notices = Counter::default();
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
            "conflated",
            "State events skipped by streams with storm control (superseded by a later one)",
            conflated.clone(),
        );
        registry.register(
            "coalesced_notices",
            "Admin notices folded into a coalesced notice on conflate admin streams",
            coalesced_notices.clone(),
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
            conflated,
            coalesced_notices,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_routing_keys_do_not_grow_label_sets() {
        assert_eq!(type_label("quota.updated").r#type, "quota.updated");
        assert_eq!(type_label("quota.brand_new").r#type, "quota.other");
        assert_eq!(type_label("zzz.yyy").r#type, "other");
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
