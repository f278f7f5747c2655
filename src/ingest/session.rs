//! One broker session: connect, declare, consume, settle deliveries in order, ack, and on
//! shutdown drain what is in flight.
//!
//! Every delivery becomes an in-flight entry whose outcome is either the downstream's receipt
//! (the event is stored and routed), the broker's confirm of its dead-letter copy, or, for a
//! probe, the downstream having acted on it. Entries
//! settle strictly in arrival order, so acking the newest settled tag with `multiple` covers
//! exactly the settled ones. The number in flight is bounded by the prefetch: the broker sends
//! no more than that many unacknowledged deliveries.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
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

use crate::{
    backoff::Backoff,
    otel,
    schema::{self, DecodeError, Properties},
    sequencer::{Published, SequencerError},
    telemetry::Metrics,
};

use super::{
    Downstream, IngestConfig, IngestError, IngestState, SessionFailure, dead_letter, events,
    topology::QueueKind,
};

/// Closing a connection the broker already dropped can hang until a heartbeat timeout; past
/// this we stop waiting.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause before retrying an event the downstream did not accept; doubles up to the max
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

/// One delivery, kept until it is acked so it can be re-decoded and resubmitted if the
/// downstream fails (the body is in memory anyway; the prefetch bounds how many there are).
pub(super) struct Message {
    tag: u64,
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    redelivered: bool,
}

impl From<Delivery> for Message {
    fn from(delivery: Delivery) -> Self {
        // A dead letter replayed into our queue carries its event type in a header (the
        // default exchange it came through replaced the routing key with the queue's name).
        let routing_key = dead_letter::replayed_routing_key(&delivery.properties)
            .unwrap_or_else(|| delivery.routing_key.to_string());
        Self {
            tag: delivery.delivery_tag,
            exchange: delivery.exchange.to_string(),
            routing_key,
            body: delivery.data,
            properties: delivery.properties,
            redelivered: delivery.redelivered,
        }
    }
}

impl Message {
    #[cfg(test)]
    pub(super) fn for_test(exchange: &str, routing_key: &str, properties: BasicProperties) -> Self {
        Self {
            tag: 1,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: Vec::new(),
            properties,
            redelivered: false,
        }
    }

    /// A probe ([`super::PROBE_TYPE`]), not an event.
    fn is_probe(&self) -> bool {
        self.properties
            .kind()
            .as_ref()
            .is_some_and(|kind| kind.as_str() == super::PROBE_TYPE)
    }

    /// An event forwarded by another node's `Publish` (cluster mode), not a producer's JSON.
    fn is_forwarded(&self) -> bool {
        let text = |value: &Option<lapin::types::ShortString>| {
            value.as_ref().map(|v| v.as_str().to_owned())
        };
        text(self.properties.content_type()).as_deref() == Some(super::FORWARDED_CONTENT_TYPE)
            && text(self.properties.kind()).as_deref() == Some(super::FORWARDED_TYPE)
    }

    /// The AMQP `timestamp` property in milliseconds (see [`amqp_timestamp_ms`]).
    fn timestamp_ms(&self) -> Option<i64> {
        self.properties.timestamp().and_then(amqp_timestamp_ms)
    }
}

/// How one delivery ended.
enum Outcome {
    /// Stored (or recognised as a duplicate) and routed.
    Accepted(Published),
    /// A probe, which the downstream has acted on.
    Probed,
    /// The broker confirmed the dead-letter copy.
    DeadLettered(DecodeError),
    /// Our own failure: the downstream did not take a good event. Retried, never rejected.
    Refused(SequencerError),
    /// The journal found the event's id stored for a different event: it is dead-lettered
    /// next, as bad input is.
    Conflicting(DecodeError),
    /// The broker refused the dead-letter copy (nack). Retried.
    DeadLetterRefused,
    /// The dead-letter copy reached no queue (the dead-letter queue was deleted or unbound):
    /// the session ends, and the next one declares the topology again before retrying.
    DeadLetterUnroutable,
    /// The connection broke while waiting for a confirm.
    Lost(lapin::Error),
    /// No dead-letter copy can be sent (it would not fit a frame, or sending one ended a session
    /// before): reject it without requeue, so the queue's own dead-lettering takes it.
    Reject(DecodeError),
}

type PendingOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

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
pub(super) async fn run<D: Downstream>(
    config: &IngestConfig,
    downstream: &D,
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
        downstream,
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

async fn consume<D: Downstream>(
    (connection, publishing): (&Connection, &Connection),
    config: &IngestConfig,
    downstream: &D,
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
    downstream.session_started(&channel);
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
            downstream,
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

/// What starting a delivery needs; apart from the session's mutable state, so the in-flight
/// futures (which are `Send` but not `Sync`) are never borrowed across an await.
struct Start<'a, D> {
    config: &'a IngestConfig,
    downstream: &'a D,
    dead_letters: Channel,
    /// The dead-letter connection's negotiated frame size: a copy's properties must fit one
    /// frame.
    frame_max: u32,
    /// Messages that were being dead-lettered when a session died.
    suspects: &'a Suspects,
}

struct Session<'a, D> {
    metrics: &'a Metrics,
    channel: Channel,
    start: Start<'a, D>,
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
    /// The pauses before retrying an event the downstream refused, reset by every settlement.
    retry_pauses: Backoff,
    /// Shutdown came while the oldest delivery was waiting for a retry: nothing after it may be
    /// acked (a `multiple` ack would cover it too).
    blocked: bool,
    /// A delivery was refused downstream: no new delivery starts until every one in flight is
    /// settled. The ones behind the refused one were submitted already and are refused too (or
    /// accepted, if the cause went away); each is retried in order, and nothing that arrives
    /// later may be journaled ahead of them.
    holding: bool,
    /// While holding, a resubmitted delivery was accepted: the refusals of first submissions
    /// still in flight were answered before that and are stale, so they are retried at once.
    recovered: bool,
}

impl<D: Downstream> Session<'_, D> {
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
                        let message = Message::from(delivery);
                        // Starting may wait (a full downstream is the backpressure); shutdown
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
                Outcome::Accepted(_) | Outcome::Probed | Outcome::DeadLettered(_)
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
                self.start.answer(&oldest.message, Ok(&published)).await;
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
                    // Answered before the downstream took a retry: stale, so again at once.
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

impl<D: Downstream> Start<'_, D> {
    /// Decodes a delivery and starts its way: into the downstream, or to the dead letters.
    async fn begin(&self, message: &Message) -> Result<PendingOutcome, IngestError> {
        if message.is_probe() {
            let acted = self.downstream.session_active();
            return Ok(Box::pin(async move {
                acted.await;
                Outcome::Probed
            }));
        }
        let props = Properties {
            timestamp_ms: message.timestamp_ms(),
            received_at: SystemTime::now(),
        };
        let decoded = if message.is_forwarded() {
            schema::decode_forwarded(&message.body, &props, self.config.decode)
        } else {
            schema::decode(
                &message.routing_key,
                &message.body,
                &props,
                self.config.decode,
            )
        };
        let tracing = &self.config.tracing;
        match decoded {
            Ok(mut decoded) => {
                let trace = if tracing.is_on() {
                    tracing.ingested(&trace_source(message), props.received_at, &mut decoded)
                } else {
                    None
                };
                Ok(match self.downstream.submit_traced(decoded, trace).await {
                    Ok(receipt) => Box::pin(async move {
                        match receipt.await {
                            Ok(published) => Outcome::Accepted(published),
                            Err(SequencerError::ConflictingId { id }) => {
                                Outcome::Conflicting(DecodeError::ConflictingId { id })
                            }
                            Err(error) => Outcome::Refused(error),
                        }
                    }),
                    Err(error) => Box::pin(std::future::ready(Outcome::Refused(error))),
                })
            }
            Err(error) => {
                if tracing.is_on() {
                    tracing.refused(
                        &trace_source(message),
                        props.received_at,
                        &message.body,
                        error.reason(),
                        &error.to_string(),
                    );
                }
                self.dead_letter(message, error).await
            }
        }
    }

    /// Answers a forwarded `Publish` (a message with `reply_to`): where its event landed, or why
    /// it was refused. Best effort: the caller is another node's `Publish`, which times out and
    /// is retried by its client if the answer is lost.
    async fn answer(&self, message: &Message, outcome: Result<&Published, &DecodeError>) {
        let Some(reply_to) = message.properties.reply_to() else {
            return;
        };
        let (body, headers) = match outcome {
            Ok(published) => (
                prost::Message::encode_to_vec(&crate::pb::PublishResponse {
                    id: published.id.clone(),
                    cursor: published.cursor.to_string(),
                    duplicate: published.duplicate,
                }),
                FieldTable::default(),
            ),
            Err(error) => (Vec::new(), dead_letter::reason_headers_of(error)),
        };
        let mut properties = BasicProperties::default().with_headers(headers);
        if let Some(id) = message.properties.correlation_id() {
            properties = properties.with_correlation_id(id.clone());
        }
        let sent = self
            .dead_letters
            .basic_publish(
                "".into(),
                reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await;
        if let Err(error) = sent {
            debug!(%error, "answering a forwarded Publish");
        }
    }

    /// Starts the dead-lettering of a message that cannot be decoded: a copy with the reason,
    /// published with a confirm, or a reject when no copy can be sent.
    async fn dead_letter(
        &self,
        message: &Message,
        error: DecodeError,
    ) -> Result<PendingOutcome, IngestError> {
        let fingerprint = Suspects::fingerprint(message);
        let properties = if self.suspects.contains(fingerprint) {
            // The last time this message was being dead-lettered, the session died. Whatever
            // the cause, a second attempt could do the same, again and again: no copy this time.
            None
        } else {
            dead_letter::copy_properties(message, &self.config.node_id, &error, self.frame_max)
        };
        let Some(properties) = properties else {
            return Ok(Box::pin(std::future::ready(Outcome::Reject(error))));
        };
        let exchange = &self.config.topology.dead_letter_exchange;
        let confirm =
            match dead_letter::publish(&self.dead_letters, exchange, message, properties).await {
                Ok(confirm) => confirm,
                Err(lost) => {
                    self.suspects.remember(fingerprint);
                    return Err(IngestError::Lost(lost));
                }
            };
        let suspects = self.suspects.handle();
        Ok(Box::pin(async move {
            match confirm.await {
                // Published `mandatory`: a copy no queue took comes back with the ack.
                Ok(Confirmation::Ack(None)) => Outcome::DeadLettered(error),
                Ok(Confirmation::Ack(Some(_))) => Outcome::DeadLetterUnroutable,
                Ok(_) => Outcome::DeadLetterRefused,
                Err(lost) => {
                    suspects.remember(fingerprint);
                    Outcome::Lost(lost)
                }
            }
        }))
    }
}

/// What the ingest span says of a delivery, with the W3C context of its AMQP headers (the
/// `traceparent` and `tracestate` headers OpenTelemetry's messaging instrumentations write),
/// which win over the body's `_trace`.
fn trace_source(message: &Message) -> otel::Source<'_> {
    let header = |key| {
        message
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| dead_letter::header_text(headers, key))
            .and_then(|value| std::str::from_utf8(value).ok())
    };
    otel::Source::Amqp {
        exchange: &message.exchange,
        routing_key: &message.routing_key,
        body_len: message.body.len(),
        redelivered: message.redelivered,
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    }
}

/// Messages that were being dead-lettered when their session died (the connection broke while
/// the copy was sent or confirmed), remembered across sessions by a fingerprint of their routing
/// key, body and message id. Not their headers: the broker may change those on redelivery (a
/// quorum queue adds `x-delivery-count`), and a fingerprint that changed would let the loop back
/// in; a false match only costs a poison message its reason headers. Such a message, redelivered, is rejected without requeue instead of
/// copied again, so no single message can cause more than one reconnect. Bounded: only the
/// latest [`Suspects::CAPACITY`] are kept (a session dies with at most a prefetch's worth in
/// flight, and each one is seen again right after the reconnect).
#[derive(Debug, Default, Clone)]
pub(super) struct Suspects(std::sync::Arc<std::sync::Mutex<VecDeque<u64>>>);

impl Suspects {
    const CAPACITY: usize = 1024;

    fn fingerprint(message: &Message) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        message.routing_key.hash(&mut hasher);
        message.body.hash(&mut hasher);
        if let Some(id) = message.properties.message_id() {
            id.as_str().hash(&mut hasher);
        }
        hasher.finish()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(&self, fingerprint: u64) {
        let mut suspects = self.lock();
        if suspects.len() >= Self::CAPACITY {
            suspects.pop_front();
        }
        suspects.push_back(fingerprint);
    }

    fn contains(&self, fingerprint: u64) -> bool {
        self.lock().contains(&fingerprint)
    }

    /// Another handle on the same set, for a confirm that resolves later.
    fn handle(&self) -> Self {
        self.clone()
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

/// Below this, an AMQP `timestamp` is taken for seconds: as seconds it is the year 5138, as
/// milliseconds March 1973, so no real value of either kind falls on the wrong side.
const SECONDS_BELOW: u64 = 100_000_000_000;

/// An AMQP `timestamp` as milliseconds since the epoch. The platform's producers send
/// milliseconds (`Date.now()`); the AMQP spec, and pika, amqplib and others by default, mean
/// seconds. The magnitude tells them apart (see [`SECONDS_BELOW`]); `None` beyond `i64`.
pub(super) fn amqp_timestamp_ms(raw: u64) -> Option<i64> {
    let ms = if raw < SECONDS_BELOW {
        raw.checked_mul(1000)?
    } else {
        raw
    };
    i64::try_from(ms).ok()
}

/// Seconds from the producer's timestamp to now; zero if the producer's clock is ahead.
fn lag_seconds(sent_ms: i64) -> f64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    (now_ms - sent_ms).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn amqp_timestamps_in_seconds_and_in_milliseconds_are_both_read() {
        use super::amqp_timestamp_ms;
        // The platform's producers: milliseconds.
        assert_eq!(
            amqp_timestamp_ms(1_732_096_800_123),
            Some(1_732_096_800_123)
        );
        // The AMQP spec (pika, amqplib, ...): seconds.
        assert_eq!(amqp_timestamp_ms(1_732_096_800), Some(1_732_096_800_000));
        // Either side of the line: the year 5138 in seconds, March 1973 in milliseconds.
        assert_eq!(amqp_timestamp_ms(99_999_999_999), Some(99_999_999_999_000));
        assert_eq!(amqp_timestamp_ms(100_000_000_000), Some(100_000_000_000));
        assert_eq!(amqp_timestamp_ms(0), Some(0));
        assert_eq!(amqp_timestamp_ms(u64::MAX), None);
    }

    use super::*;

    fn message(routing_key: &str, body: &[u8]) -> Message {
        let mut message = Message::for_test("x", routing_key, BasicProperties::default());
        message.body = body.to_vec();
        message
    }

    #[test]
    fn suspects_are_known_by_routing_key_and_body_and_the_oldest_are_forgotten() {
        let suspects = Suspects::default();
        let poison = Suspects::fingerprint(&message("device.error", b"x"));
        assert!(!suspects.contains(poison));
        suspects.handle().remember(poison);
        assert!(suspects.contains(poison), "shared between handles");
        assert!(!suspects.contains(Suspects::fingerprint(&message("device.error", b"y"))));
        assert!(!suspects.contains(Suspects::fingerprint(&message("device.other", b"x"))));
        for n in 0..Suspects::CAPACITY as u64 {
            suspects.remember(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        assert!(!suspects.contains(poison), "bounded: the oldest went first");
        assert_eq!(suspects.lock().len(), Suspects::CAPACITY);
    }
}
