//! The dead-letter queue as an operator uses it: list what is in it without removing anything,
//! replay chosen messages, each once, and discard chosen ones that can never be fixed.
//!
//! Owns: walking the queue, moving chosen messages back with publisher confirms, and discarding
//! them all or none. Does not own: making the copies ([`super::dead_letter`]), reading a dead
//! letter's story back out of its headers and choosing by reason, routing key and refusing node
//! (`letter`, whose types this module re-exports), flags and printing (`client::dead_letters`).
//!
//! All three walk the queue with `basic.get` and hold what they read unacknowledged. The broker
//! keeps a message until it is acknowledged, so nothing is removed but a replayed message, and
//! that only once the broker confirmed its replay, or a discarded one, and those only if the
//! walk chose exactly as many as the operator said it would. At the end the held messages go
//! back to their places (`basic.nack` with requeue; a connection that dies does the same), marked
//! `redelivered`. A walk reads at most as many messages as the queue held when it began: a
//! replayed message that is refused again is queued behind them, so one run never replays it
//! twice, and a steady trickle of new dead letters cannot keep a walk going forever.
//!
//! A replay is at least once: if the tool dies between the broker's confirm of the replay and
//! the acknowledgement of the dead letter, the dead letter stays and a later replay sends it
//! again. The ingest drops a re-sent event id within `--dedupe-window`, so that costs nothing.

use std::collections::BTreeMap;

use lapin::{
    BasicProperties, Confirmation, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use tracing::info;

use super::letter::read_letter;
pub use super::letter::{DeadLetter, RefusedBy, Selection};

use super::dead_letter::{
    DEAD_LETTERED_AT_HEADER, ERROR_DETAIL_HEADER, ERROR_FIELD_HEADER, ERROR_HEADER,
    HEADERS_DROPPED_HEADER, NODE_HEADER, ORIGINAL_EXCHANGE_HEADER, REPLAYS_HEADER,
    ROUTING_KEY_HEADER,
};

/// A long walk logs how far it got every this many messages.
const PROGRESS_EVERY: u64 = 10_000;

/// What went wrong talking to the broker about the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterQueueError {
    /// The broker could not be reached or refused the login.
    #[error("cannot connect to the broker")]
    Connect(#[source] lapin::Error),
    /// The queue (to read, or to replay into) does not exist.
    #[error("queue {0:?} does not exist")]
    NoQueue(String),
    /// The exchange to replay into does not exist.
    #[error("exchange {0:?} does not exist")]
    NoExchange(String),
    /// The connection or a channel broke, or the broker refused an operation.
    #[error("broker")]
    Broker(#[from] lapin::Error),
}

/// Where `replay` sends what it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// Each back to the exchange it was first published to, under its routing key; to
    /// `fallback` when the dead letter does not say.
    OriginalExchange {
        /// The producers' exchange.
        fallback: String,
    },
    /// All to this exchange, each under its routing key.
    Exchange(String),
    /// All straight into this queue (through the default exchange). The event type travels in
    /// `x-notify-routing-key`, which the ingest reads.
    Queue(String),
}

/// What became of one chosen dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Confirmed by the broker and removed from the dead-letter queue; `to` names where.
    Sent {
        /// `exchange X` or `queue Y`.
        to: String,
    },
    /// Kept: no queue is bound to take it there (the broker returned it).
    Unroutable {
        /// `exchange X` or `queue Y`.
        to: String,
    },
    /// Kept: the exchange it came from no longer exists.
    NoExchange {
        /// The exchange's name.
        exchange: String,
    },
    /// Kept: the broker refused it (a negative confirm).
    Refused {
        /// Where it was sent.
        to: String,
    },
}

/// How a walk went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walk {
    /// Messages in the queue when the walk began.
    pub in_queue: u64,
    /// Messages read.
    pub read: u64,
    /// Messages chosen (and listed, tried or to be discarded).
    pub chosen: u64,
    /// Chosen messages removed: replayed (and confirmed), or discarded.
    pub removed: u64,
    /// Whether it stopped at `--max` with more left to read.
    pub stopped_at_max: bool,
}

/// One open dead-letter queue.
pub struct DeadLetterQueue {
    connection: Connection,
    queue: String,
}

impl DeadLetterQueue {
    /// Connects to `url` and checks that `queue` exists.
    pub async fn open(url: &str, queue: &str) -> Result<Self, DeadLetterQueueError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("notify-backbone dead-letters"));
        let connection = Connection::connect(url, properties)
            .await
            .map_err(DeadLetterQueueError::Connect)?;
        let this = Self {
            connection,
            queue: queue.to_owned(),
        };
        this.message_count(queue).await?;
        Ok(this)
    }

    /// Calls `each` with up to `max` chosen dead letters, in queue order, removing nothing.
    pub async fn list(
        &self,
        selection: &Selection,
        max: u64,
        mut each: impl FnMut(&DeadLetter),
    ) -> Result<Walk, DeadLetterQueueError> {
        self.walk(selection, max, Settle::AsChosen, async |letter, _| {
            each(letter);
            Ok(false)
        })
        .await
    }

    /// Discards every chosen dead letter, but only if there are exactly `expect` of them: the
    /// operator's count of what the selection matches, so a selection wider than they thought
    /// (a typo in a pattern, new dead letters since they looked) removes nothing. `each` is
    /// called with every chosen one as it is read, before that is known. The walk's `removed`
    /// says which it was: `chosen` of them, or 0.
    ///
    /// The chosen ones are held unacknowledged until the end of the walk, like every message it
    /// reads; only their delivery tags are kept here (8 bytes each, at most as many as the queue
    /// held when the walk began).
    pub async fn discard(
        &self,
        selection: &Selection,
        expect: u64,
        mut each: impl FnMut(&DeadLetter),
    ) -> Result<Walk, DeadLetterQueueError> {
        self.walk(
            selection,
            u64::MAX,
            Settle::AllOrNone { expect },
            async |letter, _| {
                each(letter);
                Ok(true)
            },
        )
        .await
    }

    /// Replays up to `max` chosen dead letters to `target`, each once, calling `each` with what
    /// became of it. Only confirmed replays are removed from the queue.
    pub async fn replay(
        &self,
        selection: &Selection,
        target: &ReplayTarget,
        max: u64,
        mut each: impl FnMut(&DeadLetter, &Replayed),
    ) -> Result<Walk, DeadLetterQueueError> {
        if let ReplayTarget::Queue(queue) = target {
            self.message_count(queue).await?;
        }
        if let ReplayTarget::Exchange(exchange) = target
            && !self.exchange_exists(exchange).await?
        {
            return Err(DeadLetterQueueError::NoExchange(exchange.clone()));
        }
        let publishing = self.connection.create_channel().await?;
        publishing
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // Exchanges named by the dead letters themselves, checked once each.
        let mut exchanges: BTreeMap<String, bool> = BTreeMap::new();
        self.walk(
            selection,
            max,
            Settle::AsChosen,
            async |letter, properties| {
                let (exchange, routing_key) = match target {
                    ReplayTarget::OriginalExchange { fallback } => {
                        let exchange = letter.exchange.clone().unwrap_or_else(|| fallback.clone());
                        let exists = match exchanges.get(&exchange) {
                            Some(&known) => known,
                            None => {
                                let known = self.exchange_exists(&exchange).await?;
                                exchanges.insert(exchange.clone(), known);
                                known
                            }
                        };
                        if !exists {
                            each(letter, &Replayed::NoExchange { exchange });
                            return Ok(false);
                        }
                        (exchange, letter.routing_key.clone())
                    }
                    ReplayTarget::Exchange(exchange) => {
                        (exchange.clone(), letter.routing_key.clone())
                    }
                    ReplayTarget::Queue(queue) => (String::new(), queue.clone()),
                };
                let (to, home) = if exchange.is_empty() {
                    // Into a queue, through the default exchange, which names none: the message
                    // still belongs to the exchange it came from.
                    (format!("queue {routing_key}"), letter.exchange.as_deref())
                } else {
                    (format!("exchange {exchange}"), Some(exchange.as_str()))
                };
                let confirmation = publishing
                    .basic_publish(
                        exchange.as_str().into(),
                        routing_key.as_str().into(),
                        // Mandatory: a replay that no queue takes comes back, and the dead letter is
                        // kept rather than lost.
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &letter.body,
                        replay_properties(properties, letter, home),
                    )
                    .await?
                    .await?;
                let outcome = match confirmation {
                    Confirmation::Ack(None) | Confirmation::NotRequested => Replayed::Sent { to },
                    Confirmation::Ack(Some(_)) => Replayed::Unroutable { to },
                    Confirmation::Nack(_) => Replayed::Refused { to },
                };
                let sent = matches!(outcome, Replayed::Sent { .. });
                each(letter, &outcome);
                Ok(sent)
            },
        )
        .await
    }

    /// Reads the queue from its head: `act` is given each chosen message (until `max` were
    /// chosen) and says whether to remove it; `settle` says when that happens. Every other
    /// message read is put back in its place when the walk ends.
    async fn walk(
        &self,
        selection: &Selection,
        max: u64,
        settle: Settle,
        mut act: impl AsyncFnMut(&DeadLetter, &BasicProperties) -> Result<bool, DeadLetterQueueError>,
    ) -> Result<Walk, DeadLetterQueueError> {
        let channel = self.connection.create_channel().await?;
        let mut walk = Walk {
            in_queue: self.message_count(&self.queue).await?,
            ..Walk::default()
        };
        // The newest delivery tag kept: the requeue at the end covers it and every older one
        // still held (it must name a tag still held).
        let mut last_held = None;
        // Removals waiting for the walk's end (`Settle::AllOrNone`), oldest first.
        let mut pending: Vec<u64> = Vec::new();
        let result = async {
            while walk.read < walk.in_queue {
                if walk.chosen >= max {
                    walk.stopped_at_max = true;
                    break;
                }
                let got = channel
                    .basic_get(
                        self.queue.as_str().into(),
                        BasicGetOptions { no_ack: false },
                    )
                    .await?;
                let Some(got) = got else { break };
                let delivery = got.delivery;
                walk.read += 1;
                if walk.read.is_multiple_of(PROGRESS_EVERY) {
                    info!(
                        read = walk.read,
                        of = walk.in_queue,
                        chosen = walk.chosen,
                        "dead letters read"
                    );
                }
                let letter = read_letter(
                    walk.read,
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                    delivery.data,
                );
                let remove = if selection.selects(&letter) {
                    walk.chosen += 1;
                    act(&letter, &delivery.properties).await?
                } else {
                    false
                };
                match (remove, settle) {
                    (true, Settle::AsChosen) => {
                        walk.removed += 1;
                        channel
                            .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false })
                            .await?;
                    }
                    (true, Settle::AllOrNone { .. }) => pending.push(delivery.delivery_tag),
                    (false, _) => last_held = Some(delivery.delivery_tag),
                }
            }
            if let Settle::AllOrNone { expect } = settle
                && walk.chosen == expect
            {
                for &tag in &pending {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await?;
                    walk.removed += 1;
                }
                pending.clear();
            }
            Ok::<_, DeadLetterQueueError>(())
        }
        .await;
        // Removals that did not happen are held too.
        last_held = last_held.max(pending.last().copied());
        // Everything read and not removed goes back (a broken channel does that by itself).
        if let Some(tag) = last_held
            && channel.status().connected()
        {
            let requeued = channel
                .basic_nack(
                    tag,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
            // A walk that failed reports why; the requeue's own failure would hide it (and the
            // broker requeues them anyway when the channel goes).
            if result.is_ok() {
                requeued?;
            }
        }
        if channel.status().connected() {
            let _ = channel.close(200, "done".into()).await;
        }
        result.map(|()| walk)
    }

    /// The messages ready in `queue`; [`DeadLetterQueueError::NoQueue`] if there is none.
    async fn message_count(&self, queue: &str) -> Result<u64, DeadLetterQueueError> {
        // A passive declare of a missing queue closes its channel: use one of its own.
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(queue) => {
                let _ = channel.close(200, "".into()).await;
                Ok(u64::from(queue.message_count()))
            }
            Err(error) if is_not_found(&error) => {
                Err(DeadLetterQueueError::NoQueue(queue.to_owned()))
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn exchange_exists(&self, exchange: &str) -> Result<bool, DeadLetterQueueError> {
        if exchange.is_empty() {
            return Ok(true); // the default exchange always exists and cannot be declared
        }
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                let _ = channel.close(200, "".into()).await;
                Ok(true)
            }
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    error.to_string().contains("NOT_FOUND")
}

/// When a walk removes what `act` chose to remove.
#[derive(Debug, Clone, Copy)]
enum Settle {
    /// At once, each on its own (a replay the broker confirmed).
    AsChosen,
    /// At the end of the walk: all of them if exactly `expect` were chosen, else none.
    AllOrNone {
        /// How many the operator said the selection matches.
        expect: u64,
    },
}

/// The broker's own dead-lettering headers: dropped from a replay, which starts afresh.
const BROKER_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// A dead letter's properties as replayed: the reason headers of its last refusal removed (a
/// refusal next time writes its own), the event type in `x-notify-routing-key` and the exchange
/// it belongs to (`home`: where it is sent, or for a replay into a queue, the one it came from)
/// in `x-notify-original-exchange` (a replay into a queue loses both; a node that refuses it
/// again keeps them), and the replay counted.
fn replay_properties(
    original: &BasicProperties,
    letter: &DeadLetter,
    home: Option<&str>,
) -> BasicProperties {
    const DROPPED: [&str; 7] = [
        ERROR_HEADER,
        ERROR_FIELD_HEADER,
        ERROR_DETAIL_HEADER,
        ORIGINAL_EXCHANGE_HEADER,
        NODE_HEADER,
        DEAD_LETTERED_AT_HEADER,
        HEADERS_DROPPED_HEADER,
    ];
    let mut kept: BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    kept.retain(|key, _| {
        !DROPPED.contains(&key.as_str()) && !BROKER_HEADERS.contains(&key.as_str())
    });
    kept.insert(
        ROUTING_KEY_HEADER.into(),
        AMQPValue::LongString(LongString::from(letter.routing_key.as_str())),
    );
    if let Some(home) = home.filter(|home| !home.is_empty()) {
        kept.insert(
            ORIGINAL_EXCHANGE_HEADER.into(),
            AMQPValue::LongString(LongString::from(home)),
        );
    }
    kept.insert(
        REPLAYS_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(letter.replays + 1).unwrap_or(i64::MAX)),
    );
    original.clone().with_headers(FieldTable::from(kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::dead_letter::header_text;

    #[test]
    fn a_replay_drops_the_last_refusal_keeps_the_rest_and_counts() {
        let mut headers = FieldTable::default();
        for (key, value) in [
            (ERROR_HEADER, "missing_field"),
            (ERROR_FIELD_HEADER, "payload.userId"),
            (NODE_HEADER, "a"),
            (ORIGINAL_EXCHANGE_HEADER, "cloudphone.events"),
            ("x-producer", "svc"),
        ] {
            headers.insert(key.into(), AMQPValue::LongString(value.into()));
        }
        headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongLongInt(2));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_timestamp(1_732_096_800_000);
        let letter = read_letter(1, "device.error", &properties, Vec::new());
        assert_eq!(letter.replays, 2);
        assert_eq!(letter.published_at_ms, Some(1_732_096_800_000));
        let replayed = replay_properties(&properties, &letter, None);
        let headers = replayed.headers().clone().unwrap_or_default();
        assert_eq!(header_text(&headers, ERROR_HEADER), None);
        assert_eq!(header_text(&headers, ERROR_FIELD_HEADER), None);
        assert_eq!(header_text(&headers, NODE_HEADER), None);
        assert_eq!(header_text(&headers, ORIGINAL_EXCHANGE_HEADER), None);
        assert_eq!(header_text(&headers, "x-producer"), Some(&b"svc"[..]));
        assert_eq!(
            header_text(&headers, ROUTING_KEY_HEADER),
            Some(&b"device.error"[..])
        );
        assert_eq!(
            headers.inner().get(REPLAYS_HEADER),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert_eq!(replayed.timestamp(), &Some(1_732_096_800_000));
        // The exchange it belongs to travels with it (a replay into a queue names none).
        let replayed = replay_properties(&properties, &letter, Some("cloudphone.events"));
        let headers = replayed.headers().clone().unwrap_or_default();
        assert_eq!(
            header_text(&headers, ORIGINAL_EXCHANGE_HEADER),
            Some(&b"cloudphone.events"[..])
        );
    }
}
