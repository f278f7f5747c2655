//! Runtime failures of the ingest, each a small type that logs and counts itself, so a failure
//! is reported the same way wherever it happens.

use std::time::Duration;

use tracing::{debug, warn};

use crate::{schema::DecodeError, telemetry::Chain, telemetry::Metrics, write::WriteError};

use super::IngestError;

/// A broker session ended by failure; the ingest reconnects after `retry_in`.
pub(super) struct SessionEnded<'a> {
    pub error: &'a IngestError,
    pub attempt: u64,
    pub retry_in: Duration,
}

impl SessionEnded<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.ingest.reconnects.inc();
        warn!(
            error = %Chain(self.error),
            attempt = self.attempt,
            retry_in = ?self.retry_in,
            "ingest: broker session ended; reconnecting"
        );
    }
}

/// A poison message went to the dead-letter queue.
pub(super) struct DeadLettered<'a> {
    pub routing_key: &'a str,
    pub error: &'a DecodeError,
    pub redelivered: bool,
}

impl DeadLettered<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.record_dead_lettered(self.error.reason());
        warn!(
            routing_key = self.routing_key,
            reason = self.error.reason(),
            field = self.error.field(),
            redelivered = self.redelivered,
            "ingest: dead-lettered: {}",
            self.error
        );
    }
}

/// A poison message was rejected without requeue instead of copied (no copy could be sent):
/// the queue's own dead-lettering moves it, without the reason headers, so the reason is logged
/// here.
pub(super) struct Rejected<'a> {
    pub routing_key: &'a str,
    pub error: &'a DecodeError,
}

impl Rejected<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.record_dead_lettered(self.error.reason());
        warn!(
            routing_key = self.routing_key,
            reason = self.error.reason(),
            field = self.error.field(),
            "ingest: rejected to the queue's dead-letter exchange (no copy with the reason \
             could be sent): {}",
            self.error
        );
    }
}

/// The writer (sequencer, journal; in cluster mode the broker) did not accept a good event: our own failure. The
/// message stays unacknowledged and consumption pauses until it is accepted.
pub(super) struct DownstreamRefused<'a> {
    pub error: &'a WriteError,
    pub retry_in: Duration,
    /// The first refusal since the last event was accepted: later ones of the same streak are
    /// logged at debug (the retries are counted; the journal's health says why, once).
    pub first: bool,
}

impl DownstreamRefused<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.ingest.downstream_retries.inc();
        if self.first {
            warn!(
                error = %Chain(self.error),
                retry_in = ?self.retry_in,
                "ingest: event not accepted downstream; consumption paused, will retry"
            );
        } else {
            debug!(
                error = %Chain(self.error),
                retry_in = ?self.retry_in,
                "ingest: event still not accepted downstream; will retry"
            );
        }
    }
}

/// The broker refused (nacked) a dead-letter copy; the original stays unacked and is retried.
pub(super) struct DeadLetterRefused<'a> {
    pub routing_key: &'a str,
    pub retry_in: Duration,
}

impl DeadLetterRefused<'_> {
    pub fn emit(self, metrics: &Metrics) {
        metrics.ingest.dead_letter_retries.inc();
        warn!(
            routing_key = self.routing_key,
            retry_in = ?self.retry_in,
            "ingest: the broker refused a dead-letter copy; will retry"
        );
    }
}

/// Shutdown's drain ran out of time; the unsettled deliveries go back to the queue unacked.
pub(super) struct DrainTimedOut {
    pub unsettled: usize,
    pub drain_timeout: Duration,
}

impl DrainTimedOut {
    pub fn emit(self, metrics: &Metrics) {
        metrics.ingest.drain_timeouts.inc();
        warn!(
            unsettled = self.unsettled,
            drain_timeout = ?self.drain_timeout,
            "ingest: drain timed out; the unsettled deliveries go back to the queue"
        );
    }
}
