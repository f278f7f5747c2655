//! How one delivery starts its way, apart from the session that settles it: decoded and handed
//! to the writer, copied to the dead letters, or (a probe) passed to the writer's session hook;
//! and the answer to a forwarded `Publish`.
//!
//! Owns: [`Start`] and the [`Outcome`] each start resolves to, and the [`Suspects`] (messages
//! whose dead-lettering ended a session, remembered across sessions). Does not own: the order
//! deliveries settle in, acks, retries or draining (`session`), or what a dead-letter copy
//! carries (`dead_letter`).

use std::{collections::VecDeque, future::Future, pin::Pin, time::SystemTime};

use lapin::{
    BasicProperties, Channel, Confirmation, options::BasicPublishOptions, types::FieldTable,
};
use tracing::debug;

use crate::{
    otel,
    schema::{self, DecodeError, Properties},
    write::{Published, WriteError, Writer},
};

use super::{IngestError, IngestSettings, dead_letter, message::Message};

/// How one delivery ended.
pub(super) enum Outcome {
    /// Stored (or recognised as a duplicate) and routed.
    Accepted(Published),
    /// A forwarded inbox command, in the journal.
    Applied,
    /// A probe, which the writer has acted on.
    Probed,
    /// The broker confirmed the dead-letter copy.
    DeadLettered(DecodeError),
    /// Our own failure: the writer did not take a good event. Retried, never rejected.
    Refused(WriteError),
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

pub(super) type PendingOutcome = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What starting a delivery needs; apart from the session's mutable state, so the in-flight
/// futures (which are `Send` but not `Sync`) are never borrowed across an await.
pub(super) struct Start<'a, W> {
    pub config: &'a IngestSettings,
    pub writer: &'a W,
    /// The channel dead-letter copies, probes and answers to forwarded calls go out on.
    pub dead_letters: Channel,
    /// The dead-letter connection's negotiated frame size: a copy's properties must fit one
    /// frame.
    pub frame_max: u32,
    /// Messages that were being dead-lettered when a session died.
    pub suspects: &'a Suspects,
}

impl<W: Writer> Start<'_, W> {
    /// Decodes a delivery and starts its way: into the writer, or to the dead letters.
    pub(super) async fn begin(&self, message: &Message) -> Result<PendingOutcome, IngestError> {
        if message.is_probe() {
            let acted = self.writer.session_active();
            return Ok(Box::pin(async move {
                acted.await;
                Outcome::Probed
            }));
        }
        if message.is_forwarded_inbox() {
            return self.begin_inbox(message).await;
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
                Ok(match self.writer.submit_traced(decoded, trace).await {
                    Ok(receipt) => Box::pin(async move {
                        match receipt.await {
                            Ok(published) => Outcome::Accepted(published),
                            Err(WriteError::ConflictingId { id }) => {
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

    /// A forwarded inbox command: into the writer, named by the message's id. One that does
    /// not decode (a node of a later version) is refused like a bad event: dead-lettered, and
    /// the calling node told.
    async fn begin_inbox(&self, message: &Message) -> Result<PendingOutcome, IngestError> {
        let id = message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let command = match crate::inbox::Command::decode(&message.body) {
            Ok(command) => command,
            Err(error) => {
                let error = DecodeError::NotEvent(format!("an inbox command: {error}"));
                return self.dead_letter(message, error).await;
            }
        };
        let applying = self.writer.append_inbox(id, command);
        // The writer's future borrows the writer; the outcome is awaited now (commands are rare
        // and rate-limited) and handed on resolved.
        let outcome = match applying.await {
            Ok(_) => Outcome::Applied,
            Err(error) => Outcome::Refused(error),
        };
        Ok(Box::pin(std::future::ready(outcome)))
    }

    /// Answers a forwarded `Publish` or inbox command (a message with `reply_to`): where its
    /// event landed (`None` for a command), or why it was refused. Best effort: the caller is another node's `Publish`, which times out and
    /// is retried by its client if the answer is lost.
    pub(super) async fn answer(
        &self,
        message: &Message,
        outcome: Result<Option<&Published>, &DecodeError>,
    ) {
        let Some(reply_to) = message.properties.reply_to() else {
            return;
        };
        let (body, headers) = match outcome {
            Ok(Some(published)) => (
                prost::Message::encode_to_vec(&crate::pb::PublishResponse {
                    id: published.id.clone(),
                    cursor: published.cursor.to_string(),
                    duplicate: published.duplicate,
                }),
                FieldTable::default(),
            ),
            // A forwarded inbox command: in the journal stream, nothing more to say.
            Ok(None) => (Vec::new(), FieldTable::default()),
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
    pub(super) async fn dead_letter(
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

#[cfg(test)]
mod tests {
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
