//! One broker session: connect, declare, consume, settle deliveries in order, ack, and on
//! shutdown drain what is in flight.
//!
//! Every delivery becomes an in-flight entry whose outcome is either the writer's receipt
//! (the event is stored and routed), the broker's confirm of its dead-letter copy, or, for a
//! probe, the writer having acted on it (how each starts is `start`'s). Entries settle strictly
//! in arrival order, so acking the newest settled tag with `multiple` covers exactly the settled
//! ones. The number in flight is bounded by the prefetch: the broker sends no more than that
//! many unacknowledged deliveries.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    },
    types::FieldTable,
};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{backoff::Backoff, telemetry::Metrics, write::Writer};

use super::{
    IngestError, IngestSettings, IngestState, SessionFailure, dead_letter, events,
    message::Message,
    start::{Outcome, PendingOutcome, Start, Suspects},
    topology::QueueKind,
};

/// Closing a connection the broker already dropped can hang until a heartbeat timeout; past
/// this we stop waiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause before retrying an event the writer did not accept; doubles up to the max
/// (the policy, and why these numbers: `crate::backoff`).
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);
/// The longest a settled delivery waits for its ack. Short against any redelivery concern (an
/// unacked message is only redelivered if the connection dies, and then dedupe catches it),
/// long enough to cover many deliveries with one `multiple` ack at moderate rates.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// A session that consumed this long before failing was healthy: the reconnect backoff starts
/// over. A shorter one (a flapping network, a load balancer dropping connections) keeps
/// doubling, so many nodes do not hammer the broker every 100 ms together.
const STABLE_SESSION: Duration = Duration::from_secs(30);

/// A delivery as the session keeps it. A dead letter replayed into our queue carries its event
/// type in a header (the default exchange it came through replaced the routing key with the
/// queue's name).
fn keep(delivery: Delivery) -> Message {
    let routing_key = dead_letter::replayed_routing_key(&delivery.properties)
        .unwrap_or_else(|| delivery.routing_key.to_string());
    Message {
        tag: delivery.delivery_tag,
        exchange: delivery.exchange.to_string(),
        routing_key,
        body: delivery.data,
        properties: delivery.properties,
        redelivered: delivery.redelivered,
    }
}

struct InFlight {
    message: Message,
    outcome: PendingOutcome,
    /// Submitted again after a refusal (not the delivery's first submission).
    resubmitted: bool,
}

/// Publishes a probe ([`super::PROBE_TYPE`]) to `queue`; its confirm is not waited for (a
/// probe lost costs only an announcement that comes with the next event instead).
async fn publish_probe(channel: &Channel, queue: &str) -> lapin::Result<()> {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &[],
            BasicProperties::default().with_type(super::PROBE_TYPE.into()),
        )
        .await
        .map(drop)
}

/// Runs one session until shutdown (`Ok`) or until a connection fails.
///
/// Dead letters are published on a connection of their own: when the broker raises a memory or
/// disk alarm it stops reading from every connection that publishes, and the consuming
/// connection must keep acking (consuming is what relieves the broker) even then.
pub(super) async fn run<W: Writer>(
    config: &IngestSettings,
    writer: &W,
    metrics: &Metrics,
    state: &watch::Sender<IngestState>,
    shutdown: &CancellationToken,
    suspects: &Suspects,
) -> Result<(), SessionFailure> {
    let connect = |name: String| {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        Connection::connect(&config.url, properties)
    };
    let connections = async {
        let consuming = connect(connection_name(&config.node_id)).await?;
        match connect(format!("{} dead-letters", connection_name(&config.node_id))).await {
            Ok(publishing) => Ok((consuming, publishing)),
            Err(error) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, consuming.close(200, "".into())).await;
                Err(error)
            }
        }
    };
    let (consuming, publishing) = tokio::select! {
        connected = connections => connected.map_err(|error| SessionFailure {
            error: IngestError::Connect(error),
            was_stable: false,
        })?,
        () = shutdown.cancelled() => return Ok(()),
    };
    let result = consume(
        (&consuming, &publishing),
        config,
        writer,
        metrics,
        state,
        shutdown,
        suspects,
    )
    .await;
    for connection in [&consuming, &publishing] {
        let closing = connection.close(200, "notify-backbone stopping".into());
        if let Ok(Err(error)) = tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            debug!(%error, "closing a broker connection");
        }
    }
    result
}

/// The name the broker shows for the node's consuming connection (`rabbitmqctl
/// list_connections client_properties`); the dead-letter one adds ` dead-letters`.
pub fn connection_name(node_id: &str) -> String {
    format!("notify-backbone {node_id}")
}

async fn consume<W: Writer>(
    (connection, publishing): (&Connection, &Connection),
    config: &IngestSettings,
    writer: &W,
    metrics: &Metrics,
    state: &watch::Sender<IngestState>,
    shutdown: &CancellationToken,
    suspects: &Suspects,
) -> Result<(), SessionFailure> {
    let before = |error| SessionFailure {
        error,
        was_stable: false,
    };
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| before(IngestError::Lost(e)))?;
    config.topology.declare(&channel).await.map_err(before)?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| before(IngestError::Lost(e)))?;
    let dead_letters = publishing
        .create_channel()
        .await
        .map_err(|e| before(IngestError::Lost(e)))?;
    dead_letters
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| before(IngestError::Lost(e)))?;
    let mut consumer = channel
        .basic_consume(
            config.topology.queue.as_str().into(),
            format!("notify-backbone.{}", config.node_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| before(IngestError::Lost(e)))?;
    let _ = state.send(IngestState::Consuming);
    writer.session_started(&channel);
    metrics.ingest.consuming.set(1);
    info!(queue = %config.topology.queue, prefetch = config.prefetch, "ingest: consuming");
    if config.topology.queue_kind == QueueKind::Shared {
        // Whoever consumes the queue now learns it from this, this session or another node's.
        publish_probe(&dead_letters, &config.topology.queue)
            .await
            .map_err(|e| before(IngestError::Lost(e)))?;
    }

    let mut session = Session {
        metrics,
        channel,
        start: Start {
            config,
            writer,
            dead_letters,
            frame_max: publishing.configuration().frame_max(),
            suspects,
        },
        inflight: VecDeque::with_capacity(usize::from(config.prefetch)),
        last_settled: None,
        unacked: 0,
        ack_batch: (usize::from(config.prefetch) / 4).max(1),
        ack_due: None,
        retry_pauses: Backoff::new(FIRST_RETRY_PAUSE, MAX_RETRY_PAUSE),
        blocked: false,
        holding: false,
        recovered: false,
    };
    let started = tokio::time::Instant::now();
    let consuming = |error| SessionFailure {
        error,
        was_stable: started.elapsed() >= STABLE_SESSION,
    };
    session
        .pump(&mut consumer, shutdown)
        .await
        .map_err(consuming)?;
    let _ = state.send(IngestState::Draining);
    metrics.ingest.consuming.set(0);
    session.drain(&consumer).await.map_err(consuming)
}

struct Session<'a, W> {
    metrics: &'a Metrics,
    channel: Channel,
    start: Start<'a, W>,
    /// Deliveries not settled yet, oldest first.
    inflight: VecDeque<InFlight>,
    /// The newest delivery tag settled but not acked yet.
    last_settled: Option<u64>,
    /// How many deliveries `last_settled` would ack.
    unacked: u64,
    /// Ack once this many are settled, or at `ack_due`, so the broker's prefetch window refills
    /// without one `basic.ack` per message. Each ack is a frame through lapin's I/O thread and a
    /// wake-up on both sides; at a few thousand events/s acking every message cost more CPU than
    /// decoding them (profiled with perf, see BENCHMARKS.md).
    ack_batch: usize,
    /// When the oldest settled-but-unacked delivery must be acked at the latest.
    ack_due: Option<tokio::time::Instant>,
    /// The pauses before retrying an event the writer refused, reset by every settlement.
    retry_pauses: Backoff,
    /// Shutdown came while the oldest delivery was waiting for a retry: nothing after it may be
    /// acked (a `multiple` ack would cover it too).
    blocked: bool,
    /// A delivery was refused by the writer: no new delivery starts until every one in flight is
    /// settled. The ones behind the refused one were submitted already and are refused too (or
    /// accepted, if the cause went away); each is retried in order, and nothing that arrives
    /// later may be journaled ahead of them.
    holding: bool,
    /// While holding, a resubmitted delivery was accepted: the refusals of first submissions
    /// still in flight were answered before that and are stale, so they are retried at once.
    recovered: bool,
}

impl<W: Writer> Session<'_, W> {
    /// Consumes and settles until shutdown.
    async fn pump(
        &mut self,
        consumer: &mut Consumer,
        shutdown: &CancellationToken,
    ) -> Result<(), IngestError> {
        loop {
            tokio::select! {
                // Settle before taking more: acks go out as early as possible.
                biased;
                () = shutdown.cancelled() => return Ok(()),
                outcome = oldest_outcome(&mut self.inflight) => {
                    self.settle_oldest(outcome, shutdown).await?;
                    if self.blocked {
                        return Ok(());
                    }
                }
                () = ack_timer(self.ack_due) => self.flush_acks().await?,
                delivery = consumer.next(), if !self.holding => match delivery {
                    Some(Ok(delivery)) => {
                        self.metrics.ingest.consumed.inc();
                        let message = keep(delivery);
                        // Starting may wait (a full writer is the backpressure); shutdown
                        // must not wait with it. A message dropped here was never settled, so
                        // no ack covers it and the broker hands it out again.
                        let outcome = tokio::select! {
                            outcome = self.start.begin(&message) => outcome?,
                            () = shutdown.cancelled() => return Ok(()),
                        };
                        self.inflight.push_back(InFlight {
                            message,
                            outcome,
                            resubmitted: false,
                        });
                    }
                    Some(Err(error)) => return Err(IngestError::Lost(error)),
                    None => return Err(IngestError::Cancelled),
                },
            }
        }
    }

    /// After shutdown: stop the consumer, settle and ack what is in flight, close the channels.
    /// Deliveries the client received but never started go back to the queue when the channel
    /// closes, unacked.
    async fn drain(mut self, consumer: &Consumer) -> Result<(), IngestError> {
        // Everything below, the broker's answers included, fits in the drain timeout: a broker
        // that stopped answering must not hold the server's shutdown.
        let drain_timeout = self.start.config.drain_timeout;
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let cancel = self
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default());
        if let Ok(Err(error)) = tokio::time::timeout_at(deadline, cancel).await {
            debug!(%error, "cancelling the consumer");
        }
        let in_flight = self.inflight.len();
        while !self.blocked
            && let Some(oldest) = self.inflight.front_mut()
        {
            let Ok(outcome) = tokio::time::timeout_at(deadline, oldest.outcome.as_mut()).await
            else {
                events::DrainTimedOut {
                    unsettled: self.inflight.len(),
                    drain_timeout,
                }
                .emit(self.metrics);
                break;
            };
            if !matches!(
                outcome,
                Outcome::Accepted(_)
                    | Outcome::Applied
                    | Outcome::Probed
                    | Outcome::DeadLettered(_)
            ) {
                // No retries during shutdown: it stays unacked and the broker redelivers it.
                break;
            }
            self.settle_oldest(outcome, &CancellationToken::new())
                .await?;
        }
        if tokio::time::timeout_at(deadline, self.flush_acks())
            .await
            .is_err()
        {
            debug!("the last ack did not go out before the drain deadline");
        }
        info!(
            settled = in_flight - self.inflight.len(),
            returned = self.inflight.len(),
            "ingest: drained in-flight deliveries"
        );
        let config = self.start.config;
        let closes = async {
            let _ = self.channel.close(200, "shutdown".into()).await;
            if config.topology.queue_kind == QueueKind::Shared {
                // Only now that this session's channel is closed (so whatever it appended is in
                // the stream, see `cluster::writer`): the consumer that is active next learns
                // it at once, not at the next event.
                let _ = publish_probe(&self.start.dead_letters, &config.topology.queue).await;
            }
            let _ = self.start.dead_letters.close(200, "shutdown".into()).await;
        };
        let _ = tokio::time::timeout_at(deadline, closes).await;
        Ok(())
    }

    /// Settles the oldest delivery with its outcome, acking in batches; a refused one is
    /// retried after a pause (consumption waits meanwhile: that is the backpressure).
    async fn settle_oldest(
        &mut self,
        outcome: Outcome,
        shutdown: &CancellationToken,
    ) -> Result<(), IngestError> {
        let Some(oldest) = self.inflight.pop_front() else {
            return Ok(());
        };
        if self.inflight.is_empty() && !matches!(outcome, Outcome::Refused(_)) {
            self.holding = false;
            self.recovered = false;
        }
        match outcome {
            Outcome::Accepted(published) => {
                self.recovered |= self.holding && oldest.resubmitted;
                if !published.duplicate
                    && let Some(sent_ms) = oldest.message.timestamp_ms()
                {
                    self.metrics.ingest.lag.observe(lag_seconds(sent_ms));
                }
                self.start
                    .answer(&oldest.message, Ok(Some(&published)))
                    .await;
                self.settled(oldest.message.tag);
            }
            Outcome::Applied => {
                self.start.answer(&oldest.message, Ok(None)).await;
                self.settled(oldest.message.tag);
            }
            Outcome::Probed => self.settled(oldest.message.tag),
            Outcome::Conflicting(error) => {
                // Its dead-lettering takes its place at the head: it settles when confirmed.
                let outcome = self.start.dead_letter(&oldest.message, error).await?;
                self.inflight.push_front(InFlight {
                    message: oldest.message,
                    outcome,
                    resubmitted: oldest.resubmitted,
                });
            }
            Outcome::DeadLettered(error) => {
                events::DeadLettered {
                    routing_key: &oldest.message.routing_key,
                    error: &error,
                    redelivered: oldest.message.redelivered,
                }
                .emit(self.metrics);
                self.start.answer(&oldest.message, Err(&error)).await;
                self.settled(oldest.message.tag);
            }
            Outcome::Refused(error) => {
                self.holding = true;
                if self.recovered && !oldest.resubmitted {
                    // Answered before the writer took a retry: stale, so again at once.
                    self.resubmit(oldest.message).await?;
                } else {
                    self.recovered = false;
                    let first = self.retry_pauses.is_fresh();
                    let pause = self.retry_pauses.next_pause();
                    events::DownstreamRefused {
                        error: &error,
                        retry_in: pause,
                        first,
                    }
                    .emit(self.metrics);
                    self.retry(oldest.message, pause, shutdown).await?;
                }
            }
            Outcome::DeadLetterRefused => {
                let pause = self.retry_pauses.next_pause();
                events::DeadLetterRefused {
                    routing_key: &oldest.message.routing_key,
                    retry_in: pause,
                }
                .emit(self.metrics);
                self.retry(oldest.message, pause, shutdown).await?;
            }
            Outcome::DeadLetterUnroutable => {
                // Ack what settled before it; it and everything after go back unacked.
                self.flush_acks().await?;
                return Err(IngestError::DeadLetterUnroutable(
                    self.start.config.topology.dead_letter_exchange.clone(),
                ));
            }
            Outcome::Lost(error) => return Err(IngestError::Lost(error)),
            Outcome::Reject(error) => {
                // The `multiple` ack of what settled before must go first: once this tag is
                // rejected, an ack naming it would be refused and close the channel.
                self.flush_acks().await?;
                self.channel
                    .basic_reject(oldest.message.tag, BasicRejectOptions { requeue: false })
                    .await
                    .map_err(IngestError::Lost)?;
                events::Rejected {
                    routing_key: &oldest.message.routing_key,
                    error: &error,
                }
                .emit(self.metrics);
                self.retry_pauses.reset();
            }
        }
        if self.unacked as usize >= self.ack_batch {
            self.flush_acks().await?;
        }
        Ok(())
    }

    /// Puts `message` back at the head after `pause`, unless shutdown comes first.
    async fn retry(
        &mut self,
        message: Message,
        pause: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), IngestError> {
        // Ack what was settled before it, so the pause does not hold those back.
        self.flush_acks().await?;
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => {
                self.blocked = true;
                return Ok(());
            }
        }
        self.resubmit(message).await
    }

    /// Submits `message` again, at the head of what is in flight.
    async fn resubmit(&mut self, message: Message) -> Result<(), IngestError> {
        let outcome = self.start.begin(&message).await?;
        self.inflight.push_front(InFlight {
            message,
            outcome,
            resubmitted: true,
        });
        Ok(())
    }

    fn settled(&mut self, tag: u64) {
        self.last_settled = Some(tag);
        self.ack_due
            .get_or_insert_with(|| tokio::time::Instant::now() + ACK_DELAY);
        self.unacked += 1;
        self.retry_pauses.reset();
    }

    /// Acks every settled delivery with one `basic.ack` (`multiple`).
    async fn flush_acks(&mut self) -> Result<(), IngestError> {
        self.ack_due = None;
        let Some(tag) = self.last_settled.take() else {
            return Ok(());
        };
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .map_err(IngestError::Lost)?;
        self.metrics.ingest.acked.inc_by(self.unacked);
        self.unacked = 0;
        Ok(())
    }
}

/// Completes at `due`; never without one.
async fn ack_timer(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The outcome of the oldest delivery in flight; pending while there is none.
async fn oldest_outcome(inflight: &mut VecDeque<InFlight>) -> Outcome {
    match inflight.front_mut() {
        Some(oldest) => oldest.outcome.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Seconds from the producer's timestamp to now; zero if the producer's clock is ahead.
fn lag_seconds(sent_ms: i64) -> f64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    (now_ms - sent_ms).max(0) as f64 / 1000.0
}
