//! AMQP ingest: the platform's events from RabbitMQ, decoded and handed to the journal's writer
//! (any [`crate::write::Writer`]: the sequencer, or cluster mode's stream writer).
//!
//! Owns: the broker connection and its lifecycle (connect, declare the topology, consume,
//! reconnect with backoff and jitter, clean shutdown), acknowledgements (sent only once the
//! writer accepted the event, batched with `multiple`), dead-lettering of poison input with
//! the reason in headers, the ingest metrics and readiness state, and, on cluster mode's shared
//! queue, the probe that tells its active consumer that it is ([`PROBE_TYPE`]). Does not own: decoding
//! (`schema`), dedupe and ordering (`store` via the sequencer), routing (`hub`). Only this
//! module touches lapin types.
//!
//! The flow follows vector's AMQP source: `basic_qos(prefetch)` before consuming, hand off
//! to the writer with backpressure, ack only after the writer accepted. Deliveries are settled in
//! the order they arrived, so one `basic.ack` with `multiple` can acknowledge a whole run.
//!
//! | submodule             | owns                                                             |
//! |-----------------------|------------------------------------------------------------------|
//! | [`topology`]          | the names and arguments of the exchanges, queues and bindings    |
//! | `session`             | one connection: consume, settle in order, ack, drain on shutdown |
//! | `start`               | how a delivery starts: to the writer or the dead letters; answers |
//! | `message`             | a delivery kept until acked, and what its properties say         |
//! | [`dead_letter`]       | the dead-letter copy of a poison message and its reason headers  |
//! | [`dead_letter_queue`] | the operator's tools: list the dead letters, replay chosen ones  |
//! | `letter`              | one dead letter read back from its headers, and `Selection`      |
//! | `events`              | each runtime failure as a small type that logs and counts itself |

pub mod dead_letter;
pub mod dead_letter_queue;
mod events;
mod letter;
mod message;
mod session;
mod start;
pub mod topology;

pub use session::connection_name;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    backoff::{self, Backoff},
    otel::Tracing,
    schema::DecodeSettings,
    telemetry::Metrics,
    write::Writer,
};

pub use topology::Topology;

/// `content_type` of an event forwarded by another node's `Publish` (cluster mode): the body is
/// an encoded `Event`, and the writer answers to `reply_to` with `correlation_id`.
pub const FORWARDED_CONTENT_TYPE: &str = "application/x-protobuf";
/// `type` of such a message: the message its body is.
pub const FORWARDED_TYPE: &str = "cloudphone.notify.v1.Event";

/// `type` of an inbox command forwarded by another node (cluster mode): the body is an encoded
/// `inbox::Command`, its `message_id` names it, and the writer answers to `reply_to` once it is
/// in the journal stream (the calling node then waits until its own replica applied it).
pub const FORWARDED_INBOX_TYPE: &str = "notify-backbone.inbox-command";

/// `type` of a probe: an empty message an ingest publishes to cluster mode's shared queue when
/// its session starts consuming, and once more when it stops. The queue has a single active
/// consumer, so the node that receives a probe learns that it is that consumer (cluster mode's
/// writer) at once, not only when the next event comes; the probe is acked, never decoded.
/// RabbitMQ tells an AMQP 0.9.1 consumer nothing when it becomes active.
pub const PROBE_TYPE: &str = "notify-backbone.active-consumer-probe";

/// Everything the ingest needs to know.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// The broker, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// This node's id; names its queue and its connection.
    pub node_id: String,
    /// What to declare and consume from.
    pub topology: Topology,
    /// Deliveries the broker may have outstanding (unacknowledged) to this node at once.
    pub prefetch: u16,
    /// Longest pause between reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Decoding knobs (`--strict-schema`).
    pub decode: DecodeSettings,
    /// On shutdown, how long in-flight deliveries get to settle; the rest go back to the queue
    /// unacknowledged.
    pub drain_timeout: Duration,
    /// Ingest spans (and the trace each sampled event carries on), when tracing is on.
    pub tracing: Tracing,
}

/// Where the ingest stands; `/readyz` and gRPC health report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestState {
    /// Connecting, declaring the topology, or waiting to reconnect.
    Connecting,
    /// Connected and consuming.
    Consuming,
    /// Shutting down: the consumer is cancelled, in-flight deliveries are being settled.
    Draining,
    /// Stopped for good (shutdown).
    Stopped,
}

impl std::fmt::Display for IngestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IngestState::Connecting => "connecting",
            IngestState::Consuming => "consuming",
            IngestState::Draining => "draining",
            IngestState::Stopped => "stopped",
        })
    }
}

/// A running ingest.
pub struct Ingest {
    state: watch::Receiver<IngestState>,
    task: tokio::task::JoinHandle<()>,
}

impl Ingest {
    /// Starts consuming in the background. The task reconnects until `shutdown` is cancelled,
    /// then cancels its consumer, settles and acks what is in flight, and closes the connection.
    pub fn spawn<W: Writer>(
        config: IngestSettings,
        writer: W,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let (state_tx, state) = watch::channel(IngestState::Connecting);
        let task = tokio::spawn(run(config, writer, metrics, state_tx, shutdown));
        Self { state, task }
    }

    /// Follows the ingest's state.
    pub fn state(&self) -> watch::Receiver<IngestState> {
        self.state.clone()
    }

    /// Waits until the ingest has drained and closed its connection (after `shutdown` was
    /// cancelled).
    pub async fn stopped(&self) {
        let mut state = self.state.clone();
        // An error means the task is gone, which is stopped too.
        let _ = state.wait_for(|s| *s == IngestState::Stopped).await;
    }

    /// The background task, for the owner to join.
    pub fn into_task(self) -> tokio::task::JoinHandle<()> {
        self.task
    }
}

async fn run<W: Writer>(
    config: IngestSettings,
    writer: W,
    metrics: Arc<Metrics>,
    state: watch::Sender<IngestState>,
    shutdown: CancellationToken,
) {
    // From 100 ms, doubling up to --reconnect-max-backoff (crate::backoff has the reasons).
    let mut backoff = Backoff::new(backoff::FIRST, config.reconnect_max_backoff);
    let mut attempt: u64 = 0;
    info!(
        broker = %redacted(&config.url),
        queue = %config.topology.queue,
        "ingest: consuming from RabbitMQ"
    );
    // Kept across sessions: a message whose dead-lettering ended one is not copied again.
    let suspects = start::Suspects::default();
    while !shutdown.is_cancelled() {
        attempt += 1;
        let outcome = session::run(&config, &writer, &metrics, &state, &shutdown, &suspects).await;
        metrics.ingest.consuming.set(0);
        writer.session_ended();
        match outcome {
            Ok(()) => break,
            Err(failure) => {
                let _ = state.send(IngestState::Connecting);
                if failure.was_stable {
                    // After a healthy stretch this is a new outage, not the same one going on.
                    backoff.reset();
                }
                let pause = backoff.next_pause();
                events::SessionEnded {
                    error: &failure.error,
                    attempt,
                    retry_in: pause,
                }
                .emit(&metrics);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    let _ = state.send(IngestState::Stopped);
    info!("ingest stopped");
}

/// The broker URL without its password, for logs: parsed as lapin parses it (so a password
/// holding `@` or `:` is recognised as a whole), then written back with `***` in its place. A URL
/// that does not parse is not echoed at all, since where its password ends is unknown.
pub fn redacted(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => {
            let authority = &uri.authority;
            let vhost = if uri.vhost == "/" {
                "%2f".to_owned()
            } else {
                uri.vhost.clone()
            };
            format!(
                "{}://{}:***@{}:{}/{vhost}",
                uri.scheme, authority.userinfo.username, authority.host, authority.port
            )
        }
        Err(_) => "<an AMQP URL that does not parse>".into(),
    }
}

/// Why ingest could not go on; the ingest logs it and reconnects.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to the broker")]
    Connect(#[source] lapin::Error),
    /// Declaring an exchange, queue or binding failed.
    #[error("cannot declare {what}{hint}")]
    Topology {
        /// What was being declared, e.g. `queue notify-backbone.node-1`.
        what: String,
        /// The broker's answer.
        source: lapin::Error,
        /// Advice for the operator, when the cause is a known one.
        hint: &'static str,
    },
    /// The connection or channel broke while consuming.
    #[error("broker connection lost")]
    Lost(#[source] lapin::Error),
    /// The broker cancelled our consumer (e.g. the queue was deleted).
    #[error("the broker cancelled the consumer (was the queue deleted?)")]
    Cancelled,
    /// A dead-letter copy reached no queue; the topology is declared again before retrying.
    #[error("a dead-letter copy sent to {0} reached no queue (was the dead-letter queue deleted?)")]
    DeadLetterUnroutable(String),
}

/// A session that ended by failure, and whether it had consumed healthily for a while first.
#[derive(Debug)]
struct SessionFailure {
    error: IngestError,
    was_stable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_logged() {
        assert_eq!(
            redacted("amqp://guest:secret@broker:5672/%2f"),
            "amqp://guest:***@broker:5672/%2f"
        );
        // The password may itself hold `@` and `:` (percent-encoded or not): none of it shows.
        for url in [
            "amqp://svc:p@ss:w@rd@broker:5672/prod",
            "amqp://svc:p%40ss%3Aw%40rd@broker/prod",
        ] {
            let shown = redacted(url);
            assert!(!shown.contains("ss") && !shown.contains("rd"), "{shown}");
            assert!(shown.starts_with("amqp://svc:***@broker:5672/"), "{shown}");
        }
        assert_eq!(
            redacted("amqp://broker:5672"),
            "amqp://guest:***@broker:5672/%2f"
        );
        assert_eq!(
            redacted("not a url: secret"),
            "<an AMQP URL that does not parse>"
        );
    }
}
